package disk

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage/local"
)

// settle waits until every read-ahead of d in progress has ended.
func settle(d *Disk) {
	d.ra.mu.Lock()
	q := slices.Clone(d.ra.queue)
	d.ra.mu.Unlock()
	for _, a := range q {
		<-a.done
	}
}

// aheadOffsets returns where d's read-aheads start.
func aheadOffsets(d *Disk) []int64 {
	d.ra.mu.Lock()
	defer d.ra.mu.Unlock()
	var offs []int64
	for _, a := range d.ra.queue {
		offs = append(offs, a.off)
	}
	return offs
}

const raSize = 256 << 10 // a read long enough to be read ahead

// filledDisk returns a disk of size bytes written in full with random
// bytes, and those bytes.
func filledDisk(t *testing.T, format int, size int64) (*testDisk, []byte) {
	t.Helper()
	td := newTestDiskFormat(t, format, size, 1, 0)
	model := randBytes(int(size))
	_, err := td.WriteAt(model, 0)
	require.NoError(t, err)
	return td, model
}

// startStream reads the ranges at from and from+raSize, as a sequential
// reader does, and waits for the read-aheads that starts.
func startStream(t *testing.T, d *Disk, from int64) {
	t.Helper()
	p := make([]byte, raSize)
	for _, off := range []int64{from, from + raSize} {
		_, err := d.ReadAt(p, off)
		require.NoError(t, err)
	}
	settle(d)
}

func TestReadAheadServesASequentialReader(t *testing.T) {
	for _, format := range formats {
		for _, layers := range []int{1, 2} {
			t.Run(fmt.Sprintf("v%d/layers=%d", format, layers), func(t *testing.T) {
				td := newTestDiskFormat(t, format, 16<<20, layers, 0)
				data := randBytes(int(td.Size()))
				_, err := td.WriteAt(data, 0)
				require.NoError(t, err)

				// One pass through the whole disk, as the tree reads it.
				lent := 0
				p := make([]byte, raSize)
				for off := int64(0); off < td.Size(); off += raSize {
					got, release, err := td.ReadLent(p, off)
					require.NoError(t, err)
					require.True(t, bytes.Equal(data[off:off+raSize], got), "read at %d", off)
					if release != nil {
						lent++
						release()
					}
					if off == raSize {
						// The second read continued the first: the
						// next ranges are being read ahead.
						require.Equal(t, []int64{2 * raSize, 3 * raSize, 4 * raSize}, aheadOffsets(td.Disk))
					}
				}
				reads := int(td.Size() / raSize)
				require.Equal(t, reads-2, lent, "every read after the first two comes from a read-ahead")
				require.EqualValues(t, reads-2, td.Stats().ReadAheads)

				// ReadAt copies a read-ahead into the caller's buffer.
				for off := int64(0); off < 8*raSize; off += raSize {
					clear(p)
					_, err := td.ReadAt(p, off)
					require.NoError(t, err)
					require.True(t, bytes.Equal(data[off:off+raSize], p), "read at %d", off)
				}
				require.EqualValues(t, reads-2+6, td.Stats().ReadAheads)

				// A long read elsewhere drops the read-aheads; short
				// sequential reads start none.
				_, err = td.ReadAt(p, 12*raSize)
				require.NoError(t, err)
				require.Empty(t, aheadOffsets(td.Disk))
				small := make([]byte, 64<<10)
				for off := int64(0); off < 8*int64(len(small)); off += int64(len(small)) {
					_, err := td.ReadAt(small, off)
					require.NoError(t, err)
					require.Empty(t, aheadOffsets(td.Disk))
				}

				// Short reads elsewhere leave a stream's read-aheads alone.
				for _, off := range []int64{0, raSize} {
					_, err := td.ReadAt(p, off)
					require.NoError(t, err)
				}
				hits := td.Stats().ReadAheads
				_, err = td.ReadAt(small, 13*raSize)
				require.NoError(t, err)
				require.Equal(t, []int64{2 * raSize, 3 * raSize, 4 * raSize}, aheadOffsets(td.Disk))
				_, err = td.ReadAt(p, 2*raSize)
				require.NoError(t, err)
				require.True(t, bytes.Equal(data[2*raSize:3*raSize], p))
				require.Equal(t, hits+1, td.Stats().ReadAheads)
			})
		}
	}
}

