package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/internal/zeros"
)

// memChunk is a chunk object held in memory, for reading edited copies of
// a chunk's bytes without the backend.
type memChunk struct{ b []byte }

func (m *memChunk) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	if off < int64(len(m.b)) {
		copy(p, m.b[off:])
	}
	return len(p), nil
}

func (m *memChunk) WriteAt(p []byte, off int64) (int, error) { return 0, errors.New("read only") }
func (m *memChunk) PunchHole(off, n int64) error             { return errors.New("read only") }
func (m *memChunk) Sync() error                              { return nil }
func (m *memChunk) Close() error                             { return nil }

// versionedChunk writes three synced versions of blocks 0-5 and one of
// blocks 6-9 of chunk 0 (16 blocks) of a format 3 disk, so that every
// block's older versions sit in its other slot and both copies of the
// selector state have been used. It returns the newest version of each
// block (nil: never written) and every older one.
func versionedChunk(t *testing.T, layers int) (td *testDisk, newest [][]byte, older [][]byte) {
	t.Helper()
	const cb = 16
	td = newTestDiskFormat(t, formatV3, 1<<20, layers, cb)
	newest = make([][]byte, cb)
	for v := 0; v < 3; v++ {
		for k := 0; k < 6; k++ {
			p := randBytes(BlockSize)
			_, err := td.WriteAt(p, int64(k)*BlockSize)
			require.NoError(t, err)
			if newest[k] != nil {
				older = append(older, newest[k])
			}
			newest[k] = p
		}
		require.NoError(t, td.Sync())
	}
	for k := 6; k < 10; k++ {
		newest[k] = randBytes(BlockSize)
		_, err := td.WriteAt(newest[k], int64(k)*BlockSize)
		require.NoError(t, err)
	}
	require.NoError(t, td.Sync())
	return td, newest, older
}

// readAllBlocks loads chunk 0 from raw as a reopened disk would and reads
// each of its blocks: for each, the plaintext, or nil when it failed
// authentication. A chunk refused as a whole gives all nil. When base is
// given (the state loaded from the unedited chunk) and the edit left the
// selectors and entries loaded exactly as in base, the blocks are not read
// again (ok false): they read from the same state and the same pages.
func readAllBlocks(t *testing.T, td *testDisk, raw []byte, sc *scratch, base *chunkState) (out [][]byte, st *chunkState, ok bool) {
	t.Helper()
	out = make([][]byte, td.lay.chunkBlocks)
	st, err := td.load(&chunk{idx: 0}, &memChunk{raw}, true)
	if err != nil {
		require.ErrorIs(t, err, ErrIntegrity)
		return out, nil, true
	}
	require.NotNil(t, st, "an edited chunk read as blank")
	if base != nil && bytes.Equal(st.sel, base.sel) && bytes.Equal(st.ent, base.ent) {
		return nil, st, false
	}
	for k := range out {
		b := make([]byte, BlockSize)
		if err := td.readPlain(st, k, 0, b, sc); err != nil {
			require.ErrorIs(t, err, ErrIntegrity)
			continue
		}
		out[k] = b
	}
	return out, st, true
}

