package volume

import (
	"errors"
	goio "io"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	hfs "hostcrypt/fs"
)

// countingIO is an IO that counts; its own lock is fine for a test.
type countingIO struct {
	mu                             sync.Mutex
	reads, writes, flushes, discs  int
	readBytes, writeBytes, discBts int64
	failed                         int
	took                           time.Duration
	closed                         atomic.Int32
}

func (c *countingIO) add(n *int, bytes *int64, b int64, took time.Duration, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	*n++
	if bytes != nil {
		*bytes += b
	}
	if err != nil {
		c.failed++
	}
	c.took += took
}

func (c *countingIO) Read(n int, took time.Duration, err error) {
	c.add(&c.reads, &c.readBytes, int64(n), took, err)
}
func (c *countingIO) Write(n int, took time.Duration, err error) {
	c.add(&c.writes, &c.writeBytes, int64(n), took, err)
}
func (c *countingIO) Flush(took time.Duration, err error) { c.add(&c.flushes, nil, 0, took, err) }
func (c *countingIO) Discard(n int64, took time.Duration, err error) {
	c.add(&c.discs, &c.discBts, n, took, err)
}
func (c *countingIO) Closed() { c.closed.Add(1) }

type recorder struct {
	opened []*Volume
	io     *countingIO
}

func (r *recorder) Opened(v *Volume) IO {
	r.opened = append(r.opened, v)
	return r.io
}

func TestObserver(t *testing.T) {
	for _, mode := range []cache.Mode{cache.None, cache.ReadWrite} {
		t.Run(string(mode), func(t *testing.T) {
			f := newFixture(t)
			rec := &recorder{io: &countingIO{}}
			c := f.config(mode, false)
			c.VM, c.Observer = "vm1", rec
			v, err := Open(bg, c)
			require.NoError(t, err)
			require.Equal(t, []*Volume{v}, rec.opened)
			require.Equal(t, "vm1", v.VM())
			require.Equal(t, "d1", v.Name())

			img := v.Image()
			// The image keeps the optional interfaces the tree looks for.
			_, lender := img.(hfs.Lender)
			require.True(t, lender)
			_, zeroer := img.(hfs.Zeroer)
			require.True(t, zeroer)
			_, seeker := img.(hfs.Seeker)
			require.Equal(t, mode == cache.None, seeker, "a Seeker only over an image that is one (the engine; not the plaintext cache)")

			p := pattern(8192)
			_, err = img.WriteAt(p, 4096)
			require.NoError(t, err)
			_, err = img.ReadAt(make([]byte, 4096), 4096)
			require.NoError(t, err)
			data, release, err := img.(hfs.Lender).ReadLent(make([]byte, 8192), 4096)
			require.NoError(t, err)
			require.Equal(t, p, data)
			if release != nil {
				release()
			}
			require.NoError(t, img.Sync())
			require.NoError(t, img.Discard(0, 4096))
			require.NoError(t, img.(hfs.Zeroer).ZeroRange(65536, 4096))
			// A read across the end (the tree never asks for one): the
			// engine reads up to the end and says EOF, which is no
			// failure; the plaintext cache refuses it, which is one.
			atEnd, err := img.ReadAt(make([]byte, 8192), img.Size()-4096)
			wantFailed := 1
			if mode == cache.None {
				require.ErrorIs(t, err, goio.EOF)
				wantFailed = 0
			} else {
				require.Error(t, err)
			}

			// What the console reads is not the guest's I/O.
			got := make([]byte, 8192)
			_, err = v.ReadGuest(bg, got, 4096)
			require.NoError(t, err)
			require.Equal(t, p, got)

			io := rec.io
			io.mu.Lock()
			require.Equal(t, 3, io.reads)
			require.Equal(t, int64(4096+8192+atEnd), io.readBytes)
			require.Equal(t, 1, io.writes)
			require.Equal(t, int64(8192), io.writeBytes)
			require.Equal(t, 1, io.flushes)
			require.Equal(t, 2, io.discs)
			require.Equal(t, int64(8192), io.discBts)
			require.Equal(t, wantFailed, io.failed)
			require.Positive(t, io.took)
			io.mu.Unlock()

			_, err = v.Close()
			require.NoError(t, err)
			_, err = v.Close()
			require.NoError(t, err)
			require.EqualValues(t, 1, io.closed.Load(), "Closed once")
		})
	}
}

// A failed write is observed as a failure.
func TestObserverCountsFailures(t *testing.T) {
	f := newFixture(t)
	rec := &recorder{io: &countingIO{}}
	c := f.config(cache.None, false)
	c.Observer = rec
	v, err := Open(bg, c)
	require.NoError(t, err)
	defer v.Close()
	v.SetLease(time.Now().Add(-time.Second)) // the lease has run out: I/O fails with EIO
	_, err = v.Image().WriteAt(pattern(4096), 0)
	require.True(t, errors.Is(err, syscall.EIO), "got %v", err)
	require.Equal(t, 1, rec.io.failed)
}

func TestInspectBlockOfVolume(t *testing.T) {
	f := newFixture(t)
	v, err := Open(bg, f.config(cache.None, true))
	require.NoError(t, err)
	p := pattern(4096)
	_, err = v.Image().WriteAt(p, 8192)
	require.NoError(t, err)
	b, err := v.InspectBlock(bg, 8192)
	require.NoError(t, err)
	require.True(t, b.Written)
	require.Len(t, b.Layers, 1)
	require.NotEqual(t, p, b.Layers[0].Ciphertext)
	_, err = v.Close()
	require.NoError(t, err)
	_, err = v.InspectBlock(bg, 8192)
	require.ErrorIs(t, err, ErrClosing, "a closed volume is not read")
}

// nopIO is an observer that does nothing, to measure the decorator alone.
type nopIO struct{}

func (nopIO) Read(int, time.Duration, error)      {}
func (nopIO) Write(int, time.Duration, error)     {}
func (nopIO) Flush(time.Duration, error)          {}
func (nopIO) Discard(int64, time.Duration, error) {}
func (nopIO) Closed()                             {}

type nopObserver struct{}

func (nopObserver) Opened(*Volume) IO { return nopIO{} }

// The decorator costs no allocation per I/O (see also package observe's
// benchmark, with the real metrics).
func TestObservedIOAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	f := newFixture(t)
	c := f.config(cache.None, false)
	c.Observer = nopObserver{}
	v, err := Open(bg, c)
	require.NoError(t, err)
	defer v.Close()
	img, p := v.Image(), pattern(4096)
	// Warm the engine's pools and chunk state first.
	for i := 0; i < 10; i++ {
		_, err = img.WriteAt(p, 4096)
		require.NoError(t, err)
		_, err = img.ReadAt(p, 4096)
		require.NoError(t, err)
	}
	allocs := testing.AllocsPerRun(200, func() {
		img.WriteAt(p, 4096)
		img.ReadAt(p, 4096)
	})
	require.Zero(t, allocs)
}
