package cache_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	hfs "hostcrypt/fs"
)

// memVolume is a volume in memory that counts the calls reaching it.
type memVolume struct {
	mu            sync.Mutex
	b             []byte
	reads, writes atomic.Int64
	syncs         atomic.Int64
	fail          atomic.Bool
}

var errVolume = errors.New("volume refuses I/O")

func (v *memVolume) ReadAt(p []byte, off int64) (int, error) {
	if v.fail.Load() {
		return 0, errVolume
	}
	v.reads.Add(1)
	v.mu.Lock()
	defer v.mu.Unlock()
	return copy(p, v.b[off:]), nil
}

func (v *memVolume) WriteAt(p []byte, off int64) (int, error) {
	if v.fail.Load() {
		return 0, errVolume
	}
	v.writes.Add(1)
	v.mu.Lock()
	defer v.mu.Unlock()
	return copy(v.b[off:], p), nil
}

func (v *memVolume) Discard(off, n int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	clear(v.b[off : off+n])
	return nil
}

func (v *memVolume) Sync() error {
	if v.fail.Load() {
		return errVolume
	}
	v.syncs.Add(1)
	return nil
}

func (v *memVolume) Size() int64 { return int64(len(v.b)) }

func (v *memVolume) bytes(off, n int64) []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	return bytes.Clone(v.b[off : off+n])
}

func openImage(t *testing.T, v cache.Volume, dir string, mode cache.Mode) *cache.ImageCache {
	t.Helper()
	ic, err := cache.NewImage(context.Background(), v, cache.Options{
		Mode: mode, Dir: dir, MaxBytes: 4 * mib, FlushInterval: time.Hour,
		SequentialCutoff: -1, SlowStorage: -1,
	})
	require.NoError(t, err)
	return ic
}

// The image cache keeps what the volume's users see: written data sits in
// the cache directory, in the clear, until it is written back.
func TestImageCacheReadWrite(t *testing.T) {
	// 2 MiB + 512: the last page is partly past the end of the volume.
	v := &memVolume{b: make([]byte, 2*mib+512)}
	dir := t.TempDir()
	ic := openImage(t, v, dir, cache.ReadWrite)
	assert.Equal(t, v.Size(), ic.Size())

	p := random(t, 64*kib)
	_, err := ic.WriteAt(p, mib+100)
	require.NoError(t, err)
	tail := random(t, 512)
	_, err = ic.WriteAt(tail, 2*mib)
	require.NoError(t, err)
	require.NoError(t, ic.Sync())
	assert.NotEqual(t, p, v.bytes(mib+100, int64(len(p))), "write-back: the volume has nothing before a flush")
	assert.Positive(t, ic.Stats().DirtyBytes)

	got := make([]byte, len(p))
	_, err = ic.ReadAt(got, mib+100)
	require.NoError(t, err)
	assert.Equal(t, p, got)

	_, err = ic.WriteAt(p, 2*mib)
	assert.Error(t, err, "a write past the end of the volume")

	require.NoError(t, ic.Close())
	assert.Equal(t, p, v.bytes(mib+100, int64(len(p))), "Close writes back")
	assert.Equal(t, tail, v.bytes(2*mib, 512))
	assert.Positive(t, v.syncs.Load())
}

func TestImageCacheReadOnlyServesRepeatedReads(t *testing.T) {
	v := &memVolume{b: random(t, 2*mib)}
	ic := openImage(t, v, t.TempDir(), cache.ReadOnly)
	defer ic.Close()
	buf := make([]byte, 4*kib)
	for range 3 {
		_, err := ic.ReadAt(buf, 8*kib)
		require.NoError(t, err)
	}
	assert.Equal(t, v.bytes(8*kib, 4*kib), buf)
	assert.Equal(t, int64(1), v.reads.Load(), "the second and third reads are hits")

	// Writes go through at once.
	p := random(t, 4*kib)
	_, err := ic.WriteAt(p, 8*kib)
	require.NoError(t, err)
	assert.Equal(t, p, v.bytes(8*kib, 4*kib))
	_, err = ic.ReadAt(buf, 8*kib)
	require.NoError(t, err)
	assert.Equal(t, p, buf, "never stale")

	require.NoError(t, ic.Discard(8*kib, 4*kib))
	_, err = ic.ReadAt(buf, 8*kib)
	require.NoError(t, err)
	assert.Equal(t, make([]byte, 4*kib), buf)
	assert.Equal(t, make([]byte, 4*kib), v.bytes(8*kib, 4*kib))
}

