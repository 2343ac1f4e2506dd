package cache_test

import (
	"bytes"
	"context"
	"errors"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/storage"
)

// TestReadOnlyOverlappingWrites races write-throughs on the same pages;
// afterwards the cache must agree with the remote, whichever write won.
func TestReadOnlyOverlappingWrites(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadOnly, cache.MinBytes)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	const region = 64 * kib
	writeAt(t, ch, make([]byte, region), 0)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(uint64(w), 2))
			for range 300 {
				off := r.Int64N(region - 6000)
				p := bytes.Repeat([]byte{byte(w + 1)}, 1+r.IntN(6000))
				if r.IntN(2) == 0 {
					_, err := ch.WriteAt(p, off)
					assert.NoError(t, err)
				} else {
					_, err := ch.ReadAt(p, off)
					assert.NoError(t, err)
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, e.remoteBytes(t, "k", 0, region), readAt(t, ch, 0, region), "the cache agrees with the remote")
	require.NoError(t, c.Close())
}

// record is what the crash test writes: records of the engine's slot size,
// each owned by one writer, in versions whose bytes can be told apart.
func record(i, v int) []byte {
	p := make([]byte, 4136)
	if v == 0 {
		return p
	}
	r := mrand.New(mrand.NewPCG(uint64(i), uint64(v)))
	for j := range p {
		p[j] = byte(r.Uint32())
	}
	return p
}

// TestCrashUnderLoad writes, syncs, flushes and evicts from many
// goroutines with a cache smaller than the data, then drops the cache
// without closing it. After recovery every record must hold, page by page,
// the version its last acknowledged Sync covered or a later one: never an
// older version and never another record's bytes.
//
// In the mixed run, two adjacent records written one after the other make
// a stream that reaches the sequential cut-off: writes go into the cache
// and around it on the same pages.
//
// On shared storage the host is lost with its cache: the cache directory
// is removed instead of recovered, and every record must still hold what
// its last acknowledged Sync covered, from the remote alone.
func TestCrashUnderLoad(t *testing.T) {
	for _, shared := range []bool{false, true} {
		for _, mixed := range []bool{false, true} {
			name := "cached"
			if mixed {
				name = "mixed"
			}
			if shared {
				name = "shared-" + name
			}
			t.Run(name, func(t *testing.T) { crashUnderLoad(t, mixed, shared) })
		}
	}
}

func crashUnderLoad(t *testing.T, mixed, shared bool) {
	const (
		workers = 8
		records = 400 // 1.6 MiB of records in a 1 MiB cache
		base    = 8192
		rs      = 4136
	)
	e := newEnv(t)
	if mixed {
		e.cutoff = 8 * kib
	}
	e.shared = shared
	c := e.open(t, cache.ReadWrite, cache.MinBytes)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	written := make([]int, records) // versions written
	acked := make([]int, records)   // versions a Sync acknowledged
	punched := make([][]int, records)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(uint64(w), 3))
			for range 400 {
				i := r.IntN(records/workers)*workers + w
				written[i]++
				_, err := ch.WriteAt(record(i, written[i]), int64(base+i*rs))
				assert.NoError(t, err)
				switch r.IntN(40) {
				case 0:
					assert.NoError(t, ch.Sync())
					for j := w; j < records; j += workers {
						acked[j] = written[j]
					}
				case 1:
					assert.NoError(t, c.Flush(t.Context()))
				case 2:
					// Discard a record, as the engine punches a discarded slot.
					assert.NoError(t, ch.PunchHole(int64(base+i*rs), rs))
					written[i]++ // version written[i] is zeros
					punched[i] = append(punched[i], written[i])
				}
			}
		})
	}
	wg.Wait()
	require.Positive(t, c.Stats().Evictions+c.Stats().Flushes)
	if mixed {
		require.Positive(t, c.Stats().Bypassed)
	}
	// A last acknowledged round, which no write after it pushes out of
	// the cache.
	for i := range 16 {
		written[i]++
		writeAt(t, ch, record(i, written[i]), int64(base+i*rs))
	}
	require.NoError(t, ch.Sync())
	for i := range 16 {
		acked[i] = written[i]
	}
	// Abandon c: no Close, no Flush.

	if shared {
		// The host is gone, and its cache with it.
		require.NoError(t, os.RemoveAll(e.cacheDir))
	} else {
		e.reopenRemote(t)
		c2 := e.open(t, cache.ReadWrite, cache.MinBytes)
		defer c2.Close()
	}
	got := e.remoteBytes(t, "k", base, records*rs)
	for i := range records {
		rec := got[i*rs : (i+1)*rs]
		// Page by page: a crash may leave a later write applied in part.
		start := int64(base + i*rs)
		for lo := int64(0); lo < rs; {
			hi := min(int64(rs), (start+lo)/cache.PageSize*cache.PageSize+cache.PageSize-start)
			ok := false
			for v := acked[i]; v <= written[i] && !ok; v++ {
				want := record(i, v)
				if isPunched(punched[i], v) {
					want = make([]byte, rs)
				}
				ok = bytes.Equal(rec[lo:hi], want[lo:hi])
			}
			require.True(t, ok, "record %d bytes %d-%d: not version %d..%d", i, lo, hi, acked[i], written[i])
			lo = hi
		}
	}
}

func isPunched(vs []int, v int) bool {
	for _, p := range vs {
		if p == v {
			return true
		}
	}
	return false
}