// TestEveryMetadataByteEdit changes each byte of a format 3 chunk's
// metadata region (header, both copies of the selector state, entries),
// one at a time, and reads every block of the chunk: each reads as its
// newest version or fails authentication; never as an older version, and
// a written block never as zeros. A sample of the edits also goes through
// the backend and a real reopen.
func TestEveryMetadataByteEdit(t *testing.T) {
	for _, layers := range []int{1, 2} {
		t.Run(fmt.Sprintf("layers=%d", layers), func(t *testing.T) {
			td, newest, older := versionedChunk(t, layers)
			raw, err := os.ReadFile(chunkFile(td, 0))
			require.NoError(t, err)
			td.log = slog.New(slog.DiscardHandler) // thousands of alarms
			sc := td.getScratch()
			defer td.putScratch(sc)
			checkOne := func(off, k int, b []byte) {
				for _, o := range older {
					require.False(t, bytes.Equal(o, b), "edit at %d: block %d reads an older version", off, k)
				}
				if newest[k] == nil {
					require.True(t, zeros.Is(b), "edit at %d: never-written block %d reads data", off, k)
				} else {
					require.Equal(t, newest[k], b, "edit at %d: block %d", off, k)
				}
			}
			check := func(off int, got [][]byte) {
				for k, b := range got {
					if b != nil {
						checkOne(off, k, b)
					}
				}
			}
			got, base, _ := readAllBlocks(t, td, raw, sc, nil)
			check(-1, got)
			refused, read := 0, 0
			for off := 0; off < int(td.lay.entriesEnd()); off++ {
				for _, x := range []byte{0x01, 0xff} {
					raw[off] ^= x
					got, _, ok := readAllBlocks(t, td, raw, sc, base)
					raw[off] ^= x
					if !ok {
						continue
					}
					read++
					check(off, got)
					if got[0] == nil {
						refused++
					}
				}
			}
			require.Positive(t, refused)
			require.GreaterOrEqual(t, read, 2*10*td.lay.entrySize, "the current versions' entries change what is read")

			// Through the backend and a reopen, for a sample.
			for off := int64(0); off < td.lay.entriesEnd(); off += 997 {
				patch(t, chunkFile(td, 0), off, func(b []byte) { b[0] ^= 0x5a })
				td.reopen(t)
				for k := range newest {
					b := make([]byte, BlockSize)
					if _, err := td.ReadAt(b, int64(k)*BlockSize); err != nil {
						require.ErrorIs(t, err, ErrIntegrity)
						continue
					}
					checkOne(int(off), k, b)
				}
				patch(t, chunkFile(td, 0), off, func(b []byte) { b[0] ^= 0x5a })
			}
		})
	}
}

// newestStateOffset is where the newest copy of chunk raw's selector state
// starts: once a state is durable, the other copy is zeros.
func newestStateOffset(t *testing.T, td *testDisk, raw []byte) int64 {
	t.Helper()
	var found []int64
	for i := range 2 {
		off := td.lay.stateOffset(i)
		if string(raw[off:off+8]) == stateMagic {
			found = append(found, off)
		}
	}
	require.Len(t, found, 1, "one copy of the state, the other zeroed")
	return found[0]
}