// A crash of the daemon leaves the synced dirty pages in the directory;
// the next NewImage writes them into the volume before it returns.
func TestImageCacheCrashRecovery(t *testing.T) {
	v := &memVolume{b: make([]byte, 2*mib)}
	dir := t.TempDir()
	crashed := openImage(t, v, dir, cache.ReadWrite)
	p := random(t, 12*kib)
	_, err := crashed.WriteAt(p, 4*kib)
	require.NoError(t, err)
	require.NoError(t, crashed.Sync())
	assert.Equal(t, make([]byte, len(p)), v.bytes(4*kib, int64(len(p))))

	// The crashed daemon's cache is never closed; a new one opens the
	// directory (the volume is now fresh memory with the same content).
	v2 := &memVolume{b: v.bytes(0, v.Size())}
	ic := openImage(t, v2, dir, cache.None)
	assert.Equal(t, p, v2.bytes(4*kib, int64(len(p))), "recovery wrote the acknowledged write back")
	require.NoError(t, ic.Close())
}

// A volume that refuses write-back (a revoked key) loses nothing: the dirty
// pages stay in the directory for the next open.
func TestImageCacheFailedWriteBackKeepsData(t *testing.T) {
	v := &memVolume{b: make([]byte, 2*mib)}
	dir := t.TempDir()
	ic := openImage(t, v, dir, cache.ReadWrite)
	p := random(t, 4*kib)
	_, err := ic.WriteAt(p, 0)
	require.NoError(t, err)
	require.NoError(t, ic.Sync())
	v.fail.Store(true)
	assert.Error(t, ic.Close())

	v.fail.Store(false)
	ic = openImage(t, v, dir, cache.ReadWrite)
	assert.Equal(t, p, v.bytes(0, 4*kib))
	require.NoError(t, ic.Close())
}

// lendingVolume lends a buffer of its own for every read, as the disk
// engine does from its read-ahead, and counts what is still lent.
type lendingVolume struct {
	memVolume
	out atomic.Int64
}

func (v *lendingVolume) ReadLent(p []byte, off int64) ([]byte, func(), error) {
	buf := v.bytes(off, int64(len(p)))
	v.out.Add(1)
	return buf, func() { v.out.Add(-1) }, nil
}

// The tree lends what an image lends.
var _ hfs.Lender = (*cache.ImageCache)(nil)

// A read that goes around the image cache (a sequential one) is answered
// with the volume's own buffer, without a copy; one that the cache must
// serve, because a dirty page lies in it, is read into p with the dirty
// page's bytes.
func TestImageCacheLendsReadsAroundIt(t *testing.T) {
	v := &lendingVolume{memVolume: memVolume{b: make([]byte, 4*mib)}}
	copy(v.b, random(t, len(v.b)))
	ic, err := cache.NewImage(t.Context(), v, cache.Options{
		Mode: cache.ReadWrite, Dir: t.TempDir(), MaxBytes: 4 * mib, FlushInterval: time.Hour, SlowStorage: -1,
	})
	require.NoError(t, err)
	defer ic.Close()

	p := make([]byte, mib)
	data, release, err := ic.ReadLent(p, 0)
	require.NoError(t, err)
	require.NotNil(t, release, "lent")
	require.Equal(t, v.bytes(0, mib), data)
	require.NotSame(t, &p[0], &data[0])
	release()
	require.Zero(t, v.out.Load())

	small := random(t, 4096)
	_, err = ic.WriteAt(small, 2*mib+8192) // random, cached, dirty
	require.NoError(t, err)
	want := v.bytes(2*mib, mib)
	copy(want[8192:], small)
	data, release, err = ic.ReadLent(p, 2*mib)
	require.NoError(t, err)
	require.Nil(t, release, "a dirty page in the range: read through the cache")
	require.Equal(t, want, data)
	require.Zero(t, v.out.Load())
}
