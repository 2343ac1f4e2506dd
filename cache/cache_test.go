package cache_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/storage"
	"hostcrypt/storage/local"
	"hostcrypt/storage/storagetest"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

func random(t testing.TB, n int) []byte {
	p := make([]byte, n)
	_, err := rand.Read(p)
	require.NoError(t, err)
	return p
}

type env struct {
	storeDir, cacheDir string
	local              *local.Backend
	remote             *storagetest.Counting
	// cutoff and slow are the cache's SequentialCutoff and SlowStorage;
	// by default -1: every I/O goes through the cache, whatever its
	// pattern and however fast the local store is.
	cutoff int64
	slow   time.Duration
	// shared is the cache's SharedStorage.
	shared bool
}

func newEnv(t testing.TB) *env {
	root := t.TempDir()
	e := &env{storeDir: filepath.Join(root, "store"), cacheDir: filepath.Join(root, "cache"), cutoff: -1, slow: -1}
	e.reopenRemote(t)
	return e
}

func (e *env) reopenRemote(t testing.TB) {
	l, err := local.Open(e.storeDir)
	require.NoError(t, err)
	e.local = l
	e.remote = &storagetest.Counting{Backend: l}
}

func (e *env) open(t testing.TB, mode cache.Mode, max int64) *cache.Cache {
	c, err := cache.New(context.Background(), e.remote, cache.Options{
		Mode: mode, Dir: e.cacheDir, MaxBytes: max, FlushInterval: time.Hour,
		SequentialCutoff: e.cutoff, SlowStorage: e.slow, SharedStorage: e.shared,
	})
	require.NoError(t, err)
	return c
}

// remoteBytes reads n bytes at off of key straight from the local store.
func (e *env) remoteBytes(t testing.TB, key string, off int64, n int) []byte {
	l, err := local.Open(e.storeDir) // the cache may have closed e.local
	require.NoError(t, err)
	c, err := l.OpenChunk(context.Background(), key, false)
	require.NoError(t, err)
	defer c.Close()
	p := make([]byte, n)
	_, err = c.ReadAt(p, off)
	require.NoError(t, err)
	return p
}

func readAt(t testing.TB, c storage.Chunk, off int64, n int) []byte {
	p := make([]byte, n)
	m, err := c.ReadAt(p, off)
	require.NoError(t, err)
	require.Equal(t, n, m)
	return p
}

func writeAt(t testing.TB, c storage.Chunk, p []byte, off int64) {
	n, err := c.WriteAt(p, off)
	require.NoError(t, err)
	require.Equal(t, len(p), n)
}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		mode     cache.Mode
		max      int64
		adaptive bool // the default policy: a local store is fast, so most I/O goes around
	}{
		{cache.None, 0, false},
		{cache.ReadOnly, 64 * mib, false},
		{cache.ReadWrite, 64 * mib, false},
		// Smaller than the suite's data: evictions and write-back under way.
		{cache.ReadOnly, cache.MinBytes, false},
		{cache.ReadWrite, cache.MinBytes, false},
		{cache.ReadOnly, cache.MinBytes, true},
		{cache.ReadWrite, cache.MinBytes, true},
	} {
		name := string(tc.mode) + "-" + byteSize(tc.max)
		if tc.adaptive {
			name += "-adaptive"
		}
		t.Run(name, func(t *testing.T) {
			var envs sync.Map // *cache.Cache -> *env
			open := func(t *testing.T) storage.Backend {
				e := newEnv(t)
				if tc.adaptive {
					e.cutoff, e.slow = 0, 0
				}
				c := e.open(t, tc.mode, tc.max)
				envs.Store(c, e)
				return c
			}
			storagetest.Run(t, open, storagetest.Options{
				Reopen: func(t *testing.T, b storage.Backend) storage.Backend {
					v, _ := envs.Load(b)
					e := v.(*env)
					e.reopenRemote(t)
					return e.open(t, tc.mode, tc.max)
				},
			})
		})
	}
}

func byteSize(n int64) string { return fmt.Sprintf("%dMiB", n/mib) }