// TestReadAheadIsNeverStale changes the disk while ranges are read ahead:
// the reads that follow must see the change.
func TestReadAheadIsNeverStale(t *testing.T) {
	changes := []struct {
		name string
		fn   func(td *testDisk, model []byte) error
	}{
		{"a write inside the next range", func(td *testDisk, model []byte) error {
			p := randBytes(5000)
			copy(model[2*raSize+777:], p)
			_, err := td.WriteAt(p, 2*raSize+777)
			return err
		}},
		{"a write inside a later range", func(td *testDisk, model []byte) error {
			p := randBytes(BlockSize)
			copy(model[4*raSize-BlockSize:], p)
			_, err := td.WriteAt(p, 4*raSize-BlockSize)
			return err
		}},
		{"a discard", func(td *testDisk, model []byte) error {
			clear(model[3*raSize : 3*raSize+3*BlockSize])
			return td.Discard(3*raSize, 3*BlockSize)
		}},
		{"a zeroed range", func(td *testDisk, model []byte) error {
			clear(model[2*raSize+100 : 2*raSize+200])
			return td.ZeroRange(2*raSize+100, 100)
		}},
	}
	for _, format := range formats {
		for _, c := range changes {
			t.Run(fmt.Sprintf("v%d/%s", format, c.name), func(t *testing.T) {
				td, model := filledDisk(t, format, 4<<20)
				startStream(t, td.Disk, 0)
				require.Len(t, aheadOffsets(td.Disk), 3)
				p := make([]byte, raSize)
				require.NoError(t, c.fn(td, model))
				for off := int64(2 * raSize); off < 6*raSize; off += raSize {
					got, release, err := td.ReadLent(p, off)
					require.NoError(t, err)
					require.True(t, bytes.Equal(model[off:off+raSize], got), "read at %d", off)
					if release != nil {
						release()
					}
				}
				require.NotZero(t, td.Stats().ReadAheads, "the stream goes on after the change")
			})
		}
	}
}

// TestReadAheadOutlivesWritesElsewhere: a write outside the ranges read
// ahead leaves them to the reader.
func TestReadAheadOutlivesWritesElsewhere(t *testing.T) {
	td, model := filledDisk(t, FormatVersion, 4<<20)
	startStream(t, td.Disk, 0)
	w := randBytes(3 * BlockSize)
	copy(model[12*raSize:], w)
	_, err := td.WriteAt(w, 12*raSize)
	require.NoError(t, err)
	require.NoError(t, td.Discard(raSize, BlockSize)) // behind the reader
	clear(model[raSize : raSize+BlockSize])
	require.Len(t, aheadOffsets(td.Disk), 3)
	p := make([]byte, raSize)
	for off := int64(2 * raSize); off < 5*raSize; off += raSize {
		_, err := td.ReadAt(p, off)
		require.NoError(t, err)
		require.True(t, bytes.Equal(model[off:off+raSize], p))
	}
	require.EqualValues(t, 3, td.Stats().ReadAheads)
}

