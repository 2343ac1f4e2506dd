package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// RecentWindow is how far back Recent goes: one point a second.
const RecentWindow = 5 * time.Minute

const ringLen = int(RecentWindow/time.Second) + 1 // n+1 samples make n points

// Point is one second of a disk's I/O: the reads and writes completed per
// second, and their mean latency (0 when there was none).
type Point struct {
	T                         time.Time
	ReadOps, WriteOps         float64
	ReadLatency, WriteLatency time.Duration
}

// sample is a disk's cumulative counters at one instant.
type sample struct {
	t                     time.Time
	reads, writes         uint64
	readNanos, writeNanos int64
}

// ring holds the last ringLen samples, oldest overwritten; it is a fixed
// array, so sampling allocates nothing.
type ring struct {
	s    [ringLen]sample
	next int // where the next sample goes
	n    int // samples held
}

func (r *ring) add(s sample) {
	r.s[r.next] = s
	r.next = (r.next + 1) % ringLen
	r.n = min(r.n+1, ringLen)
}

// at returns the i-th oldest sample held.
func (r *ring) at(i int) *sample {
	return &r.s[(r.next-r.n+i+ringLen)%ringLen]
}

// sample records d's counters now: the count and sum of its read and write
// latency histograms, which count every read and write and their time.
func (d *diskIO) sample(t time.Time) {
	s := sample{t: t}
	s.reads, s.readNanos = totals(d.lat[0])
	s.writes, s.writeNanos = totals(d.lat[1])
	d.ringMu.Lock()
	d.ring.add(s)
	d.ringMu.Unlock()
}

// Recent returns the per-second history of the open disk's reads and
// writes over the last RecentWindow, oldest first, from the counters the
// metrics count: nil for a disk that is not open. A disk's history begins
// when it opens.
func (h *Host) Recent(vm, disk string) []Point {
	d := h.disk(vm, disk)
	if d == nil {
		return nil
	}
	d.ringMu.Lock()
	defer d.ringMu.Unlock()
	if d.ring.n < 2 {
		return []Point{}
	}
	out := make([]Point, 0, d.ring.n-1)
	for i := 1; i < d.ring.n; i++ {
		a, b := d.ring.at(i-1), d.ring.at(i)
		secs := b.t.Sub(a.t).Seconds()
		if secs <= 0 {
			continue
		}
		p := Point{T: b.t}
		if n := b.reads - a.reads; n > 0 {
			p.ReadOps = float64(n) / secs
			p.ReadLatency = time.Duration((b.readNanos - a.readNanos) / int64(n))
		}
		if n := b.writes - a.writes; n > 0 {
			p.WriteOps = float64(n) / secs
			p.WriteLatency = time.Duration((b.writeNanos - a.writeNanos) / int64(n))
		}
		out = append(out, p)
	}
	return out
}

// sampleLoop samples every open disk every period until Close.
func (h *Host) sampleLoop(sampleEvery time.Duration) {
	defer close(h.done)
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	var disks []*diskIO // reused: no allocation once it is large enough
	for {
		select {
		case <-h.stop:
			return
		case now := <-t.C:
			disks = h.openDisks(disks[:0])
			for _, d := range disks {
				d.sample(now)
			}
			clear(disks)
		}
	}
}

// totals reads a latency histogram's count and sum (in nanoseconds).
func totals(o prometheus.Observer) (n uint64, nanos int64) {
	m, ok := o.(prometheus.Metric)
	if !ok {
		return 0, 0
	}
	var pb dto.Metric
	if err := m.Write(&pb); err != nil || pb.Histogram == nil {
		return 0, 0
	}
	return pb.Histogram.GetSampleCount(), int64(pb.Histogram.GetSampleSum() * float64(time.Second))
}
