package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage/local"
)

// hookedDisk creates a one-layer disk of format on a hookBackend over a
// fresh local backend, with no background Sync.
func hookedDisk(t *testing.T, format int) (*Disk, *hookBackend, *local.Backend, keyring) {
	t.Helper()
	lb, err := local.Open(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { lb.Close() })
	hb := &hookBackend{Backend: lb}
	ring := keyring{newKEK("k/1")}
	old := flushEvery
	flushEvery = time.Hour
	t.Cleanup(func() { flushEvery = old })
	d, err := Create(context.Background(), hb, "d", CreateOptions{Size: 4 << 20, Layers: wrappers(ring), Format: format})
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d, hb, lb, ring
}

// heldSync makes the next chunk Sync of hb wait until release is called,
// then fail with errInjected if fail is set. entered is closed once it
// waits.
func heldSync(hb *hookBackend, fail bool) (entered chan struct{}, release func()) {
	entered = make(chan struct{})
	gate := make(chan struct{})
	var let sync.Once
	var used atomic.Bool
	hb.failSync = func() error {
		if used.Swap(true) {
			return nil
		}
		close(entered)
		<-gate
		if fail {
			return errInjected
		}
		return nil
	}
	return entered, func() { let.Do(func() { close(gate) }) }
}

// recv waits for an error from ch, failing the test if none comes in 30 s.
func recv(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("no result within 30 s")
		return nil
	}
}

// writeThenHoldSync writes v at block 0 of d and starts a Sync that is held
// inside the chunk's sync (failing once released, if fail is set). It
// returns the Sync's result channel and the release.
func writeThenHoldSync(t *testing.T, d *Disk, hb *hookBackend, v []byte, fail bool) (first chan error, release func()) {
	t.Helper()
	_, err := d.WriteAt(v, 0)
	require.NoError(t, err)
	entered, release := heldSync(hb, fail)
	t.Cleanup(release) // also when the test fails while the Sync is held
	first = make(chan error, 1)
	go func() { first <- d.Sync() }()
	<-entered
	return first, release
}

func reopenRead(t *testing.T, lb *local.Backend, ring keyring, off int64) []byte {
	t.Helper()
	d, err := Open(context.Background(), lb, "d", ring)
	require.NoError(t, err)
	defer d.Close()
	b := make([]byte, BlockSize)
	_, err = d.ReadAt(b, off)
	require.NoError(t, err)
	return b
}

// A Sync that starts while another Sync of the same chunk is writing must
// not return before that one is done (a guest's fsync would return with its
// writes not yet durable). When that one fails, it must not report success
// either, nor sync again: the disk is fenced (see TestFailedSyncFences).
func TestSyncWaitsForSyncInFlight(t *testing.T) {
	for _, format := range formats {
		for _, fail := range []bool{false, true} {
			d, hb, lb, ring := hookedDisk(t, format)
			v := randBytes(BlockSize)
			first, release := writeThenHoldSync(t, d, hb, v, fail)
			second := make(chan error, 1)
			go func() { second <- d.Sync() }()
			select {
			case err := <-second:
				t.Fatalf("format %d: a Sync returned (err %v) while the chunk's Sync in flight was still writing", format, err)
			case <-time.After(200 * time.Millisecond):
			}
			release()
			err := recv(t, first)
			if fail {
				require.ErrorIs(t, err, errInjected)
				require.ErrorIs(t, recv(t, second), ErrFenced, "format %d: the second Sync reports the failed one", format)
				continue
			}
			require.NoError(t, err)
			require.NoError(t, recv(t, second))
			require.Equal(t, v, reopenRead(t, lb, ring, 0), "format %d", format)
		}
	}
}

// Close, like Sync, must not take a chunk whose Sync is in flight for a
// durable one: when that Sync fails, Close says so (and syncs nothing
// again).
func TestCloseAfterFailedSyncInFlight(t *testing.T) {
	for _, format := range formats {
		d, hb, _, _ := hookedDisk(t, format)
		v := randBytes(BlockSize)
		first, release := writeThenHoldSync(t, d, hb, v, true)
		closed := make(chan error, 1)
		go func() { closed <- d.Close() }()
		time.Sleep(50 * time.Millisecond)
		release()
		require.ErrorIs(t, recv(t, first), errInjected)
		require.ErrorIs(t, recv(t, closed), ErrFenced, "format %d", format)
	}
}

