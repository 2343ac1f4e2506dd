package fs

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fakeImage is an in-memory Image for the mounted tests. It records what
// the tree asked of it, can be told to fail reads with EIO, and flags any
// call made after the test declared it off limits.
type fakeImage struct {
	t *testing.T

	mu   sync.RWMutex
	data []byte

	delay      time.Duration // added to each WriteAt, to make overlap visible
	failReads  atomic.Bool
	offLimits  atomic.Bool
	inflight   atomic.Int64
	maxWrites  atomic.Int64 // most WriteAt calls seen in flight at once
	writes     atomic.Int64
	syncs      atomic.Int64
	discardsMu sync.Mutex
	discards   [][2]int64
}

func newFake(t *testing.T, size int64) *fakeImage {
	return &fakeImage{t: t, data: make([]byte, size)}
}

func (f *fakeImage) check(op string) {
	if f.offLimits.Load() {
		f.t.Errorf("%s called on an image after RemoveImage returned", op)
	}
}

func (f *fakeImage) ReadAt(p []byte, off int64) (int, error) {
	f.check("ReadAt")
	if f.failReads.Load() {
		return 0, fmt.Errorf("fake: block %d: authentication failed: %w", off/4096, syscall.EIO)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if off >= int64(len(f.data)) {
		return 0, nil
	}
	return copy(p, f.data[off:]), nil
}

func (f *fakeImage) WriteAt(p []byte, off int64) (int, error) {
	f.check("WriteAt")
	n := f.inflight.Add(1)
	defer f.inflight.Add(-1)
	for {
		m := f.maxWrites.Load()
		if n <= m || f.maxWrites.CompareAndSwap(m, n) {
			break
		}
	}
	f.writes.Add(1)
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if off+int64(len(p)) > int64(len(f.data)) {
		return 0, fmt.Errorf("fake: write past the end: %w", syscall.EINVAL)
	}
	return copy(f.data[off:], p), nil
}

func (f *fakeImage) Discard(off, n int64) error {
	f.check("Discard")
	f.discardsMu.Lock()
	f.discards = append(f.discards, [2]int64{off, n})
	f.discardsMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.data[off : off+n])
	return nil
}

func (f *fakeImage) Sync() error {
	f.check("Sync")
	f.syncs.Add(1)
	return nil
}

func (f *fakeImage) Size() int64 {
	f.check("Size")
	f.mu.RLock()
	defer f.mu.RUnlock()
	return int64(len(f.data))
}

// resize grows or shrinks the fake, as `disk update --size` would.
func (f *fakeImage) resize(size int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := make([]byte, size)
	copy(d, f.data)
	f.data = d
}

func (f *fakeImage) bytes(off, n int64) []byte {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return bytes.Clone(f.data[off : off+n])
}

func (f *fakeImage) fill(off int64, p []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	copy(f.data[off:], p)
}

func (f *fakeImage) discarded() [][2]int64 {
	f.discardsMu.Lock()
	defer f.discardsMu.Unlock()
	return append([][2]int64(nil), f.discards...)
}

// sparseFake adds Seeker and Zeroer: a 4 KiB block is data when any byte of
// it is non-zero.
type sparseFake struct {
	*fakeImage
	zeroes atomic.Int64
}

func (s *sparseFake) blockHasData(b int64) bool {
	end := min((b+1)*4096, int64(len(s.data)))
	return bytes.ContainsFunc(s.data[b*4096:end], func(r rune) bool { return r != 0 })
}

func (s *sparseFake) SeekData(off int64) (int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for b := off / 4096; b*4096 < int64(len(s.data)); b++ {
		if s.blockHasData(b) {
			return max(off, b*4096), nil
		}
	}
	return 0, syscall.ENXIO
}

func (s *sparseFake) SeekHole(off int64) (int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for b := off / 4096; b*4096 < int64(len(s.data)); b++ {
		if !s.blockHasData(b) {
			return max(off, b*4096), nil
		}
	}
	return int64(len(s.data)), nil
}

func (s *sparseFake) ZeroRange(off, n int64) error {
	s.check("ZeroRange")
	s.zeroes.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.data[off : off+n])
	return nil
}
