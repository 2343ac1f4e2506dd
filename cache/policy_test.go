package cache_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/storage"
)

// slowRemote adds a fixed delay to every chunk read and write, as a store
// across a network would.
type slowRemote struct {
	storage.Backend
	d time.Duration
}

func (b *slowRemote) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := b.Backend.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return &slowChunk{Chunk: c, d: b.d}, nil
}

type slowChunk struct {
	storage.Chunk
	d time.Duration
}

func (c *slowChunk) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(c.d)
	return c.Chunk.ReadAt(p, off)
}

func (c *slowChunk) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(c.d)
	return c.Chunk.WriteAt(p, off)
}

// randomReads reads 4 KiB pages of the first region bytes in a fixed
// shuffled order, twice.
func randomReads(t *testing.T, ch storage.Chunk, region int64) {
	pages := region / cache.PageSize
	for range 2 {
		for i := range pages {
			pn := i * 37 % pages // 37 is prime to pages: a permutation
			readAt(t, ch, pn*cache.PageSize, cache.PageSize)
		}
	}
}

// The cache decides from what it measures: against a remote whose calls
// take 2 ms, random reads are cached and the second pass hits; against the
// same remote when the threshold is above its latency, they go around the
// cache and nothing is cached. The backend is the same in both: only its
// measured latency differs from the threshold.
func TestRandomIOFollowsTheMeasuredLatency(t *testing.T) {
	const region = 256 * kib
	for _, tc := range []struct {
		name   string
		slow   time.Duration
		cached bool
	}{
		{"slower than the threshold", 0, true},
		{"faster than the threshold", time.Minute, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c, err := cache.New(t.Context(), &slowRemote{Backend: e.remote, d: 2 * time.Millisecond}, cache.Options{
				Mode: cache.ReadOnly, Dir: e.cacheDir, MaxBytes: 4 * mib, FlushInterval: time.Hour, SlowStorage: tc.slow,
			})
			require.NoError(t, err)
			defer c.Close()
			ch, err := c.OpenChunk(t.Context(), "k", true)
			require.NoError(t, err)
			writeAt(t, ch, random(t, region), 0) // one sequential write: around the cache
			require.Zero(t, c.Stats().CachedBytes, "a large write is not cached")
			randomReads(t, ch, region)
			s := c.Stats()
			require.GreaterOrEqual(t, s.StorageLatency, 2*time.Millisecond, "the measured latency")
			require.Equal(t, tc.cached, s.SlowStorage)
			if tc.cached {
				require.Positive(t, s.Hits, "the second pass is served by the cache")
				require.Positive(t, s.CachedBytes)
			} else {
				require.Zero(t, s.Hits)
				require.Zero(t, s.CachedBytes, "nothing taken in")
				require.Positive(t, s.Bypassed)
			}
		})
	}
}

// Sequential I/O bypasses the cache even when the remote is slow, as
// bcache's sequential cut-off: a 1 MiB stream read in 64 KiB pieces
// takes in only its first pieces, a single large read nothing.
func TestSequentialCutoff(t *testing.T) {
	e := newEnv(t)
	e.cutoff = 256 * kib
	c := e.open(t, cache.ReadOnly, 8*mib)
	defer c.Close()
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	data := random(t, 2*mib)
	writeAt(t, ch, data, 0)
	for off := int64(0); off < mib; off += 64 * kib {
		require.Equal(t, data[off:off+64*kib], readAt(t, ch, off, 64*kib))
	}
	cached := c.Stats().CachedBytes
	require.Equal(t, int64(192*kib), cached, "the stream's pieces before it reached the cut-off")
	require.Equal(t, data[mib:], readAt(t, ch, mib, mib))
	require.Equal(t, cached, c.Stats().CachedBytes, "a read of the cut-off's size takes in nothing")
	// Random 4 KiB reads are cached (the remote counts as slow here).
	readAt(t, ch, mib+40*kib, 4*kib)
	require.Equal(t, cached+4*kib, c.Stats().CachedBytes)
}

// gated is a remote whose write-back of a page (a 4 KiB write) can be held
// until a large write (one that bypassed the cache) has reached the remote,
// and whose large write is then held until the write-back is over. That is
// the interleaving in which a write-back of an older image of a page, if it
// could run beside a bypassed write, would land after it.
type gated struct {
	storage.Backend
	armed    chan struct{} // closed: hold the next small write
	held     chan struct{} // closed when a small write is held
	bypassed chan struct{} // closed when a large write reached the remote
	flushed  chan struct{} // closed by the test when Flush returned
	once     sync.Once
	bOnce    sync.Once
}

func (g *gated) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := g.Backend.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return &gatedChunk{Chunk: c, g: g}, nil
}

type gatedChunk struct {
	storage.Chunk
	g *gated
}

func (c *gatedChunk) WriteAt(p []byte, off int64) (int, error) {
	g := c.g
	select {
	case <-g.armed:
	default:
		return c.Chunk.WriteAt(p, off)
	}
	if len(p) <= cache.PageSize {
		g.once.Do(func() { close(g.held) })
		// Correct code never lets the large write reach the remote
		// meanwhile; give it a while to prove that, then go on.
		select {
		case <-g.bypassed:
		case <-time.After(300 * time.Millisecond):
		}
		return c.Chunk.WriteAt(p, off)
	}
	n, err := c.Chunk.WriteAt(p, off)
	g.bOnce.Do(func() { close(g.bypassed) })
	<-g.flushed
	return n, err
}