// TestPinnedSlotAfterPunch: a page named by the committed index and then
// punched must keep its slot until the next commit; given to a new page
// at once, recovery would write that page's bytes where the punched one was.
func TestPinnedSlotAfterPunch(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, cache.MinBytes)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	a := random(t, cache.PageSize)
	writeAt(t, ch, a, 0)
	require.NoError(t, ch.Sync())
	require.NoError(t, ch.PunchHole(0, cache.PageSize))
	writeAt(t, ch, random(t, cache.PageSize), 10*cache.PageSize) // not synced
	// Crash.
	e.reopenRemote(t)
	c2 := e.open(t, cache.ReadWrite, cache.MinBytes)
	defer c2.Close()
	got := e.remoteBytes(t, "k", 0, cache.PageSize)
	require.True(t, bytes.Equal(got, a) || bytes.Equal(got, make([]byte, cache.PageSize)),
		"the punched page is its synced version or zeros, never another page's bytes")
}

// TestSyncWithNothingNewIsFree: the engine syncs every chunk it wrote, one
// after another; only the first of those commits the index.
func TestSyncWithNothingNewIsFree(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, cache.MinBytes)
	defer c.Close()
	a, err := c.OpenChunk(t.Context(), "a", true)
	require.NoError(t, err)
	b, err := c.OpenChunk(t.Context(), "b", true)
	require.NoError(t, err)
	writeAt(t, a, []byte("a"), 0)
	writeAt(t, b, []byte("b"), 0)
	require.NoError(t, a.Sync())
	idx := filepath.Join(e.cacheDir, "dirty.idx")
	before, err := os.Stat(idx)
	require.NoError(t, err)
	require.NoError(t, b.Sync())
	require.NoError(t, a.Sync())
	after, err := os.Stat(idx)
	require.NoError(t, err)
	require.True(t, os.SameFile(before, after), "the index was not rewritten")
	writeAt(t, b, []byte("B"), 0)
	require.NoError(t, b.Sync())
	after, err = os.Stat(idx)
	require.NoError(t, err)
	require.False(t, os.SameFile(before, after), "a new write is committed")
}

// TestFirstWriteFetchesEdgesOnce: a slot-sized write over pages not cached
// fills its two partial pages with one remote read, and a write covering
// whole pages reads nothing.
func TestFirstWriteFetchesEdgesOnce(t *testing.T) {
	e := newEnv(t)
	c := e.open(t, cache.ReadWrite, cache.MinBytes)
	defer c.Close()
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	before := e.remote.Reads.Load()
	p := random(t, 4136)
	writeAt(t, ch, p, 8192+4136)
	require.Equal(t, before+1, e.remote.Reads.Load())
	writeAt(t, ch, random(t, 3*cache.PageSize), 64*kib)
	require.Equal(t, before+1, e.remote.Reads.Load())
	require.Equal(t, p, readAt(t, ch, 8192+4136, len(p)))
}

// TestRecoveryWhateverTheNewMode: a disk whose ReadWrite cache crashed may
// come back with another mode; its synced writes are recovered all the same.
func TestRecoveryWhateverTheNewMode(t *testing.T) {
	for _, mode := range []cache.Mode{cache.None, cache.ReadOnly} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t)
			c := e.open(t, cache.ReadWrite, cache.MinBytes)
			ch, err := c.OpenChunk(t.Context(), "k", true)
			require.NoError(t, err)
			p := random(t, 10000)
			writeAt(t, ch, p, 333)
			require.NoError(t, ch.Sync())
			// Crash, then come back in mode.
			e.reopenRemote(t)
			c2 := e.open(t, mode, cache.MinBytes)
			defer c2.Close()
			require.Equal(t, p, e.remoteBytes(t, "k", 333, len(p)))
			_, err = os.Stat(filepath.Join(e.cacheDir, "dirty.idx"))
			require.ErrorIs(t, err, os.ErrNotExist)
		})
	}
}

// failing fails every chunk write while on is set, like a remote that
// went away.
type failing struct {
	storage.Backend
	on atomic.Bool
}

func (b *failing) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := b.Backend.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return &failingChunk{Chunk: c, b: b}, nil
}

type failingChunk struct {
	storage.Chunk
	b *failing
}

func (c *failingChunk) WriteAt(p []byte, off int64) (int, error) {
	if c.b.on.Load() {
		return 0, errors.New("remote unreachable")
	}
	return c.Chunk.WriteAt(p, off)
}

// TestFlushFailureKeepsDirtyPages: a write-back that fails loses nothing;
// the next one writes the pages.
func TestFlushFailureKeepsDirtyPages(t *testing.T) {
	e := newEnv(t)
	remote := &failing{Backend: e.remote}
	c, err := cache.New(t.Context(), remote, cache.Options{Mode: cache.ReadWrite, Dir: e.cacheDir, MaxBytes: cache.MinBytes, FlushInterval: time.Hour, SlowStorage: -1})
	require.NoError(t, err)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	p := random(t, 3*cache.PageSize)
	writeAt(t, ch, p, 0)
	require.NoError(t, ch.Sync(), "a Sync needs only the cache")
	remote.on.Store(true)
	require.ErrorContains(t, c.Flush(t.Context()), "remote unreachable")
	require.EqualValues(t, len(p), c.Stats().DirtyBytes)
	remote.on.Store(false)
	require.NoError(t, c.Flush(t.Context()))
	require.Zero(t, c.Stats().DirtyBytes)
	require.Equal(t, p, e.remoteBytes(t, "k", 0, len(p)))
	require.NoError(t, c.Close())
}
