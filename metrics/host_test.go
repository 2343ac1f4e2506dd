package metrics

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/control/api"
	"hostcrypt/control/keys/keystest"
	"hostcrypt/disk"
	"hostcrypt/internal/promtest"
	"hostcrypt/storage"
	"hostcrypt/storage/local"
	"hostcrypt/volume"
)

var bg = context.Background()

type fixture struct {
	root string
	sb   storage.Backend
	keys *keystest.Service
}

func newFixture(t testing.TB, wrap func(storage.Backend) storage.Backend) *fixture {
	root := t.TempDir()
	lb, err := local.Open(filepath.Join(root, "storage"))
	require.NoError(t, err)
	t.Cleanup(func() { lb.Close() })
	var sb storage.Backend = lb
	if wrap != nil {
		sb = wrap(lb)
	}
	f := &fixture{root: root, sb: sb, keys: keystest.New()}
	d, err := disk.Create(bg, lb, "disks/d1", disk.CreateOptions{Size: 8 << 20, SectorSize: 512, Layers: []disk.KeyWrapper{f.keys}})
	require.NoError(t, err)
	require.NoError(t, d.Close())
	return f
}

func (f *fixture) open(t testing.TB, o volume.Observer, mode cache.Mode) *volume.Volume {
	v, err := volume.Open(bg, volume.Config{Name: "d1", VM: "vm1", Observer: o, Storage: f.sb, Prefix: "disks/d1", Keys: f.keys,
		Caching: mode, CacheDir: filepath.Join(f.root, "cache", "d1"), CacheBytes: 4 << 20,
		SequentialCutoff: -1, SlowStorage: -1})
	require.NoError(t, err)
	return v
}

func pattern(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// A disk's metrics count what its image did, with the disk's and the VM's
// names as labels, and the state its engine and cache hold; they go when
// the disk closes, and the output is what promtool accepts.
func TestDiskMetrics(t *testing.T) {
	h := NewHost()
	defer h.Close()
	f := newFixture(t, nil)
	v := f.open(t, h, cache.ReadWrite)
	img := v.Image()
	p := pattern(64 << 10)
	_, err := img.WriteAt(p, 0)
	require.NoError(t, err)
	for range 2 {
		_, err = img.ReadAt(make([]byte, 4096), 8192)
		require.NoError(t, err)
	}
	require.NoError(t, img.Sync())
	require.NoError(t, img.Discard(0, 4096))
	// Write the cache back into the engine, as a snapshot does.
	ctx, release, err := v.Use(bg)
	require.NoError(t, err)
	_, _, err = v.Snapshot(ctx)
	require.NoError(t, err)
	release()
	v.SetLease(time.Now().Add(time.Hour))

	s := promtest.Handler(t, h.Handler())
	l := []string{"vm=vm1", "disk=d1"}
	op := func(o string) []string { return append(l[:2:2], "op="+o) }
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_disk_operations_total", op("write")...))
	require.Equal(t, 2.0, s.Must(t, "hostcrypt_disk_operations_total", op("read")...))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_disk_operations_total", op("flush")...))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_disk_operations_total", op("discard")...))
	require.Equal(t, float64(64<<10), s.Must(t, "hostcrypt_disk_bytes_total", op("write")...))
	require.Equal(t, 8192.0, s.Must(t, "hostcrypt_disk_bytes_total", op("read")...))
	require.Equal(t, 4096.0, s.Must(t, "hostcrypt_disk_bytes_total", op("discard")...))
	require.Equal(t, 2.0, s.Must(t, "hostcrypt_disk_operation_duration_seconds", op("read")...))
	require.Equal(t, 0.0, s.Must(t, "hostcrypt_disk_operation_errors_total", op("write")...))
	require.Equal(t, float64(8<<20), s.Must(t, "hostcrypt_disk_size_bytes", l...))
	require.Equal(t, 0.0, s.Must(t, "hostcrypt_disk_fenced", l...))
	require.Equal(t, 0.0, s.Must(t, "hostcrypt_disk_integrity_failures_total", l...))
	// The cache's pages were written back, and sealed on the way.
	require.Positive(t, s.Must(t, "hostcrypt_disk_cache_writeback_bytes_total", l...))
	require.Positive(t, s.Must(t, "hostcrypt_disk_cache_writeback_seconds_total", l...))
	require.Positive(t, s.Must(t, "hostcrypt_disk_blocks_sealed_total", l...))
	require.Positive(t, s.Must(t, "hostcrypt_disk_seal_seconds_total", l...))
	require.Equal(t, 2.0, s.Must(t, "hostcrypt_disk_cache_hits_total", l...))
	lease := s.Must(t, "hostcrypt_disk_key_lease_remaining_seconds", l...)
	require.InDelta(t, 3600, lease, 60)
	require.Equal(t, 0.0, s.Must(t, "hostcrypt_disk_key_checks_total", append(l, "result=revoked")...), "every result shows from the start")
	require.Subset(t, []string{"vm", "disk", "op", "le", "result", "version", "cause"}, s.LabelNames())
	s.CheckMetrics(t)

	h.KeyChecked("vm1", "d1", "usable")
	h.KeyChecked("vm1", "d1", "usable")
	h.KeyChecked("vm1", "d1", "unreachable")
	h.KeyChecked("vm1", "d1", "something new")
	h.KeyChecked("vm1", "closed-or-unknown", "usable")
	s = promtest.Handler(t, h.Handler())
	require.Equal(t, 2.0, s.Must(t, "hostcrypt_disk_key_checks_total", append(l, "result=usable")...))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_disk_key_checks_total", append(l, "result=unreachable")...))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_disk_key_checks_total", append(l, "result=other")...))
	require.Equal(t, 5, s.Count("hostcrypt_disk_key_checks_total"), "no series for a disk that is not open")

	_, err = v.Close()
	require.NoError(t, err)
	s = promtest.Handler(t, h.Handler())
	for _, name := range []string{"hostcrypt_disk_operations_total", "hostcrypt_disk_operation_duration_seconds", "hostcrypt_disk_bytes_total", "hostcrypt_disk_size_bytes", "hostcrypt_disk_key_checks_total"} {
		require.Zero(t, s.Count(name, l...), "%s of a closed disk", name)
	}
	require.Nil(t, h.Recent("vm1", "d1"), "no history for a closed disk")

	// Opened again, the disk counts from zero.
	v = f.open(t, h, cache.None)
	_, err = v.Image().ReadAt(make([]byte, 4096), 0)
	require.NoError(t, err)
	s = promtest.Handler(t, h.Handler())
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_disk_operations_total", op("read")...))
	require.Equal(t, 0.0, s.Must(t, "hostcrypt_disk_operations_total", op("write")...))
	require.Zero(t, s.Count("hostcrypt_disk_cache_hits_total", l...), "no cache, no cache metrics")
	require.Zero(t, s.Count("hostcrypt_disk_key_lease_remaining_seconds", l...), "no lease, no lease metric")
	_, err = v.Close()
	require.NoError(t, err)
}