// TestReadAheadDuringAWrite starts read-aheads while a write is under way:
// the write, stopped in its first chunk, has not yet changed the range read
// ahead in its second chunk. Once it returns, reads of that range must see
// it: the read-ahead made before the change is dropped when the write ends.
func TestReadAheadDuringAWrite(t *testing.T) {
	for _, format := range formats {
		t.Run(fmt.Sprintf("v%d", format), func(t *testing.T) {
			// No background Sync: its writes would meet the hook first.
			defer func(every time.Duration) { flushEvery = every }(flushEvery)
			flushEvery = time.Hour
			lb, err := local.Open(t.TempDir())
			require.NoError(t, err)
			hb := &hookBackend{Backend: lb}
			d, err := Create(context.Background(), hb, "d", CreateOptions{Size: 8 << 20, Layers: wrappers(keyring{newKEK("k/1")}), Format: format})
			require.NoError(t, err)
			defer d.Close()
			model := randBytes(int(d.Size()))
			_, err = d.WriteAt(model, 0)
			require.NoError(t, err)

			// The write covers the last block of chunk 0 and the first of
			// chunk 1; it stops at its first backend write (chunk 0's).
			const chunk = 4 << 20
			w := randBytes(2 * BlockSize)
			stopped, resume := make(chan struct{}), make(chan struct{})
			var once sync.Once
			hb.onWrite = func(p []byte, off int64) (bool, int, error) {
				once.Do(func() { close(stopped); <-resume })
				return false, 0, nil
			}
			wrote := make(chan error, 1)
			go func() {
				_, err := d.WriteAt(w, chunk-BlockSize)
				wrote <- err
			}()
			<-stopped

			// A stream in chunk 0 that stays off the write's block; its
			// read-aheads reach into chunk 1.
			p := make([]byte, raSize)
			for _, off := range []int64{chunk - 3*raSize, chunk - 2*raSize} {
				_, err := d.ReadAt(p, off)
				require.NoError(t, err)
			}
			require.Equal(t, []int64{chunk - raSize, chunk, chunk + raSize}, aheadOffsets(d))
			d.ra.mu.Lock()
			inChunk1 := d.ra.queue[1]
			d.ra.mu.Unlock()
			<-inChunk1.done // read before the write changed chunk 1

			close(resume)
			require.NoError(t, <-wrote)
			copy(model[chunk-BlockSize:], w)
			for off := int64(chunk - raSize); off < chunk+2*raSize; off += raSize {
				_, err := d.ReadAt(p, off)
				require.NoError(t, err)
				require.True(t, bytes.Equal(model[off:off+raSize], p), "read at %d", off)
			}
		})
	}
}

// TestReadAheadAtTheEnd: no read-ahead reaches past the end of the disk,
// and a read that runs over the end still gets the bytes up to it.
func TestReadAheadAtTheEnd(t *testing.T) {
	td, model := filledDisk(t, FormatVersion, 4<<20+raSize/2)
	p := make([]byte, raSize)
	off := int64(0)
	for ; off+raSize <= td.Size(); off += raSize {
		_, err := td.ReadAt(p, off)
		require.NoError(t, err)
		require.True(t, bytes.Equal(model[off:off+raSize], p), "read at %d", off)
		for _, a := range aheadOffsets(td.Disk) {
			require.LessOrEqual(t, a+raSize, td.Size(), "read-ahead at %d", a)
		}
	}
	require.EqualValues(t, off/raSize-2, td.Stats().ReadAheads, "the last whole range came from a read-ahead")
	n, err := td.ReadAt(p, off)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, raSize/2, n)
	require.True(t, bytes.Equal(model[off:], p[:n]))
}

func TestReadAheadEndsWithTheLeaseAndClose(t *testing.T) {
	td, _ := filledDisk(t, FormatVersion, 4<<20)
	p := make([]byte, raSize)
	startStream(t, td.Disk, 0)
	require.NotEmpty(t, aheadOffsets(td.Disk))
	td.SetLease(time.Now().Add(-time.Second))
	_, err := td.ReadAt(p, 2*raSize)
	require.ErrorIs(t, err, ErrLeaseExpired, "a read-ahead must not outlive the lease")
	require.Empty(t, aheadOffsets(td.Disk))
	require.Zero(t, td.Stats().ReadAheads)

	td.SetLease(time.Time{})
	startStream(t, td.Disk, 4*raSize)
	require.NotEmpty(t, aheadOffsets(td.Disk))
	require.NoError(t, td.Close())
	require.Empty(t, aheadOffsets(td.Disk))
	_, err = td.ReadAt(p, 6*raSize)
	require.ErrorIs(t, err, ErrClosed)

	// Closed while its read-aheads are still running.
	other, _ := filledDisk(t, FormatVersion, 4<<20)
	for _, off := range []int64{0, raSize} {
		_, err := other.ReadAt(p, off)
		require.NoError(t, err)
	}
	require.NoError(t, other.Close())
	require.Empty(t, aheadOffsets(other.Disk))
	_, err = other.ReadAt(p, 2*raSize)
	require.ErrorIs(t, err, ErrClosed)

	// Every buffer went back to the budget (no other disk is open: the
	// package's tests do not run in parallel).
	require.Eventually(t, func() bool { return aheadUsed.Load() == 0 }, 5*time.Second, time.Millisecond,
		"read-aheads still hold %d bytes", aheadUsed.Load())
}

