package cache

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultSequentialCutoff is Options.SequentialCutoff's default: a stream
// of sequential I/O on one chunk object bypasses the cache from its first
// 512 KiB on, and so does any single I/O of that size.
const DefaultSequentialCutoff = 512 << 10

// DefaultSlowStorage is Options.SlowStorage's default: random I/O is
// cached while the remote's small calls take at least 250 µs. A local
// SSD or the page cache answers a 4 KiB call in well under 100 µs; a
// store across a network takes 0.5–2 ms.
const DefaultSlowStorage = 250 * time.Microsecond

const (
	// smallCall is the largest remote call whose duration counts as a
	// latency sample: larger calls measure bandwidth as well.
	smallCall = 64 << 10
	// latencyWindow is how many samples a window of the estimator holds.
	latencyWindow = 32
	// streamsPerObject is how many sequential streams an object tracks.
	streamsPerObject = 4
)

// policy decides what the cache takes in, from what it observes: the
// pattern of the I/O on each object (sequential streams bypass, as with
// bcache's sequential cut-off) and the measured latency of the remote
// (random I/O is cached only while the remote is slower than the cache by
// enough to pay for the cache's own work). It never looks at what the
// remote is.
type policy struct {
	cutoff int64         // <= 0: no sequential cut-off
	slow   time.Duration // < 0: always slow

	// win is the current window: how many samples it has (the bits from
	// winShift up) and the fastest of them (ns, the bits below). Samples go in
	// with one compare-and-swap, without a lock: every remote call of a
	// random I/O lands here.
	win      atomic.Uint64
	mu       sync.Mutex    // held to close a window
	prev     time.Duration // fastest sample of the previous window; 0 before one closed
	estimate atomic.Int64  // the remote's latency (ns): the fastest of the last one or two windows
	isSlow   atomic.Bool   // random I/O is cached
	bypassed atomic.Int64
	log      *slog.Logger // debug: random I/O starts or stops going through the cache
}

func newPolicy(o Options) *policy {
	p := &policy{cutoff: o.SequentialCutoff, slow: o.SlowStorage, log: o.Logger}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.cutoff == 0 {
		p.cutoff = DefaultSequentialCutoff
	}
	if p.slow == 0 {
		p.slow = DefaultSlowStorage
	}
	// Until the remote has answered, it is taken to be as fast as the
	// cache: the first I/O costs what it would without a cache.
	p.isSlow.Store(p.slow < 0)
	return p
}

// observe records the duration of a remote read or write of n bytes.
// The fastest small call of a window is the estimate, because calls that
// queue behind others (a libaio queue of 32 on a local disk) take longer
// than the store's own latency; a remote far away is never fast.
func (p *policy) observe(d time.Duration, n int) {
	if n > smallCall || p.slow < 0 {
		return
	}
	ns := uint64(max(d, 0))
	if ns > winFastest {
		ns = winFastest
	}
	for {
		old := p.win.Load()
		cnt, cur := old>>winShift, old&winFastest
		if cnt == 0 || ns < cur {
			cur = ns
		}
		cnt++
		if cnt < latencyWindow {
			if p.win.CompareAndSwap(old, cnt<<winShift|cur) {
				return
			}
			continue
		}
		if p.win.CompareAndSwap(old, 0) {
			p.close(time.Duration(cur))
			return
		}
	}
}

// The layout of policy.win: a count up to latencyWindow above winShift.
const (
	winShift   = 58
	winFastest = 1<<winShift - 1
	_          = uint(1<<(64-winShift) - 1 - latencyWindow) // the count fits
)

// close ends a window whose fastest sample was cur.
func (p *policy) close(cur time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	est := cur
	if p.prev > 0 && p.prev < est {
		est = p.prev
	}
	p.prev = cur
	p.estimate.Store(int64(est))
	// Hysteresis: slow from the threshold up, fast again below half of it.
	slow := p.isSlow.Load()
	switch {
	case est >= p.slow:
		slow = true
	case est < p.slow/2:
		slow = false
	}
	if p.isSlow.Swap(slow) != slow {
		msg := "host cache: random I/O goes around"
		if slow {
			msg = "host cache: random I/O cached"
		}
		p.log.Debug(msg, "storage_latency", est)
	}
}

// clockBase and now time remote calls on the monotonic clock alone, which
// is cheaper to read than time.Now's wall clock and monotonic clock both.
var clockBase = time.Now()

func now() time.Duration { return time.Since(clockBase) }

// latency is the remote's measured latency, 0 before enough samples.
func (p *policy) latency() time.Duration { return time.Duration(p.estimate.Load()) }

// admit reports whether an I/O of n bytes at off in o goes through the
// cache (true) or around it, and counts it in the object's streams.
func (p *policy) admit(o *object, off, n int64) bool {
	seq := o.streams.add(off, n, p.cutoff)
	if seq || !p.isSlow.Load() {
		p.bypassed.Add(1)
		return false
	}
	return true
}

// streams tracks the last few sequential streams of I/O on an object.
type streams struct {
	mu   sync.Mutex
	tick uint64
	s    [streamsPerObject]struct {
		next, run int64
		used      uint64
	}
}

// add records [off, off+n) and reports whether it belongs to a sequential
// stream of at least cutoff bytes: it continues a stream (starts where one
// ended) that reaches cutoff with it, or is that large by itself.
func (t *streams) add(off, n, cutoff int64) bool {
	if cutoff <= 0 {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tick++
	lru := 0
	for i := range t.s {
		s := &t.s[i]
		if s.run > 0 && s.next == off {
			s.run += n
			s.next = off + n
			s.used = t.tick
			return s.run >= cutoff
		}
		if s.used < t.s[lru].used {
			lru = i
		}
	}
	s := &t.s[lru]
	s.next, s.run, s.used = off+n, n, t.tick
	return n >= cutoff
}