// A discard makes the zeroed selectors durable before it punches the
// slots: a selector on the device must never name a punched slot.
func TestDiscardSyncsBeforePunching(t *testing.T) {
	for _, format := range formats {
		d, hb, _, _ := hookedDisk(t, format)
		_, err := d.WriteAt(randBytes(4*BlockSize), 0)
		require.NoError(t, err)
		require.NoError(t, d.Sync())
		var mu sync.Mutex
		var events []string
		hb.onSync = func() { mu.Lock(); events = append(events, "sync"); mu.Unlock() }
		hb.onPunch = func(off, n int64) { mu.Lock(); events = append(events, "punch"); mu.Unlock() }
		require.NoError(t, d.Discard(0, 4*BlockSize))
		mu.Lock()
		got := append([]string(nil), events...)
		mu.Unlock()
		require.NotEmpty(t, got)
		require.Equal(t, "sync", got[0], "format %d: events %v", format, got)
		require.Contains(t, got, "punch")
		b := make([]byte, 4*BlockSize)
		_, err = d.ReadAt(b, 0)
		require.NoError(t, err)
		require.Equal(t, make([]byte, 4*BlockSize), b)
	}
}

// Every failed sync fences the disk: the sync of the data, of the
// selectors, of a discard. Writes, discards and flushes then fail with EIO
// and reach no sync of the backend (no retry: after a failed fsync a second
// one may succeed without the pages the first lost); reads go on in
// formats 2 and up and stop in format 1; Fenced says why. The reopened disk
// reads one of the two versions and writes again.
func TestFailedSyncFences(t *testing.T) {
	for _, format := range formats {
		for _, tc := range []struct {
			name    string
			failAt  int32
			discard bool
		}{{"data", 1, false}, {"selectors", 2, false}, {"discard", 1, true}} {
			t.Run(fmt.Sprintf("v%d/%s", format, tc.name), func(t *testing.T) {
				d, hb, lb, ring := hookedDisk(t, format)
				v1, v2 := randBytes(BlockSize), randBytes(BlockSize)
				_, err := d.WriteAt(v1, 0)
				require.NoError(t, err)
				_, err = d.WriteAt(v1, 2*BlockSize)
				require.NoError(t, err)
				require.NoError(t, d.Sync())
				_, err = d.WriteAt(v2, 0)
				require.NoError(t, err)
				var syncs atomic.Int32
				hb.failSync = func() error {
					if syncs.Add(1) == tc.failAt {
						return errInjected
					}
					return nil
				}
				if tc.discard {
					err = d.Discard(2*BlockSize, BlockSize)
				} else {
					err = d.Sync()
				}
				require.ErrorIs(t, err, errInjected)
				fenced := d.Fenced()
				require.ErrorIs(t, fenced, ErrFenced)
				require.ErrorIs(t, fenced, syscall.EIO)
				require.ErrorContains(t, fenced, "chunk 0")
				require.ErrorContains(t, fenced, errInjected.Error())
				var errno syscall.Errno
				require.True(t, errors.As(fenced, &errno) && errno == syscall.EIO, "the guest sees EIO")
				n := syncs.Load()

				_, err = d.WriteAt(randBytes(BlockSize), 0)
				require.ErrorIs(t, err, ErrFenced)
				require.ErrorIs(t, err, syscall.EIO)
				_, err = d.WriteAt(randBytes(BlockSize), 8*BlockSize)
				require.ErrorIs(t, err, ErrFenced, "every block of the disk")
				require.ErrorIs(t, d.Discard(0, BlockSize), ErrFenced)
				err = d.Sync()
				require.ErrorIs(t, err, ErrFenced)
				require.ErrorIs(t, err, syscall.EIO)
				// Nor does the background Sync try again.
				d.SetFlushInterval(100 * time.Millisecond)
				time.Sleep(350 * time.Millisecond)
				require.Equal(t, n, syncs.Load(), "a sync reached the backend after the fence")

				b := make([]byte, BlockSize)
				_, err = d.ReadAt(b, 0)
				if format == formatV1 {
					require.ErrorIs(t, err, ErrFenced, "a fenced format 1 disk could read a lost page as an older version")
				} else {
					require.NoError(t, err)
					require.Equal(t, v2, b)
				}
				require.ErrorIs(t, d.Close(), ErrFenced, "Close says that writes were not made durable")
				require.Equal(t, n, syncs.Load())

				hb.failSync = nil
				got := reopenRead(t, lb, ring, 0)
				require.True(t, bytes.Equal(got, v1) || bytes.Equal(got, v2), "reopened disk reads neither version")
				d2, err := Open(context.Background(), lb, "d", ring)
				require.NoError(t, err)
				_, err = d2.WriteAt(v2, 0)
				require.NoError(t, err, "the disk opened again is not fenced")
				require.NoError(t, d2.Close())
			})
		}
	}
}