// TestReadAheadRaisesNoAlarm damages a block in a range read ahead: no
// alarm until a read asks for that range, then exactly one.
func TestReadAheadRaisesNoAlarm(t *testing.T) {
	for _, format := range formats {
		t.Run(fmt.Sprintf("v%d", format), func(t *testing.T) {
			td, _ := filledDisk(t, format, 4<<20)
			require.NoError(t, td.Sync())
			bad := int(3*raSize/BlockSize) + 5 // in the second range read ahead
			off := td.lay.slotOffset(0, bad)   // a block written once is in slot A
			if format != formatV1 {
				off = td.lay.pageOffset(0, bad)
			}
			patch(t, chunkFile(td, 0), off+100, func(b []byte) { b[0] ^= 1 })

			p := make([]byte, raSize)
			for _, off := range []int64{0, raSize, 2 * raSize} {
				_, err := td.ReadAt(p, off)
				require.NoError(t, err)
			}
			settle(td.Disk)
			require.Zero(t, td.Stats().IntegrityErrors, "a read-ahead raised the alarm")
			_, err := td.ReadAt(p, 3*raSize)
			require.ErrorIs(t, err, ErrIntegrity)
			require.EqualValues(t, 1, td.Stats().IntegrityErrors)
		})
	}
}

// TestReadAheadWithConcurrentWriters streams through a disk while another
// goroutine writes stamped blocks: a read must never return a block older
// than the last write of it that had completed when the read began.
func TestReadAheadWithConcurrentWriters(t *testing.T) {
	td := newTestDisk(t, 4<<20, 1, 0)
	blocks := int(td.Size() / BlockSize)
	done := make([]atomic.Uint64, blocks) // the last completed stamp of each block
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		blk := make([]byte, BlockSize)
		r := rand.New(rand.NewPCG(1, 2))
		for v := uint64(1); ; v++ {
			select {
			case <-stop:
				return
			default:
			}
			b := r.IntN(blocks)
			binary.BigEndian.PutUint64(blk, v)
			if _, err := td.WriteAt(blk, int64(b)*BlockSize); err != nil {
				t.Error(err)
				return
			}
			done[b].Store(v)
			if v%16 == 0 { // pauses, so that some read-aheads survive
				time.Sleep(2 * time.Millisecond)
			}
		}
	})

	p := make([]byte, raSize)
	deadline := time.Now().Add(2 * time.Second)
	for pass := 0; time.Now().Before(deadline) || td.Stats().ReadAheads == 0; pass++ {
		require.Less(t, pass, 1000, "no read was ever served from a read-ahead")
		for off := int64(0); off < td.Size(); off += raSize {
			b0 := int(off / BlockSize)
			before := make([]uint64, raSize/BlockSize)
			for i := range before {
				before[i] = done[b0+i].Load()
			}
			got, release, err := td.ReadLent(p, off)
			require.NoError(t, err)
			for i := range before {
				stamp := binary.BigEndian.Uint64(got[i*BlockSize:])
				require.GreaterOrEqual(t, stamp, before[i], "block %d is older than a completed write", b0+i)
			}
			if release != nil {
				release()
			}
		}
	}
	close(stop)
	wg.Wait()
}

// TestReadAheadBudget: the read-aheads of all disks share one budget, and
// what a closed disk held goes back to it.
func TestReadAheadBudget(t *testing.T) {
	defer func(b int64) { aheadBudget = b }(aheadBudget)
	aheadBudget = aheadUsed.Load() + 2*raSize
	a, _ := filledDisk(t, FormatVersion, 4<<20)
	b, model := filledDisk(t, FormatVersion, 4<<20)
	startStream(t, a.Disk, 0)
	require.Equal(t, []int64{2 * raSize, 3 * raSize}, aheadOffsets(a.Disk), "two ranges fit the budget")
	startStream(t, b.Disk, 0)
	require.Empty(t, aheadOffsets(b.Disk), "nothing is left for a second disk")

	require.NoError(t, a.Close())
	p := make([]byte, raSize)
	_, err := b.ReadAt(p, 2*raSize)
	require.NoError(t, err)
	require.Equal(t, []int64{3 * raSize, 4 * raSize}, aheadOffsets(b.Disk))
	settle(b.Disk)
	for off := int64(3 * raSize); off < 5*raSize; off += raSize {
		_, err := b.ReadAt(p, off)
		require.NoError(t, err)
		require.True(t, bytes.Equal(model[off:off+raSize], p))
	}
	require.EqualValues(t, 2, b.Stats().ReadAheads)
}