// A failed operation counts as an operation and as an error.
func TestDiskMetricsCountFailures(t *testing.T) {
	h := NewHost()
	defer h.Close()
	f := newFixture(t, nil)
	v := f.open(t, h, cache.None)
	defer v.Close()
	v.SetLease(time.Now().Add(-time.Second)) // the lease ran out: I/O fails
	_, err := v.Image().WriteAt(pattern(4096), 0)
	require.Error(t, err)
	s := promtest.Handler(t, h.Handler())
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_disk_operations_total", "vm=vm1", "disk=d1", "op=write"))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_disk_operation_errors_total", "vm=vm1", "disk=d1", "op=write"))
	require.Negative(t, s.Must(t, "hostcrypt_disk_key_lease_remaining_seconds", "vm=vm1", "disk=d1"))
}

// The control plane's findings: a rotation's progress, the copies in
// progress.
func TestControlMetrics(t *testing.T) {
	h := NewHost()
	defer h.Close()
	h.Rewrapping("des1", 0, 3)
	h.Rewrapping("des1", 2, 3)
	h.SetCopies(func() map[string]api.CopyProgress {
		return map[string]api.CopyProgress{"snapshots/s1": {Operation: "snapshot of disk d1", Done: 1 << 20, Total: 4 << 20}}
	})
	s := promtest.Handler(t, h.Handler())
	require.Equal(t, 3.0, s.Must(t, "hostcrypt_key_rotation_resources", "des=des1"))
	require.Equal(t, 2.0, s.Must(t, "hostcrypt_key_rotation_rewrapped_resources", "des=des1"))
	require.Equal(t, 0.25, s.Must(t, "hostcrypt_copy_progress_ratio", "resource=snapshots/s1"))
	s.CheckMetrics(t)
}

// stallingBackend holds every chunk write while stall is set, until
// release is closed: a disk whose storage hangs.
type stallingBackend struct {
	storage.Backend
	stall   atomic.Bool
	stalled chan struct{} // a write is held
	release chan struct{}
}

type stallingChunk struct {
	storage.Chunk
	b *stallingBackend
}

func (b *stallingBackend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := b.Backend.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return stallingChunk{c, b}, nil
}

func (c stallingChunk) WriteAt(p []byte, off int64) (int, error) {
	if c.b.stall.Load() {
		select {
		case c.b.stalled <- struct{}{}:
		default:
		}
		<-c.b.release
	}
	return c.Chunk.WriteAt(p, off)
}

