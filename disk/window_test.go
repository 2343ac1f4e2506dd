package disk

import (
	"bytes"
	"context"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// modelStore is a backend whose reads cost time on a clock of its own, the
// disk's monotonic clock in these tests, and are counted in bytes. When
// keeps is set it behaves like storage under a page cache: a read of pages
// read before costs little, any other read costs a trip to the device, and
// every page read is kept. Otherwise every read costs the trip, as on a
// store that keeps nothing near the caller.
type modelStore struct {
	storage.Backend
	clock atomic.Int64 // nanoseconds

	mu    sync.Mutex
	keeps bool
	kept  map[string]map[int64]bool // chunk key -> page index -> kept
	bytes int64
	calls int64

	// prefetches: its chunks are storage.Prefetchers. A prefetch costs
	// nothing on the clock (it does not wait): the pages of its range not
	// kept yet arrive a trip later (arriving), and a read of such a page
	// before then waits for it. Prefetched bytes are counted in fetched.
	prefetches bool
	arriving   map[string]map[int64]int64 // chunk key -> page index -> clock when kept
	fetched    int64
	// declines: its chunks are storage.Prefetchers that take no hint, as a
	// decorator over a store that keeps nothing near the caller is.
	declines bool
}

const (
	modelTrip = 100 * time.Microsecond
	modelHit  = 5 * time.Microsecond
)

func newModelStore(t *testing.T, keeps bool) *modelStore {
	lb, err := local.Open(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { lb.Close() })
	return &modelStore{Backend: lb, keeps: keeps, kept: map[string]map[int64]bool{}}
}

func (m *modelStore) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := m.Backend.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	mc := &modelChunk{Chunk: c, m: m, key: key}
	if m.prefetches {
		return &prefetchChunk{mc}, nil
	}
	return mc, nil
}

type prefetchChunk struct{ *modelChunk }