func TestParseMode(t *testing.T) {
	for in, want := range map[string]cache.Mode{"None": cache.None, "readonly": cache.ReadOnly, "READWRITE": cache.ReadWrite} {
		m, err := cache.ParseMode(in)
		require.NoError(t, err)
		require.Equal(t, want, m)
	}
	_, err := cache.ParseMode("WriteBack")
	require.ErrorContains(t, err, `unknown cache mode "WriteBack"`)
	require.ErrorContains(t, err, "None, ReadOnly or ReadWrite")
}

func TestBadInput(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	_, err := cache.New(ctx, e.remote, cache.Options{Mode: "Sometimes", Dir: e.cacheDir, MaxBytes: 64 * mib})
	require.ErrorContains(t, err, "unknown cache mode")
	_, err = cache.New(ctx, e.remote, cache.Options{Mode: cache.ReadWrite, Dir: e.cacheDir, MaxBytes: 4096})
	require.ErrorContains(t, err, "too small")
	require.ErrorContains(t, err, "minimum is 1048576 bytes")
	_, err = cache.New(ctx, e.remote, cache.Options{Mode: cache.ReadOnly, MaxBytes: 64 * mib})
	require.ErrorContains(t, err, "cache directory not set")
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	_, err = cache.New(ctx, e.remote, cache.Options{Mode: cache.ReadWrite, Dir: file, MaxBytes: 64 * mib})
	require.ErrorContains(t, err, "not a directory")
	_, err = cache.New(ctx, e.remote, cache.Options{Mode: cache.ReadWrite, Dir: e.cacheDir, MaxBytes: 64 * mib, FlushInterval: -1})
	require.ErrorContains(t, err, "negative")
}

func TestNoneIsTheRemote(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.None, 0)
	defer c.Close()
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	defer ch.Close()
	direct, err := e.remote.OpenChunk(t.Context(), "k", false)
	require.NoError(t, err)
	defer direct.Close()
	require.IsType(t, direct, ch, "None hands out the remote's chunk")
}

func TestDirPermissions(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, cache.MinBytes)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	writeAt(t, ch, []byte("x"), 0)
	require.NoError(t, ch.Sync())
	fi, err := os.Stat(e.cacheDir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	for _, name := range []string{"data", "dirty.idx"} {
		fi, err := os.Stat(filepath.Join(e.cacheDir, name))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), name)
	}
	require.NoError(t, c.Close())
}

func TestReadOnlyServesRepeatedReads(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadOnly, 16*mib)
	defer c.Close()
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	data := random(t, 1*mib)
	writeAt(t, ch, data, 0)
	// Slot-sized, unaligned reads, like the engine's.
	for _, off := range []int64{0, 4136, 8272, 500000, 1*mib - 4136} {
		first := readAt(t, ch, off, 4136)
		require.Equal(t, data[off:off+4136], first)
		before := e.remote.Reads.Load()
		again := readAt(t, ch, off, 4136)
		require.Equal(t, first, again)
		require.Equal(t, before, e.remote.Reads.Load(), "a second read at %d must not reach the remote", off)
	}
	s := c.Stats()
	require.Positive(t, s.Hits)
	require.Positive(t, s.Misses)
	require.Zero(t, s.DirtyBytes)
}

func TestReadOnlyWritesAreNeverStale(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadOnly, 16*mib)
	defer c.Close()
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	model := random(t, 256*kib)
	writeAt(t, ch, model, 0)
	readAt(t, ch, 0, len(model)) // warm
	for range 200 {
		off := mrand.IntN(len(model) - 5000)
		p := random(t, 1+mrand.IntN(5000))
		writeAt(t, ch, p, int64(off))
		copy(model[off:], p)
		require.Equal(t, p, e.remoteBytes(t, "k", int64(off), len(p)), "written through")
	}
	before := e.remote.Reads.Load()
	require.Equal(t, model, readAt(t, ch, 0, len(model)))
	require.Equal(t, before, e.remote.Reads.Load(), "served from updated cached pages")
}

