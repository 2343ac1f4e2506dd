package metrics

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"hostcrypt/control/api"
	"hostcrypt/metrics/listen"
	"hostcrypt/volume"
)

// The operations of a disk, as the op label names them.
const (
	opRead    = "read"
	opWrite   = "write"
	opFlush   = "flush"
	opDiscard = "discard"
)

// LatencyBuckets are the bounds, in seconds, of the disks' latency
// histograms: 25 µs (a cached read) to 2.5 s (a sync behind slow storage).
var LatencyBuckets = []float64{
	25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5,
}

// Host holds hostcryptd's metrics. It is a volume.Observer (control.Config
// .Observer) and a control.Recorder (control.Config.Recorder); Handler
// serves what it gathers.
type Host struct {
	reg *prometheus.Registry

	ops     *prometheus.CounterVec
	errs    *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	latency *prometheus.HistogramVec

	keyChecks *prometheus.CounterVec
	rotTotal  *prometheus.GaugeVec
	rotDone   *prometheus.GaugeVec
	rotMu     sync.Mutex
	rotations map[string]bool // the sets whose rotation gauges exist
	copies    atomic.Pointer[func() map[string]api.CopyProgress]

	// mu guards disks: taken to add and remove a disk, and to list them;
	// never on the I/O path, never across anything that waits.
	mu    sync.Mutex
	disks map[diskKey]*diskIO

	stop chan struct{}
	done chan struct{}
}

type diskKey struct{ vm, disk string }

// NewHost returns the metrics of a hostcryptd process, with the Go
// runtime's and the process's own. Close stops the per-second sampling of
// Recent.
func NewHost() *Host { return newHost(time.Second) }

// newHost is NewHost sampling Recent every sampleEvery (tests shorten it).
func newHost(sampleEvery time.Duration) *Host {
	h := &Host{
		reg:       prometheus.NewRegistry(),
		disks:     map[diskKey]*diskIO{},
		rotations: map[string]bool{},
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	dl := []string{"vm", "disk", "op"}
	h.ops = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostcrypt_disk_operations_total",
		Help: "Operations the guest asked of the disk (read, write, flush, discard), failed ones included.",
	}, dl)
	h.errs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostcrypt_disk_operation_errors_total",
		Help: "Operations of the disk that failed (the guest saw an error).",
	}, dl)
	h.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostcrypt_disk_bytes_total",
		Help: "Bytes read, written or discarded by the guest's operations.",
	}, dl)
	h.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hostcrypt_disk_operation_duration_seconds",
		Help:    "Time from the guest's request reaching the disk to its answer, by operation.",
		Buckets: LatencyBuckets,
	}, dl)
	h.keyChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostcrypt_disk_key_checks_total",
		Help: "Checks of the customer key of the disk, by what they found (usable, revoked, expired, unreachable, other).",
	}, []string{"vm", "disk", "result"})
	h.rotTotal = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "hostcrypt_key_rotation_resources",
		Help: "Resources (disks, snapshots, images) the last rotation of the disk encryption set had to re-wrap.",
	}, []string{"des"})
	h.rotDone = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "hostcrypt_key_rotation_rewrapped_resources",
		Help: "Resources the last rotation of the disk encryption set has re-wrapped so far.",
	}, []string{"des"})
	h.reg.MustRegister(h.ops, h.errs, h.bytes, h.latency, h.keyChecks, h.rotTotal, h.rotDone,
		stateCollector{h},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	go h.sampleLoop(sampleEvery)
	return h
}

// Registry is where the metrics are registered.
func (h *Host) Registry() *prometheus.Registry { return h.reg }

// Handler serves the metrics in Prometheus' text format.
func (h *Host) Handler() http.Handler {
	return promhttp.HandlerFor(h.reg, promhttp.HandlerOpts{Registry: h.reg})
}

// SetCopies gives the function that lists the long copies in progress
// (control.Host.Copies); it is called on each scrape.
func (h *Host) SetCopies(f func() map[string]api.CopyProgress) { h.copies.Store(&f) }

// Close stops the sampling of Recent.
func (h *Host) Close() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
}

// keyResults are what a key check finds (keys.Problem's names).
var keyResults = [...]string{"usable", "revoked", "expired", "unreachable", "other"}

// KeyChecked counts a check of an open disk's key (control.Recorder).
func (h *Host) KeyChecked(vm, disk, result string) {
	d := h.disk(vm, disk)
	if d == nil {
		return // closed since
	}
	i := slices.Index(keyResults[:], result)
	if i < 0 {
		i = len(keyResults) - 1
	}
	d.keyChecks[i].Inc()
}

// Rewrapping sets a rotation's progress (control.Recorder).
func (h *Host) Rewrapping(des string, done, total int) {
	h.rotMu.Lock()
	defer h.rotMu.Unlock()
	h.rotations[des] = true
	h.rotTotal.WithLabelValues(des).Set(float64(total))
	h.rotDone.WithLabelValues(des).Set(float64(done))
}

// Opened resolves the disk's metric children (volume.Observer).
func (h *Host) Opened(v *volume.Volume) volume.IO {
	k := diskKey{v.VM(), v.Name()}
	d := &diskIO{h: h, key: k, v: v}
	for i, op := range []string{opRead, opWrite, opFlush, opDiscard} {
		d.ops[i] = h.ops.WithLabelValues(k.vm, k.disk, op)
		d.errs[i] = h.errs.WithLabelValues(k.vm, k.disk, op)
		d.lat[i] = h.latency.WithLabelValues(k.vm, k.disk, op)
		if op != opFlush {
			d.bytes[i] = h.bytes.WithLabelValues(k.vm, k.disk, op)
		}
	}
	if v.Encrypted() {
		// Shown at 0 from the start; a disk with a platform key is never
		// checked and stays at 0.
		for i, r := range keyResults {
			d.keyChecks[i] = h.keyChecks.WithLabelValues(k.vm, k.disk, r)
		}
	}
	d.sample(time.Now()) // the history's start
	h.mu.Lock()
	h.disks[k] = d
	h.mu.Unlock()
	return d
}

// closed forgets d and deletes its children, unless the disk was opened
// again since (then they are the new volume's).
func (h *Host) closed(d *diskIO) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.disks[d.key] != d {
		return
	}
	delete(h.disks, d.key)
	for _, op := range []string{opRead, opWrite, opFlush, opDiscard} {
		h.ops.DeleteLabelValues(d.key.vm, d.key.disk, op)
		h.errs.DeleteLabelValues(d.key.vm, d.key.disk, op)
		h.latency.DeleteLabelValues(d.key.vm, d.key.disk, op)
		h.bytes.DeleteLabelValues(d.key.vm, d.key.disk, op)
	}
	for _, r := range keyResults {
		h.keyChecks.DeleteLabelValues(d.key.vm, d.key.disk, r)
	}
}

// openDisks lists the open disks.
func (h *Host) openDisks(into []*diskIO) []*diskIO {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range h.disks {
		into = append(into, d)
	}
	return into
}

// disk returns the open disk vm/name, or nil.
func (h *Host) disk(vm, name string) *diskIO {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.disks[diskKey{vm, name}]
}

// Serve serves h.Handler on addr until ctx ends (see listen.Serve).
func (h *Host) Serve(ctx context.Context, addr string, o listen.Options) (string, error) {
	return listen.Serve(ctx, addr, h.Handler(), o)
}

var _ volume.Observer = (*Host)(nil)