// The rows of the detection table in docs/SECURITY.md and docs/FORMAT.md
// that format 3 adds or changes, each against a format 3 disk whose block
// 1 has an older version in slot A and the newest in slot B. (A flipped
// bit, swapped blocks and pages, blocks and chunks from another disk or
// index, and chunk headers are TestTamper's rows, run on every format.)
func TestDetectionTable(t *testing.T) {
	ctx := context.Background()
	const cb = 16
	type fixture struct {
		td       *testDisk
		old, new []byte
		saved    []byte // chunk 0 as it was when old was the newest version
	}
	setup := func(t *testing.T, format int) *fixture {
		td := newTestDiskFormat(t, format, 1<<20, 1, cb)
		f := &fixture{td: td, old: randBytes(BlockSize), new: randBytes(BlockSize)}
		_, err := td.WriteAt(f.old, BlockSize)
		require.NoError(t, err)
		_, err = td.WriteAt(randBytes(BlockSize), 2*BlockSize)
		require.NoError(t, err)
		require.NoError(t, td.Sync())
		f.saved, err = os.ReadFile(chunkFile(td, 0))
		require.NoError(t, err)
		_, err = td.WriteAt(f.new, BlockSize)
		require.NoError(t, err)
		require.NoError(t, td.Close())
		return f
	}
	// edit changes the stored chunk 0 and opens the disk again.
	edit := func(t *testing.T, f *fixture, fn func(raw []byte)) {
		raw, err := os.ReadFile(chunkFile(f.td, 0))
		require.NoError(t, err)
		fn(raw)
		require.NoError(t, os.WriteFile(chunkFile(f.td, 0), raw, 0o600))
		d, err := Open(ctx, f.td.be, f.td.name, f.td.ring)
		require.NoError(t, err)
		f.td.Disk = d
		t.Cleanup(func() { d.Close() })
	}
	read := func(f *fixture) ([]byte, error) {
		b := make([]byte, BlockSize)
		_, err := f.td.ReadAt(b, BlockSize)
		return b, err
	}
	caught := func(t *testing.T, f *fixture) {
		t.Helper()
		requireIntegrity(t, f.td, BlockSize, f.new)
		requireIntegrity(t, f.td, BlockSize, f.old)
		require.Positive(t, f.td.Stats().IntegrityErrors, "no alarm counted")
	}

	t.Run("selector set back (0xF0 to 0x0F)", func(t *testing.T) {
		for _, format := range formats[1:] {
			f := setup(t, format)
			edit(t, f, func(raw []byte) {
				off := f.td.lay.selOffset(1)
				if format >= formatV3 {
					off = newestStateOffset(t, f.td, raw) + 16 + 1
				}
				require.Equal(t, selSlotB, raw[off])
				raw[off] = selSlotA
			})
			if format >= formatV3 {
				caught(t, f)
				continue
			}
			// Format 2 is fooled: the block reads as its older version,
			// with no alarm. This is what format 3 fixes.
			got, err := read(f)
			require.NoError(t, err)
			require.Equal(t, f.old, got)
		}
	})
	t.Run("selector set to never written", func(t *testing.T) {
		f := setup(t, formatV3)
		edit(t, f, func(raw []byte) { raw[newestStateOffset(t, f.td, raw)+16+1] = selNone })
		caught(t, f)
	})
	t.Run("generation raised", func(t *testing.T) {
		f := setup(t, formatV3)
		edit(t, f, func(raw []byte) { raw[newestStateOffset(t, f.td, raw)+15] += 2 })
		caught(t, f)
	})
	t.Run("state copy moved to the other copy's place", func(t *testing.T) {
		f := setup(t, formatV3)
		edit(t, f, func(raw []byte) {
			a, b := f.td.lay.stateOffset(0), f.td.lay.stateOffset(1)
			swap(raw, a, b, f.td.lay.stateBytes)
		})
		caught(t, f)
	})
	t.Run("state copy from another chunk", func(t *testing.T) {
		f := setup(t, formatV3)
		d, err := Open(ctx, f.td.be, f.td.name, f.td.ring)
		require.NoError(t, err)
		_, err = d.WriteAt(randBytes(BlockSize), (cb+1)*BlockSize)
		require.NoError(t, err)
		require.NoError(t, d.Close())
		other, err := os.ReadFile(chunkFile(f.td, 1))
		require.NoError(t, err)
		edit(t, f, func(raw []byte) {
			n := 2 * f.td.lay.stateBytes
			copy(raw[headerSize:headerSize+n], other[headerSize:headerSize+n])
		})
		caught(t, f)
	})
	t.Run("zeroed state table", func(t *testing.T) {
		f := setup(t, formatV3)
		edit(t, f, func(raw []byte) { clear(raw[headerSize:f.td.lay.entryBase]) })
		caught(t, f)
	})
	t.Run("zeroed header, state and entries over data", func(t *testing.T) {
		// A chunk is blank (reads as zeros) only if nothing is in it.
		f := setup(t, formatV3)
		edit(t, f, func(raw []byte) { clear(raw[:f.td.lay.entriesEnd()]) })
		caught(t, f)
	})
	t.Run("chunk copied from a snapshot of the same disk: not caught", func(t *testing.T) {
		// The saved chunk is authentic: same key, volume and index, and
		// nothing outside the chunk says which generation is current.
		f := setup(t, formatV3)
		edit(t, f, func(raw []byte) {
			clear(raw)
			copy(raw, f.saved)
		})
		got, err := read(f)
		require.NoError(t, err)
		require.Equal(t, f.old, got)
		require.Zero(t, f.td.Stats().IntegrityErrors)
	})
	t.Run("older state copy put back over a damaged newest: not caught", func(t *testing.T) {
		// Needs the older copy's bytes, saved earlier: the chunk then
		// reads as of that state.
		f := setup(t, formatV3)
		edit(t, f, func(raw []byte) {
			n := 2 * f.td.lay.stateBytes
			copy(raw[headerSize:headerSize+n], f.saved[headerSize:headerSize+n])
		})
		got, err := read(f)
		require.NoError(t, err)
		require.Equal(t, f.old, got)
	})
	t.Run("page and entry of an older version put back: not caught", func(t *testing.T) {
		// Block 1's older version was in slot A; its page and entry,
		// saved, are put back in slot B, which the state names.
		f := setup(t, formatV3)
		edit(t, f, func(raw []byte) { putUnit(f.td.lay, raw, 1, 1, storedUnit(f.td.lay, f.saved, 0, 1)) })
		got, err := read(f)
		require.NoError(t, err)
		require.Equal(t, f.old, got)
	})
	t.Run("whole disk rolled back: not caught", func(t *testing.T) {
		f := setup(t, formatV3)
		dir := t.TempDir()
		require.NoError(t, os.CopyFS(dir, os.DirFS(f.td.dir)))
		d, err := Open(ctx, f.td.be, f.td.name, f.td.ring)
		require.NoError(t, err)
		_, err = d.WriteAt(randBytes(BlockSize), BlockSize)
		require.NoError(t, err)
		require.NoError(t, d.Close())
		// Emptied in place: the backend holds its root directory open.
		entries, err := os.ReadDir(f.td.dir)
		require.NoError(t, err)
		for _, e := range entries {
			require.NoError(t, os.RemoveAll(filepath.Join(f.td.dir, e.Name())))
		}
		require.NoError(t, os.CopyFS(f.td.dir, os.DirFS(dir)))
		d, err = Open(ctx, f.td.be, f.td.name, f.td.ring)
		require.NoError(t, err)
		f.td.Disk = d
		t.Cleanup(func() { d.Close() })
		got, err := read(f)
		require.NoError(t, err)
		require.Equal(t, f.new, got)
	})
	t.Run("chunk deleted: not caught", func(t *testing.T) {
		f := setup(t, formatV3)
		require.NoError(t, os.Remove(chunkFile(f.td, 0)))
		d, err := Open(ctx, f.td.be, f.td.name, f.td.ring)
		require.NoError(t, err)
		defer d.Close()
		got := make([]byte, BlockSize)
		_, err = d.ReadAt(got, BlockSize)
		require.NoError(t, err)
		require.True(t, zeros.Is(got))
	})
	t.Run("block moved to another chunk", func(t *testing.T) {
		// Page and entry of block 1 of chunk 0 put at block 1 of chunk 1:
		// the absolute block index in the additional data differs.
		f := setup(t, formatV3)
		d, err := Open(ctx, f.td.be, f.td.name, f.td.ring)
		require.NoError(t, err)
		_, err = d.WriteAt(randBytes(BlockSize), (cb+1)*BlockSize)
		require.NoError(t, err)
		require.NoError(t, d.Close())
		src, err := os.ReadFile(chunkFile(f.td, 0))
		require.NoError(t, err)
		dst, err := os.ReadFile(chunkFile(f.td, 1))
		require.NoError(t, err)
		putUnit(f.td.lay, dst, 0, 1, storedUnit(f.td.lay, src, 1, 1))
		require.NoError(t, os.WriteFile(chunkFile(f.td, 1), dst, 0o600))
		d, err = Open(ctx, f.td.be, f.td.name, f.td.ring)
		require.NoError(t, err)
		defer d.Close()
		_, err = d.ReadAt(make([]byte, BlockSize), (cb+1)*BlockSize)
		require.ErrorIs(t, err, ErrIntegrity)
	})
}