func TestReadWriteIsWriteBack(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, 16*mib)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	data := random(t, 256*kib)
	writes := e.remote.Writes.Load()
	writeAt(t, ch, data, 4*kib)
	require.NoError(t, ch.Sync())
	require.Equal(t, writes, e.remote.Writes.Load(), "nothing reaches the remote before a flush")
	require.Equal(t, make([]byte, len(data)), e.remoteBytes(t, "k", 4*kib, len(data)))
	require.Equal(t, data, readAt(t, ch, 4*kib, len(data)), "served from the cache")
	require.Equal(t, int64(len(data)), c.Stats().DirtyBytes)

	require.NoError(t, c.Flush(t.Context()))
	require.Equal(t, data, e.remoteBytes(t, "k", 4*kib, len(data)), "flushed")
	s := c.Stats()
	require.Zero(t, s.DirtyBytes)
	require.EqualValues(t, 1, s.Flushes)
	require.EqualValues(t, len(data), s.WrittenBackBytes)
	require.Positive(t, s.WriteBackTime, "the write-back round is timed")
	_, err = os.Stat(filepath.Join(e.cacheDir, "dirty.idx"))
	require.ErrorIs(t, err, os.ErrNotExist, "nothing dirty, no index")

	// Close flushes too.
	more := random(t, 10000)
	writeAt(t, ch, more, 123457)
	require.NoError(t, ch.Close())
	_, err = ch.ReadAt(make([]byte, 1), 0)
	require.Error(t, err, "a closed handle")
	require.NoError(t, c.Close())
	require.Equal(t, more, e.remoteBytes(t, "k", 123457, len(more)))
	_, err = os.Stat(filepath.Join(e.cacheDir, "data"))
	require.ErrorIs(t, err, os.ErrNotExist, "a clean Close leaves no cached data behind")
}

func TestBackgroundFlush(t *testing.T) {
	e := newEnv(t)
	c, err := cache.New(t.Context(), e.remote, cache.Options{
		Mode: cache.ReadWrite, Dir: e.cacheDir, MaxBytes: cache.MinBytes, FlushInterval: 20 * time.Millisecond,
		SlowStorage: -1,
	})
	require.NoError(t, err)
	defer c.Close()
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	data := random(t, 3*PageSize)
	writeAt(t, ch, data, 100)
	require.Eventually(t, func() bool {
		return bytes.Equal(data, e.remoteBytes(t, "k", 100, len(data)))
	}, 5*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { return c.Stats().DirtyBytes == 0 }, 5*time.Second, 10*time.Millisecond)
}

const PageSize = cache.PageSize

