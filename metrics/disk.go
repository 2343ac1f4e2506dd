package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"hostcrypt/volume"
)

// diskIO is one open disk's metrics: its children, resolved when it opened,
// which the I/O path updates without a lock (prometheus' counters and
// histograms are atomic), and its recent history.
type diskIO struct {
	h   *Host
	key diskKey
	v   *volume.Volume

	// By op: read, write, flush, discard (bytes has no flush child).
	ops, errs, bytes [4]prometheus.Counter
	lat              [4]prometheus.Observer
	// By keyResults; nil for a plaintext temp disk.
	keyChecks [len(keyResults)]prometheus.Counter

	ringMu sync.Mutex
	ring   ring
}

func (d *diskIO) observe(i int, n int64, took time.Duration, err error) {
	d.ops[i].Inc()
	if err != nil {
		d.errs[i].Inc()
	}
	if n > 0 && d.bytes[i] != nil {
		d.bytes[i].Add(float64(n))
	}
	d.lat[i].Observe(took.Seconds())
}

// The volume.IO methods, called on the data path.

func (d *diskIO) Read(n int, took time.Duration, err error) { d.observe(0, int64(n), took, err) }
func (d *diskIO) Write(n int, took time.Duration, err error) {
	d.observe(1, int64(n), took, err)
}
func (d *diskIO) Flush(took time.Duration, err error) { d.observe(2, 0, took, err) }
func (d *diskIO) Discard(n int64, took time.Duration, err error) {
	d.observe(3, n, took, err)
}
func (d *diskIO) Closed() { d.h.closed(d) }

// stateCollector reads, on each scrape, what the open disks' engines,
// caches and leases say, and the copies and their progress.
type stateCollector struct{ h *Host }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	dl = []string{"vm", "disk"}

	descSize      = desc("hostcrypt_disk_size_bytes", "The disk's size.", dl...)
	descIntegrity = desc("hostcrypt_disk_integrity_failures_total", "Blocks that failed authentication since the disk opened (altered or damaged storage; the guest got EIO).", dl...)
	descFenced    = desc("hostcrypt_disk_fenced", "1 while the disk refuses writes and flushes after a failed sync (vm show says why), else 0.", dl...)
	descSealed    = desc("hostcrypt_disk_blocks_sealed_total", "4 KiB blocks encrypted and authenticated on their way to storage (all layers of each block counted once).", dl...)
	descSealSecs  = desc("hostcrypt_disk_seal_seconds_total", "Time spent sealing blocks, all layers.", dl...)
	descOpened    = desc("hostcrypt_disk_blocks_opened_total", "4 KiB blocks authenticated and decrypted on their way from storage.", dl...)
	descOpenSecs  = desc("hostcrypt_disk_open_seconds_total", "Time spent opening blocks, all layers.", dl...)
	descBgSyncs   = desc("hostcrypt_disk_background_syncs_total", "Syncs the disk ran by itself (every --flush-interval the guest did not flush).", dl...)
	descBgSecs    = desc("hostcrypt_disk_background_sync_seconds_total", "Time the disk's own syncs took.", dl...)
	descLease     = desc("hostcrypt_disk_key_lease_remaining_seconds", "Time the customer-key disk serves I/O before its data key lease runs out unless a key check renews it (negative once it has). Absent for disks without a lease.", dl...)
	descHits      = desc("hostcrypt_disk_cache_hits_total", "Reads served by the disk's host cache.", dl...)
	descMisses    = desc("hostcrypt_disk_cache_misses_total", "Reads the disk's host cache had to fetch from storage.", dl...)
	descCached    = desc("hostcrypt_disk_cache_bytes", "Bytes the disk's host cache holds.", dl...)
	descDirty     = desc("hostcrypt_disk_cache_dirty_bytes", "Bytes the disk's host cache holds that storage does not have yet.", dl...)
	descWBRounds  = desc("hostcrypt_disk_cache_writebacks_total", "Write-back rounds of the host cache that wrote something.", dl...)
	descWBBytes   = desc("hostcrypt_disk_cache_writeback_bytes_total", "Bytes the host cache wrote back to storage.", dl...)
	descWBSecs    = desc("hostcrypt_disk_cache_writeback_seconds_total", "Time the host cache's write-back rounds took.", dl...)
	descCopy      = desc("hostcrypt_copy_progress_ratio", "How far a long copy is (0 to 1), by the resource it creates: snapshots/NAME, disks/NAME, images/NAME, conversions/NAME.", "resource")
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSize, descIntegrity, descFenced, descSealed, descSealSecs, descOpened, descOpenSecs,
		descBgSyncs, descBgSecs, descLease, descHits, descMisses, descCached, descDirty, descWBRounds, descWBBytes, descWBSecs, descCopy} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	for _, d := range c.h.openDisks(nil) {
		vm, name := d.key.vm, d.key.disk
		s := d.v.Stats()
		gauge(descSize, float64(s.Size), vm, name)
		fenced := 0.0
		if s.Fenced != "" {
			fenced = 1
		}
		gauge(descFenced, fenced, vm, name)
		if ds, lease, leased, ok := d.v.DiskStats(); ok {
			counter(descIntegrity, float64(ds.IntegrityErrors), vm, name)
			counter(descSealed, float64(ds.BlocksSealed), vm, name)
			counter(descSealSecs, ds.SealTime.Seconds(), vm, name)
			counter(descOpened, float64(ds.BlocksOpened), vm, name)
			counter(descOpenSecs, ds.OpenTime.Seconds(), vm, name)
			counter(descBgSyncs, float64(ds.BackgroundSyncs), vm, name)
			counter(descBgSecs, ds.BackgroundSyncTime.Seconds(), vm, name)
			if leased {
				gauge(descLease, lease.Seconds(), vm, name)
			}
		}
		if s.HasCache {
			counter(descHits, float64(s.Cache.Hits), vm, name)
			counter(descMisses, float64(s.Cache.Misses), vm, name)
			gauge(descCached, float64(s.Cache.CachedBytes), vm, name)
			gauge(descDirty, float64(s.Cache.DirtyBytes), vm, name)
			counter(descWBRounds, float64(s.Cache.Flushes), vm, name)
			counter(descWBBytes, float64(s.Cache.WrittenBackBytes), vm, name)
			counter(descWBSecs, s.Cache.WriteBackTime.Seconds(), vm, name)
		}
	}
	if f := c.h.copies.Load(); f != nil {
		for res, p := range (*f)() {
			r := 0.0
			if p.Total > 0 {
				r = min(1, float64(p.Done)/float64(p.Total))
			}
			gauge(descCopy, r, res)
		}
	}
}