// A crash while a state copy is written leaves the previous state (the
// write torn: the copy does not authenticate); one after the new copy is
// durable but before the older is zeroed leaves both valid, and the newest
// counts. Either way nothing reads as damaged.
func TestTornStateWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		tear func(hb *hookBackend, lay layout) // set up the failure of the next commit
		want int                               // 0: the version before, 1: the new one
	}{
		{"copy torn", func(hb *hookBackend, lay layout) {
			hb.onWrite = func(p []byte, off int64) (bool, int, error) {
				if off == lay.stateOffset(0) || off == lay.stateOffset(1) {
					return true, 600, errInjected // magic, generation and part of the table; no MAC
				}
				return false, 0, nil
			}
		}, 0},
		{"older copy not zeroed", func(hb *hookBackend, lay layout) {
			writes := 0
			hb.onWrite = func(p []byte, off int64) (bool, int, error) {
				if off == lay.stateOffset(0) || off == lay.stateOffset(1) {
					if writes++; writes == 2 {
						return true, 0, errInjected
					}
				}
				return false, 0, nil
			}
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, hb, lb, ring := hookedDisk(t, formatV3)
			v := [][]byte{randBytes(BlockSize), randBytes(BlockSize)}
			_, err := d.WriteAt(v[0], 0)
			require.NoError(t, err)
			require.NoError(t, d.Sync())
			_, err = d.WriteAt(v[1], 0)
			require.NoError(t, err)
			tc.tear(hb, d.lay)
			require.ErrorIs(t, d.Sync(), errInjected)
			require.ErrorIs(t, d.Fenced(), ErrFenced)
			hb.onWrite = nil
			d.Close()
			require.Equal(t, v[tc.want], reopenRead(t, lb, ring, 0))
			d2, err := Open(context.Background(), lb, "d", ring)
			require.NoError(t, err)
			require.Zero(t, d2.Stats().IntegrityErrors)
			// The next commit goes on from the state found.
			_, err = d2.WriteAt(v[0], BlockSize)
			require.NoError(t, err)
			require.NoError(t, d2.Close())
			require.Equal(t, v[0], reopenRead(t, lb, ring, BlockSize))
			require.Equal(t, v[tc.want], reopenRead(t, lb, ring, 0))
		})
	}
}