// A scrape does not wait for a disk whose storage hangs under a write in
// progress: it reads counters, never takes the disk's locks.
func TestScrapeDoesNotWaitForIO(t *testing.T) {
	h := NewHost()
	defer h.Close()
	sb := &stallingBackend{stalled: make(chan struct{}, 1), release: make(chan struct{})}
	f := newFixture(t, func(lb storage.Backend) storage.Backend { sb.Backend = lb; return sb })
	v := f.open(t, h, cache.None)
	sb.stall.Store(true)
	wrote := make(chan error, 1)
	go func() {
		_, err := v.Image().WriteAt(pattern(4096), 0)
		if err == nil {
			err = v.Image().Sync()
		}
		wrote <- err
	}()
	<-sb.stalled
	scraped := make(chan *promtest.Scrape, 1)
	go func() { scraped <- promtest.Handler(t, h.Handler()) }()
	select {
	case s := <-scraped:
		require.Equal(t, 0.0, s.Must(t, "hostcrypt_disk_operations_total", "vm=vm1", "disk=d1", "op=write"), "the write is still in progress")
	case <-time.After(time.Minute):
		t.Fatal("the scrape waited for the stalled write")
	}
	close(sb.release)
	require.NoError(t, <-wrote)
	_, err := v.Close()
	require.NoError(t, err)
}

// Recent gives a disk's reads and writes per second and their mean latency,
// one point a second, oldest first, over at most RecentWindow.
func TestRecent(t *testing.T) {
	h := NewHost()
	h.Close() // the test samples by hand
	f := newFixture(t, nil)
	v := f.open(t, h, cache.None)
	defer v.Close()
	d := h.disk("vm1", "d1")
	require.NotNil(t, d)
	require.Nil(t, h.Recent("vm1", "other"))
	require.Empty(t, h.Recent("vm1", "d1"), "one sample (the opening) makes no point")

	// Replace the opening sample by one at a known time.
	t0 := time.Unix(1_000_000, 0)
	d.ring = ring{}
	d.sample(t0)
	img := v.Image()
	for range 4 {
		_, err := img.WriteAt(pattern(4096), 0)
		require.NoError(t, err)
	}
	for range 6 {
		_, err := img.ReadAt(make([]byte, 4096), 0)
		require.NoError(t, err)
	}
	d.sample(t0.Add(2 * time.Second))
	d.sample(t0.Add(3 * time.Second)) // an idle second
	pts := h.Recent("vm1", "d1")
	require.Len(t, pts, 2)
	require.Equal(t, t0.Add(2*time.Second), pts[0].T)
	require.Equal(t, 3.0, pts[0].ReadOps, "6 reads over 2 s")
	require.Equal(t, 2.0, pts[0].WriteOps)
	require.Positive(t, pts[0].ReadLatency)
	require.Positive(t, pts[0].WriteLatency)
	require.Equal(t, Point{T: t0.Add(3 * time.Second)}, pts[1])

	// The ring keeps the last RecentWindow.
	for i := range 1000 {
		d.sample(t0.Add(time.Duration(4+i) * time.Second))
	}
	pts = h.Recent("vm1", "d1")
	require.Len(t, pts, int(RecentWindow/time.Second))
	require.Equal(t, t0.Add(1003*time.Second), pts[len(pts)-1].T)
	for i := 1; i < len(pts); i++ {
		require.Equal(t, time.Second, pts[i].T.Sub(pts[i-1].T))
	}
}

// The sampler adds a point a second by itself.
func TestRecentSamples(t *testing.T) {
	h := newHost(10 * time.Millisecond)
	defer h.Close()
	f := newFixture(t, nil)
	v := f.open(t, h, cache.None)
	defer v.Close()
	_, err := v.Image().WriteAt(pattern(4096), 0)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var writes float64
		for _, p := range h.Recent("vm1", "d1") {
			writes += p.WriteOps
		}
		return writes > 0
	}, 10*time.Second, 10*time.Millisecond)
}

// The I/O path allocates nothing for its metrics.
func TestObserveAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	h := NewHost()
	defer h.Close()
	f := newFixture(t, nil)
	v := f.open(t, h, cache.None)
	defer v.Close()
	io := h.disk("vm1", "d1")
	allocs := testing.AllocsPerRun(1000, func() {
		io.Read(4096, time.Millisecond, nil)
		io.Write(4096, time.Millisecond, nil)
		io.Flush(time.Millisecond, nil)
		io.Discard(4096, time.Millisecond, nil)
	})
	require.Zero(t, allocs)
}

// BenchmarkObservedIO is a 4 KiB write and read through an observed disk's
// image: the decorator, the timing and the metrics, over the engine.
// 0 allocs/op.
func BenchmarkObservedIO(b *testing.B) {
	for _, observed := range []bool{false, true} {
		name := "bare"
		if observed {
			name = "observed"
		}
		b.Run(name, func(b *testing.B) {
			h := NewHost()
			defer h.Close()
			f := newFixture(b, nil)
			var o volume.Observer
			if observed {
				o = h
			}
			v := f.open(b, o, cache.None)
			defer v.Close()
			img, p := v.Image(), pattern(4096)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				off := int64(i%256) * 4096
				img.WriteAt(p, off)
				img.ReadAt(p, off)
			}
		})
	}
}

// BenchmarkMetricsIO is the metrics alone: one observed read.
func BenchmarkMetricsIO(b *testing.B) {
	h := NewHost()
	defer h.Close()
	io := h.Opened(volume.Plain("d1", nil, 0)).(*diskIO)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			io.Read(4096, 100*time.Microsecond, nil)
		}
	})
}