// A write that bypasses the cache over a dirty cached page must win over
// that page: on the next read, in the remote after write-back, and after a
// crash and recovery. Here the write-back of the older page is under way
// when the large write comes.
func TestBypassedWriteBeatsADirtyPage(t *testing.T) {
	e := newEnv(t)
	g := &gated{
		Backend: e.remote, armed: make(chan struct{}), held: make(chan struct{}),
		bypassed: make(chan struct{}), flushed: make(chan struct{}),
	}
	c, err := cache.New(t.Context(), g, cache.Options{
		Mode: cache.ReadWrite, Dir: e.cacheDir, MaxBytes: 4 * mib, FlushInterval: time.Hour,
		SequentialCutoff: 64 * kib, SlowStorage: -1,
	})
	require.NoError(t, err)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	older := bytes.Repeat([]byte{0xAA}, cache.PageSize)
	writeAt(t, ch, older, 3*cache.PageSize)
	require.EqualValues(t, cache.PageSize, c.Stats().DirtyBytes, "the small write is cached")
	require.NoError(t, ch.Sync())

	close(g.armed)
	flushErr := make(chan error, 1)
	go func() {
		err := c.Flush(context.Background())
		close(g.flushed)
		flushErr <- err
	}()
	<-g.held // the write-back read the older page and is about to write it
	newer := random(t, 128*kib)
	writeAt(t, ch, newer, 0) // around the cache: past the cut-off
	require.NoError(t, <-flushErr)
	require.Positive(t, c.Stats().Bypassed)

	require.Equal(t, newer, readAt(t, ch, 0, len(newer)), "read back")
	require.NoError(t, ch.Sync())
	require.NoError(t, c.Flush(t.Context()))
	require.Equal(t, newer, e.remoteBytes(t, "k", 0, len(newer)), "in the remote after write-back")
}

// The same without a write-back under way, then a crash: the dirty page
// took the newer bytes, so recovery writes those back, never the older;
// and the older write's bytes that the newer one does not cover, which
// only the dirty page holds, are kept.
func TestBypassedWriteOverADirtyPageSurvivesACrash(t *testing.T) {
	e := newEnv(t)
	e.cutoff = 64 * kib
	c := e.open(t, cache.ReadWrite, 4*mib)
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	model := make([]byte, 256*kib)
	older := bytes.Repeat([]byte{0xAA}, 5000) // pages 0 and 1, in part
	writeAt(t, ch, older, 2000)
	copy(model[2000:], older)
	require.NoError(t, ch.Sync())
	newer := random(t, 128*kib) // from the middle of page 1 on
	writeAt(t, ch, newer, 6000)
	copy(model[6000:], newer)
	require.Equal(t, model, readAt(t, ch, 0, len(model)), "read back (around the cache too: a large read)")
	require.Equal(t, model[:8*kib], readAt(t, ch, 0, 8*kib), "read back through the cache")
	require.NoError(t, ch.Sync())
	// Crash: abandon c; recovery writes the dirty pages back.
	e.reopenRemote(t)
	c2 := e.open(t, cache.ReadWrite, 4*mib)
	require.NoError(t, c2.Close())
	require.Equal(t, model, e.remoteBytes(t, "k", 0, len(model)))
}

// A large read around the cache returns what the dirty pages it covers
// hold, not the remote's older bytes.
func TestBypassedReadSeesDirtyPages(t *testing.T) {
	e := newEnv(t)
	e.cutoff = 64 * kib
	c := e.open(t, cache.ReadWrite, 4*mib)
	defer c.Close()
	ch, err := c.OpenChunk(t.Context(), "k", true)
	require.NoError(t, err)
	base := random(t, 256*kib)
	writeAt(t, ch, base, 0) // around the cache, straight to the remote
	require.Zero(t, c.Stats().DirtyBytes)
	small := random(t, 5000)
	writeAt(t, ch, small, 70000) // cached, dirty
	require.Positive(t, c.Stats().DirtyBytes)
	copy(base[70000:], small)
	bypassed := c.Stats().Bypassed
	require.Equal(t, base, readAt(t, ch, 0, len(base)))
	require.Greater(t, c.Stats().Bypassed, bypassed)
}

// A fill (a read miss taking a page in) and a write around the cache race
// on fresh objects, where the write takes its path without Cache.mu: the
// fill must never install an image older than the write, or the cache would
// serve it from then on.
func TestFillRacesAWriteAround(t *testing.T) {
	for _, mode := range []cache.Mode{cache.ReadOnly, cache.ReadWrite} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t)
			c, err := cache.New(t.Context(), &slowRemote{Backend: e.remote, d: 100 * time.Microsecond}, cache.Options{
				Mode: mode, Dir: e.cacheDir, MaxBytes: 4 * mib, FlushInterval: time.Hour,
				SequentialCutoff: 16 * kib, SlowStorage: -1,
			})
			require.NoError(t, err)
			defer c.Close()
			for i := range 100 {
				ch, err := c.OpenChunk(t.Context(), fmt.Sprintf("k%03d", i), true)
				require.NoError(t, err)
				writeAt(t, ch, make([]byte, 16*kib), 0) // around the cache
				newer := bytes.Repeat([]byte{byte(i + 1)}, 16*kib)
				var wg sync.WaitGroup
				wg.Go(func() { _, err := ch.ReadAt(make([]byte, 4*kib), 4*kib); assert.NoError(t, err) })
				wg.Go(func() { _, err := ch.WriteAt(newer, 0); assert.NoError(t, err) })
				wg.Wait()
				require.Equal(t, newer, readAt(t, ch, 0, 16*kib), "object %d", i)
			}
		})
	}
}