// TestCrashRecovery drops a Cache without closing it, as kill -9 would,
// and opens a new one on the same directory.
func TestCrashRecovery(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, 4*mib)
	ch, err := c.OpenChunk(t.Context(), "d/chunks/0", true)
	require.NoError(t, err)
	ch2, err := c.OpenChunk(t.Context(), "d/chunks/1", true)
	require.NoError(t, err)

	synced := random(t, 64*kib)
	writeAt(t, ch, synced, 4136)
	writeAt(t, ch2, synced[:5000], 77)
	require.NoError(t, ch.Sync())
	// After the sync: one page written again (newer, not synced), and
	// pages written only here (may be lost).
	later := random(t, 100)
	writeAt(t, ch, later, 4136+10)
	unsynced := random(t, 8*kib)
	writeAt(t, ch, unsynced, 1*mib)
	require.Equal(t, make([]byte, len(synced)), e.remoteBytes(t, "d/chunks/0", 4136, len(synced)), "nothing flushed yet")
	// c is abandoned here: no Close, no Flush.

	e.reopenRemote(t)
	c2 := e.open(t, cache.ReadWrite, 4*mib)
	defer c2.Close()
	// Recovery wrote the synced data back before New returned.
	got := e.remoteBytes(t, "d/chunks/0", 4136, len(synced))
	require.Equal(t, synced[:10], got[:10])
	require.Equal(t, synced[110:], got[110:])
	mid := got[10:110]
	require.True(t, bytes.Equal(mid, synced[10:110]) || bytes.Equal(mid, later), "the newer write is whole or absent")
	require.Equal(t, synced[:5000], e.remoteBytes(t, "d/chunks/1", 77, 5000))
	u := e.remoteBytes(t, "d/chunks/0", 1*mib, len(unsynced))
	for i := 0; i < len(u); i += PageSize {
		pg := u[i : i+PageSize]
		require.True(t, bytes.Equal(pg, unsynced[i:i+PageSize]) || bytes.Equal(pg, make([]byte, PageSize)),
			"an unsynced page is lost or whole, never another page's bytes")
	}
	require.Zero(t, c2.Stats().CachedBytes, "a recovered cache starts empty")
	r, err := c2.OpenChunk(t.Context(), "d/chunks/0", false)
	require.NoError(t, err)
	require.Equal(t, got, readAt(t, r, 4136, len(synced)))
	_, err = os.Stat(filepath.Join(e.cacheDir, "dirty.idx"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestCrashAfterFlushAndReuse checks that a slot named by the committed
// index is not handed to another page before the next commit: after a
// crash, no page is written back with another page's bytes.
func TestCrashAfterFlushAndReuse(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, cache.MinBytes)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	a := random(t, 128*PageSize)
	writeAt(t, ch, a, 0)
	require.NoError(t, ch.Sync())
	// Fill the cache with other pages many times over, without syncing.
	for i := range 8 {
		writeAt(t, ch, random(t, 128*PageSize), int64(1+i)*mib)
	}
	e.reopenRemote(t)
	c2 := e.open(t, cache.ReadWrite, cache.MinBytes)
	defer c2.Close()
	require.Equal(t, a, e.remoteBytes(t, "k", 0, len(a)))
}

func TestCorruptIndexIsAClearError(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, cache.MinBytes)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	writeAt(t, ch, []byte("x"), 0)
	require.NoError(t, ch.Sync())
	idx := filepath.Join(e.cacheDir, "dirty.idx")
	b, err := os.ReadFile(idx)
	require.NoError(t, err)
	b[len(b)-1] ^= 1
	require.NoError(t, os.WriteFile(idx, b, 0o600))
	_, err = cache.New(t.Context(), e.remote, cache.Options{Mode: cache.ReadWrite, Dir: e.cacheDir, MaxBytes: cache.MinBytes})
	require.ErrorContains(t, err, "damaged dirty-page index")
	require.ErrorContains(t, err, "move the directory away")
}

func TestBoundedUnderRandomReads(t *testing.T) {
	e := newEnv(t)
	const max = 2 * mib
	c := e.open(t, cache.ReadOnly, max)
	defer c.Close()
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	data := random(t, 8*mib)
	writeAt(t, ch, data, 0)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				off := mrand.Int64N(int64(len(data)) - 4136)
				p := make([]byte, 4136)
				_, err := ch.ReadAt(p, off)
				assert.NoError(t, err)
				assert.Equal(t, data[off:off+4136], p)
				assert.LessOrEqual(t, c.Stats().CachedBytes, int64(max))
			}
		})
	}
	wg.Wait()
	s := c.Stats()
	require.LessOrEqual(t, s.CachedBytes, int64(max))
	require.Positive(t, s.Evictions)
	fi, err := os.Stat(filepath.Join(e.cacheDir, "data"))
	require.NoError(t, err)
	require.LessOrEqual(t, fi.Size(), int64(max))
}

func TestDirtyEviction(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, cache.MinBytes)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	data := random(t, 4*cache.MinBytes)
	// Unaligned slot-sized writes, several goroutines, four times the cache.
	const slot = 4136
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for off := w * slot; off+slot <= len(data); off += 4 * slot {
				_, err := ch.WriteAt(data[off:off+slot], int64(off))
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	s := c.Stats()
	require.LessOrEqual(t, s.CachedBytes, int64(cache.MinBytes))
	require.Positive(t, s.Flushes, "dirty pages were written back to make room")
	end := len(data) / slot * slot
	require.Equal(t, data[:end], readAt(t, ch, 0, end))
	require.NoError(t, c.Close())
	require.Equal(t, data[:end], e.remoteBytes(t, "k", 0, end))
}

func TestPunchHoleDropsDirtyPages(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, 16*mib)
	defer c.Close()
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	data := random(t, 64*kib)
	writeAt(t, ch, data, 0)
	require.NoError(t, c.Flush(t.Context()))
	more := random(t, 64*kib)
	writeAt(t, ch, more, 0) // dirty again
	require.NoError(t, ch.PunchHole(1000, 40000))
	want := bytes.Clone(more)
	clear(want[1000:41000])
	require.Equal(t, want, readAt(t, ch, 0, len(want)))
	require.NoError(t, c.Flush(t.Context()))
	require.Equal(t, want, e.remoteBytes(t, "k", 0, len(want)))
}