func (c *prefetchChunk) Prefetch(off, n int64) bool {
	m := c.m
	if m.declines {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fetched += n
	if !m.keeps {
		return true
	}
	if m.arriving == nil {
		m.arriving = map[string]map[int64]int64{}
	}
	pages := m.arriving[c.key]
	if pages == nil {
		pages = map[int64]int64{}
		m.arriving[c.key] = pages
	}
	at := m.clock.Load() + int64(modelTrip)
	for pg := off / BlockSize; pg*BlockSize < off+n; pg++ {
		if !m.kept[c.key][pg] && pages[pg] == 0 {
			pages[pg] = at
		}
	}
	return true
}

// keep switches the store to keeping pages (or not), with nothing kept yet.
func (m *modelStore) keep(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keeps = on
	m.kept = map[string]map[int64]bool{}
	m.arriving = nil
}

// counted returns the bytes and calls read since the last call (and
// starts counting what is prefetched afresh).
func (m *modelStore) counted() (bytes, calls int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	bytes, calls = m.bytes, m.calls
	m.bytes, m.calls, m.fetched = 0, 0, 0
	return bytes, calls
}

type modelChunk struct {
	storage.Chunk
	m   *modelStore
	key string
}

func (c *modelChunk) ReadAt(p []byte, off int64) (int, error) {
	m := c.m
	m.mu.Lock()
	m.bytes += int64(len(p))
	m.calls++
	cost := modelTrip
	if m.keeps {
		pages := m.kept[c.key]
		if pages == nil {
			pages = map[int64]bool{}
			m.kept[c.key] = pages
		}
		all, wait := true, int64(0)
		for pg := off / BlockSize; pg*BlockSize < off+int64(len(p)); pg++ {
			if at := m.arriving[c.key][pg]; at != 0 && !pages[pg] {
				// Prefetched: kept once it has arrived, waited for until.
				wait = max(wait, at-m.clock.Load())
				pages[pg] = true
			}
			all = all && pages[pg]
			pages[pg] = true
		}
		if all {
			cost = max(modelHit, time.Duration(wait))
		}
	}
	m.mu.Unlock()
	m.clock.Add(int64(cost))
	return c.Chunk.ReadAt(p, off)
}

// windowDisk creates a disk of the current format on m, on m's clock,
// writes all of it, and reads a byte of every chunk so that loading chunks
// is not counted with the reads that follow.
func windowDisk(t *testing.T, m *modelStore, size int64) (*Disk, []byte) {
	t.Helper()
	ctx := context.Background()
	ring := keyring{newKEK("k/1")}
	d, err := Create(ctx, m, "d", CreateOptions{Size: size, Layers: wrappers(ring)})
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	d.mono = func() time.Duration { return time.Duration(m.clock.Load()) }
	want := randBytes(int(size))
	for off := int64(0); off < size; off += 1 << 20 {
		_, err := d.WriteAt(want[off:off+1<<20], off)
		require.NoError(t, err)
	}
	require.NoError(t, d.Close()) // a disk opened afresh: no chunk state in memory
	d, err = Open(ctx, m, "d", ring)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	d.mono = func() time.Duration { return time.Duration(m.clock.Load()) }
	for off := int64(0); off < size; off += d.cbytes {
		_, err := d.ReadAt(make([]byte, 1), off)
		require.NoError(t, err)
	}
	m.keep(m.keeps)
	m.counted()
	return d, want
}

// randomReads reads n random 4 KiB blocks and checks what they return.
func randomReads(t *testing.T, d *Disk, want []byte, r *mrand.Rand, n int) {
	t.Helper()
	p := make([]byte, BlockSize)
	for range n {
		off := r.Int64N(int64(len(want))/BlockSize) * BlockSize
		_, err := d.ReadAt(p, off)
		require.NoError(t, err)
		require.Equal(t, want[off:off+BlockSize], p)
	}
}

// TestReadWindowWhereItPays: a short read reads the pages around it on a
// store that keeps what it read, where the neighbours' reads come back
// faster for it, and about only its own page on a store that keeps nothing,
// where the window's other pages are fetched for no one. A store that
// starts keeping pages turns the window on again.
func TestReadWindowWhereItPays(t *testing.T) {
	const size = 64 << 20 // 16384 blocks: random reads seldom meet twice
	const reads = 3000

	t.Run("store keeps what it read", func(t *testing.T) {
		m := newModelStore(t, true)
		d, want := windowDisk(t, m, size)
		r := mrand.New(mrand.NewPCG(1, 2))
		randomReads(t, d, want, r, reads)
		bytes, calls := m.counted()
		require.Equal(t, int64(reads), calls)
		require.Equal(t, int64(reads*readWindow*BlockSize), bytes, "every read reads its window")
		require.False(t, d.win.off.Load())
		require.Zero(t, d.win.flips.Load())
	})

	t.Run("store keeps nothing", func(t *testing.T) {
		m := newModelStore(t, false)
		d, want := windowDisk(t, m, size)
		r := mrand.New(mrand.NewPCG(1, 2))
		randomReads(t, d, want, r, reads)
		require.True(t, d.win.off.Load(), "the window is still on after %d reads", reads)
		m.counted()
		randomReads(t, d, want, r, reads)
		bytes, calls := m.counted()
		require.Equal(t, int64(reads), calls)
		// 4 KiB a read, and a window for one probe in probeEvery.
		perRead := float64(bytes) / reads
		t.Logf("%.0f bytes per 4 KiB read", perRead)
		require.Less(t, perRead, BlockSize*1.2)

		// The same store, now keeping what it reads, as the page cache
		// does after it was emptied. With no pause in the reads the
		// probes find the neighbours they read coming back faster, and
		// turn the window on again; the windows of before are forgotten
		// here as windowAge would forget them.
		m.keep(true)
		d.win.seen = [len(d.win.seen)]atomic.Uint64{}
		again := 0
		for ; again < 20000 && d.win.off.Load(); again += 100 {
			randomReads(t, d, want, r, 100)
		}
		require.False(t, d.win.off.Load(), "the window stayed off on a store that keeps pages")
		t.Logf("on again within %d reads", again)
		require.Equal(t, uint64(2), d.win.flips.Load())
	})

	t.Run("page cache emptied while reading", func(t *testing.T) {
		m := newModelStore(t, true)
		d, want := windowDisk(t, m, size)
		r := mrand.New(mrand.NewPCG(7, 8))
		var logs bytes.Buffer
		d.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		randomReads(t, d, want, r, reads)
		require.False(t, d.win.off.Load())
		require.NotContains(t, logs.String(), "windows forgotten")
		// Everything kept is dropped, with no pause: the windows seen
		// before now name pages that are gone, and reading them is a
		// trip like any other. They must not turn the window off.
		m.keep(true)
		m.counted()
		randomReads(t, d, want, r, reads)
		bytes, calls := m.counted()
		require.Equal(t, int64(reads*readWindow*BlockSize), bytes, "every read reads its window")
		require.Equal(t, int64(reads), calls)
		require.Zero(t, d.win.flips.Load())
		// The jump of the covered reads' times is what told, and it is
		// logged at debug level.
		require.Contains(t, logs.String(), `msg="read window: reads of pages read around slowed, windows forgotten" on=true`)
	})

	t.Run("after a pause", func(t *testing.T) {
		m := newModelStore(t, false)
		d, want := windowDisk(t, m, size)
		r := mrand.New(mrand.NewPCG(5, 6))
		randomReads(t, d, want, r, reads)
		require.True(t, d.win.off.Load())
		m.counted()
		randomReads(t, d, want, r, 1)
		bytes, _ := m.counted()
		require.Equal(t, int64(BlockSize), bytes)
		// A pause longer than windowAge: the next short read reads its
		// window, as on a disk just opened.
		m.clock.Add(int64(2 * windowAge))
		randomReads(t, d, want, r, 1)
		bytes, _ = m.counted()
		require.Equal(t, int64(readWindow*BlockSize), bytes)
		require.False(t, d.win.off.Load())
	})
}

// TestReadWindowPrefetched: on a backend that prefetches, a read whose
// window is on reads only its own page and has the backend fetch the
// window in the background, so that a read of a page that is kept is fast
// even while its neighbours are not, and the window still pays.
func TestReadWindowPrefetched(t *testing.T) {
	const size, reads = 64 << 20, 3000
	m := newModelStore(t, true)
	m.prefetches = true
	d, want := windowDisk(t, m, size)
	r := mrand.New(mrand.NewPCG(11, 12))
	d.win.mode.Store(int32(windowAlways))
	randomReads(t, d, want, r, reads)
	fetched := m.fetched
	bytes, calls := m.counted()
	require.Equal(t, int64(reads), calls)
	require.Equal(t, int64(reads*BlockSize), bytes, "a read reads its own page only")
	require.Equal(t, int64(reads*readWindow*BlockSize), fetched, "every read has its window prefetched")

	// About 80 % of the pages kept: a read whose own page is kept costs a
	// hit, whatever its neighbours.
	m.keep(true)
	d.win.mode.Store(int32(windowNever))
	randomReads(t, d, want, r, 26000)
	d.win.mode.Store(int32(windowAlways))
	t0 := m.clock.Load()
	randomReads(t, d, want, r, reads)
	perRead := time.Duration(m.clock.Load()-t0) / reads
	t.Logf("%v per read with most pages kept", perRead)
	// Reads of whole windows would wait for a trip whenever any of 8 pages
	// is missing (1 - 0.8^8 of them, about 85 µs a read here); reads of
	// their own page only when it is (about a fifth, less the neighbours
	// prefetched meanwhile).
	require.Less(t, perRead, modelTrip/4, "reads wait for neighbours that are not kept")
}

// TestReadWindowPrefetchDeclined: a chunk that offers prefetching but
// declines the hint (a decorator over a store that keeps nothing near the
// caller) has the engine read the window itself, as a chunk that offers
// none does.
func TestReadWindowPrefetchDeclined(t *testing.T) {
	const reads = 500
	m := newModelStore(t, false)
	m.prefetches, m.declines = true, true
	d, want := windowDisk(t, m, 16<<20)
	r := mrand.New(mrand.NewPCG(5, 6))
	d.win.mode.Store(int32(windowAlways))
	randomReads(t, d, want, r, reads)
	bytes, calls := m.counted()
	require.Equal(t, int64(reads), calls)
	require.Equal(t, int64(reads*readWindow*BlockSize), bytes, "each read reads its window")
}

// TestReadWindowFixed: the modes tests and benchmarks fix are kept whatever
// the reads cost.
func TestReadWindowFixed(t *testing.T) {
	m := newModelStore(t, false)
	d, want := windowDisk(t, m, 16<<20)
	r := mrand.New(mrand.NewPCG(3, 4))
	d.win.mode.Store(int32(windowAlways))
	randomReads(t, d, want, r, 500)
	bytes, _ := m.counted()
	require.Equal(t, int64(500*readWindow*BlockSize), bytes)
	d.win.mode.Store(int32(windowNever))
	randomReads(t, d, want, r, 500)
	bytes, _ = m.counted()
	require.Equal(t, int64(500*BlockSize), bytes)
}