// A failed background Sync fences the disk as a guest's flush does, and
// Fenced gives the reason.
func TestFailedBackgroundSyncFences(t *testing.T) {
	d, hb, _, _ := hookedDisk(t, FormatVersion)
	_, err := d.WriteAt(randBytes(BlockSize), 0)
	require.NoError(t, err)
	var syncs atomic.Int32
	hb.failSync = func() error { syncs.Add(1); return errInjected }
	d.SetFlushInterval(100 * time.Millisecond)
	deadline := time.Now().Add(30 * time.Second)
	for d.Fenced() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	require.ErrorIs(t, d.Fenced(), ErrFenced, "the background Sync failed and did not fence")
	require.ErrorContains(t, d.Fenced(), "sync of data of chunk 0")
	_, err = d.WriteAt(randBytes(BlockSize), 0)
	require.ErrorIs(t, err, ErrFenced)
	time.Sleep(350 * time.Millisecond)
	require.EqualValues(t, 1, syncs.Load(), "the background Sync tried again")
}

// A resize whose metadata write fails changes nothing: not the size the
// open disk serves, not meta.json; the disk reopens at its old size, and a
// later resize that succeeds serves the new size at once.
func TestResizeFailureChangesNothing(t *testing.T) {
	ctx := context.Background()
	td := newTestDisk(t, 4<<20, 1, 0)
	p := randBytes(BlockSize)
	_, err := td.WriteAt(p, 4<<20-BlockSize)
	require.NoError(t, err)
	require.NoError(t, td.Close())
	before, err := td.be.ReadMeta(ctx, metaKey(td.name))
	require.NoError(t, err)

	d, err := Open(ctx, &failingMeta{Backend: td.be}, td.name, td.ring)
	require.NoError(t, err)
	require.ErrorIs(t, d.Resize(ctx, 64<<40), errInjected)
	require.EqualValues(t, 4<<20, d.Size())
	_, err = d.WriteAt(p, 4<<20)
	require.ErrorIs(t, err, ErrRange)
	after, err := td.be.ReadMeta(ctx, metaKey(td.name))
	require.NoError(t, err)
	require.Equal(t, before, after)
	require.NoError(t, d.Close())

	d, err = Open(ctx, td.be, td.name, td.ring)
	require.NoError(t, err)
	defer d.Close()
	require.EqualValues(t, 4<<20, d.Size())
	got := make([]byte, BlockSize)
	_, err = d.ReadAt(got, 4<<20-BlockSize)
	require.NoError(t, err)
	require.Equal(t, p, got)
	require.NoError(t, d.Resize(ctx, 64<<40))
	_, err = d.WriteAt(p, 64<<40-BlockSize)
	require.NoError(t, err)
	_, err = d.ReadAt(got, 64<<40-BlockSize)
	require.NoError(t, err)
	require.Equal(t, p, got)
}

// Resize writes the stored metadata with the new size, not the copy read
// when the disk was opened: a Rewrap since then must survive it.
func TestResizeKeepsRewrap(t *testing.T) {
	ctx := context.Background()
	td := newTestDisk(t, 4<<20, 1, 0)
	k2 := newKEK("test/kek1/v2")
	_, err := Rewrap(ctx, td.be, td.name, 1, td.ring, k2)
	require.NoError(t, err)
	require.NoError(t, td.Resize(ctx, 8<<20))
	m, err := ReadMetadata(ctx, td.be, td.name)
	require.NoError(t, err)
	require.EqualValues(t, 8<<20, m.Size)
	require.Equal(t, "test/kek1/v2", m.Layers[0].WrappedKeys[0].KeyID)
	require.NoError(t, td.Close())
	d, err := Open(ctx, td.be, td.name, keyring{k2})
	require.NoError(t, err, "the rotated key alone opens the resized disk")
	require.EqualValues(t, 8<<20, d.Size())
	require.NoError(t, d.Close())
}

// A closed disk opens no chunk object again, whatever is asked of it.
func TestClosedDiskOpensNothing(t *testing.T) {
	td := newTestDisk(t, 4<<20, 1, 8)
	_, err := td.WriteAt(randBytes(BlockSize), 0)
	require.NoError(t, err)
	dst := newTestDisk(t, 4<<20, 1, 8)
	require.NoError(t, td.Close())
	_, err = td.SeekData(0)
	require.ErrorIs(t, err, ErrClosed)
	_, err = td.SeekHole(0)
	require.ErrorIs(t, err, ErrClosed)
	err = CopyChunks(context.Background(), td.Disk, dst.Disk, 0, func(int64) error { return nil })
	require.ErrorIs(t, err, ErrClosed)
	require.Zero(t, td.Stats().ChunksOpen)
}

// Ranges near the largest offset are refused, not wrapped around.
func TestRangeOverflow(t *testing.T) {
	td := newTestDisk(t, 4<<20, 1, 0)
	_, err := td.WriteAt(make([]byte, BlockSize), math.MaxInt64-10)
	require.ErrorIs(t, err, ErrRange)
	require.ErrorIs(t, td.Discard(BlockSize, math.MaxInt64), ErrRange)
	require.ErrorIs(t, td.Discard(math.MaxInt64-10, 100), ErrRange)
	var ioe *IOError
	require.False(t, errors.As(td.Discard(0, 4<<20), &ioe), "a discard of the whole disk is fine")
}