func TestDeleteDropsPages(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, 16*mib)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	writeAt(t, ch, random(t, 64*kib), 0)
	require.NoError(t, ch.Sync())
	require.NoError(t, ch.Close())
	require.NoError(t, c.Delete(t.Context(), "k"))
	s := c.Stats()
	require.Zero(t, s.CachedBytes)
	require.Zero(t, s.DirtyBytes)
	// A crash now must not bring the object back.
	e.reopenRemote(t)
	c2 := e.open(t, cache.ReadWrite, 16*mib)
	defer c2.Close()
	keys, err := c2.List(t.Context(), "")
	require.NoError(t, err)
	require.Empty(t, keys)
}

// TestConcurrentModel runs random reads and writes of slot-sized records
// from many goroutines, each on its own records, in both modes, with a
// cache smaller than the data.
//
// In the mixed runs, two adjacent records written or read one after the
// other make a stream that reaches the sequential cut-off: I/O goes
// through the cache and around it on the same pages.
func TestConcurrentModel(t *testing.T) {
	for _, mode := range []cache.Mode{cache.ReadOnly, cache.ReadWrite} {
		for _, mixed := range []bool{false, true} {
			name := string(mode)
			if mixed {
				name += "-mixed"
			}
			t.Run(name, func(t *testing.T) { concurrentModel(t, mode, mixed) })
		}
	}
}

func concurrentModel(t *testing.T, mode cache.Mode, mixed bool) {
	e := newEnv(t)
	if mixed {
		e.cutoff = 8 * kib
	}
	c := e.open(t, mode, cache.MinBytes)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	const (
		workers = 16
		records = 64 // per worker
		rs      = 4136
	)
	model := make([]byte, workers*records*rs)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(uint64(w), 1))
			for range 300 {
				i := r.IntN(records)*workers + w
				off := int64(i * rs)
				if r.IntN(3) == 0 {
					p := make([]byte, rs)
					for j := range p {
						p[j] = byte(r.Uint32())
					}
					_, err := ch.WriteAt(p, off)
					assert.NoError(t, err)
					copy(model[off:], p)
				} else {
					p := make([]byte, rs)
					_, err := ch.ReadAt(p, off)
					assert.NoError(t, err)
					assert.True(t, bytes.Equal(model[off:off+rs], p), "record %d", i)
				}
				if r.IntN(50) == 0 {
					assert.NoError(t, ch.Sync())
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, model, readAt(t, ch, 0, len(model)))
	require.NoError(t, c.Close())
	require.Equal(t, model, e.remoteBytes(t, "k", 0, len(model)))
	if mixed {
		require.Positive(t, c.Stats().Bypassed)
	}
}

// TestPrefetchReachesTheRemote: a cached chunk passes the engine's prefetch
// hints on to a remote that takes them, in every mode, and data read after
// one is what was written.
func TestPrefetchReachesTheRemote(t *testing.T) {
	for _, mode := range []cache.Mode{cache.None, cache.ReadOnly, cache.ReadWrite} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			e := newEnv(t)
			c := e.open(t, mode, 64*mib)
			defer c.Close()
			ctx := context.Background()
			ch, err := c.OpenChunk(ctx, "c/1", true)
			require.NoError(t, err)
			defer ch.Close()
			want := random(t, 64*kib)
			_, err = ch.WriteAt(want, 0)
			require.NoError(t, err)
			pf, ok := ch.(storage.Prefetcher)
			require.True(t, ok, "a chunk of a cache in mode %v takes prefetch hints", mode)
			require.True(t, pf.Prefetch(0, 32*kib), "the remote (a local directory) took the hint")
			require.Equal(t, int64(1), e.remote.Prefetches.Load())
			got := make([]byte, len(want))
			_, err = ch.ReadAt(got, 0)
			require.NoError(t, err)
			require.Equal(t, want, got)
		})
	}
}