// A failed sync of a chunk being created fences the disk: its header may
// never reach the device, and a later write into the chunk would not write
// it again.
func TestFailedCreationSyncFences(t *testing.T) {
	d, hb, _, _ := hookedDisk(t, formatV3)
	hb.failSync = func() error { return errInjected }
	_, err := d.WriteAt(randBytes(BlockSize), 0)
	require.ErrorIs(t, err, errInjected)
	require.ErrorContains(t, d.Fenced(), "sync of a new chunk")
	hb.failSync = nil
	_, err = d.WriteAt(randBytes(BlockSize), 0)
	require.ErrorIs(t, err, ErrFenced)
}

// A commit leaves its chunk to the next Sync, whose fdatasync makes the
// zeros over the older state copy durable (so that a power cut cannot
// leave the older copy valid on the device for long); after that the chunk
// is clean and costs no sync.
func TestCommitLeavesChunkToNextSync(t *testing.T) {
	d, hb, _, _ := hookedDisk(t, formatV3)
	_, err := d.WriteAt(randBytes(BlockSize), 0)
	require.NoError(t, err)
	require.NoError(t, d.Sync())
	var syncs atomic.Int32
	hb.onSync = func() { syncs.Add(1) }
	require.NoError(t, d.Sync())
	require.EqualValues(t, 1, syncs.Load(), "one fdatasync, and no new state")
	require.NoError(t, d.Sync())
	require.EqualValues(t, 1, syncs.Load(), "the chunk is clean")
}

// Close leaves no chunk with an older state copy whose zeros are not
// durable: it syncs the chunks it committed once more.
func TestCloseSyncsTheZerosOfCommits(t *testing.T) {
	d, hb, _, _ := hookedDisk(t, formatV3)
	_, err := d.WriteAt(randBytes(BlockSize), 0)
	require.NoError(t, err)
	var syncs atomic.Int32
	hb.onSync = func() { syncs.Add(1) }
	require.NoError(t, d.Close())
	require.EqualValues(t, 3, syncs.Load(), "data, state, and the zeros over the older copy")
}
