package disk

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// The read window: a short read of a version 2 or 3 chunk may read the
// aligned readWindow pages of its slot around it, one call instead of one,
// so that when a neighbouring block is read next its page is already where
// the backend keeps what it read (the kernel's page cache for local
// storage). That pays only on a backend that keeps it: on one that keeps
// nothing near the caller (RADOS: the OSD reads its block file again) the
// neighbour's read costs what any read costs, and the window only multiplies
// the bytes each read fetches.
//
// So the engine watches its own reads. It remembers the pages it read
// around in the last windowAge (seen) and times every short read: one that
// asks for such a page is "covered", any other is not. A read is "fast"
// when it took at most fastFactor times what the median covered read took
// in the stretch of reads before: on local storage, where covered reads
// are page-cache hits, that tells a hit from a trip to the device; on a
// store where every read is a trip, covered or not, most reads of either
// kind are fast by it. The window pays by the share of reads it turns
// fast: when covered reads are fast clearly more often than the others, the
// window is on; when hardly more often, it is off, whether because the
// store keeps nothing (RADOS) or because nearly everything is kept already
// (a page cache that holds the whole disk, where the window's only effect
// is to copy 28 KiB more per read). Both shares come from the same stretch
// of reads, so a busier or quieter store moves both alike. While the window
// is off, one short read in probeEvery still reads its window, so that
// covered reads go on being observed and a backend that starts keeping
// pages (a page cache emptied, then filling) turns it on again; after a
// pause in the reads, or a jump of the covered reads' median (windowJump),
// it is on at once.
//
// The choice is made from what the reads cost, never from which backend
// this is: a remote store with a cache of its own may well earn the window.
//
// How a window is read depends on the chunk. One that takes prefetch hints
// (storage.Prefetcher: a local file, whose pages the kernel reads ahead on
// request) is asked to fetch the window in the background, and the read
// reads and waits for its own pages only: a read whose page is in the page
// cache is not held up by a neighbour that is not, and no neighbour is
// copied. Any other chunk is read the whole window in one call.

// readWindow is how many pages around a short read its window holds
// (aligned, within the slot's pages of the chunk).
const readWindow = 8

const (
	// windowPeriod is how many covered reads each period looks at while
	// the window is on (a quarter of it while off); a change of the
	// window takes two periods in a row that ask for it.
	windowPeriod = 128
	// windowMinOthers is how many other reads a decision needs beside
	// them; with fewer the period is dropped and nothing changes.
	windowMinOthers = 16
	// probeEvery: while the window is off, one short read in probeEvery
	// still reads it. On a store that keeps nothing this adds 7/8 of a
	// window's bytes to one read in 64, 0.44 KiB per 4 KiB read on average.
	probeEvery = 64
	// 1<<seenBits recent windows are remembered, 8 bytes each.
	seenBits = 11
	// fastFactor: a read is fast when it took at most this many times
	// the median covered read of the period before (to a power of two).
	fastFactor = 2
	// The window goes on when covered reads are fast more often than the
	// others by windowOn (a share, in percent), off when by less than
	// windowOff. A read around brings in seven neighbours and costs a
	// copy of 28 KiB (about 2 µs from the page cache) on every read: on
	// local storage it pays while more than a few percent of the reads
	// still go to the device, so it goes off only when hardly any do.
	// On a store that keeps nothing both shares are the same but for
	// the noise of 32 covered samples while off (about 5 points), and
	// turning on needs two periods in a row over the line: now and then
	// it does, for two periods of windows.
	windowOn  = 8
	windowOff = 2
)

// windowMode fixes the choice, for tests and benchmarks that compare the
// two; a disk observes (windowObserved) unless told otherwise.
type windowMode int32

const (
	windowObserved windowMode = iota
	windowAlways
	windowNever
)

// windowAge is how long a window counts for: a page read around longer ago
// is no longer looked for, so that a page cache emptied since (between two
// jobs, say) does not make old windows look as if they did not pay. It is
// time, not a number of reads, for that reason: a pause in the reads is
// when such things happen.
const windowAge = 500 * time.Millisecond

// windowJump: when the median covered read takes this many times what it
// took in the period before, what the store kept is gone (a page cache
// emptied without a pause in the reads): the windows seen are forgotten and
// the window is on, as after a pause. A page-cache hit (a few µs) and a
// trip to a local device (100 µs or more) differ by more than that. A
// store that keeps nothing moves its median less, but a sudden change of
// load can (a store behind Go's sleep timer jumped 8× from one period to
// the next in BenchmarkReadWindow), and costs two periods of windows.
const windowJump = 16

// readWindows is a disk's record of its read windows. Every field is an
// atomic: short reads update it without a lock.
type readWindows struct {
	// Read by every short read, written seldom.
	mode   atomic.Int32 // windowMode
	off    atomic.Bool  // observed: short reads read only their pages
	median atomic.Int64 // the median covered time of the period before (0: none yet)
	votes  atomic.Int32 // periods in a row that asked for a change
	flips  atomic.Uint64
	last   atomic.Uint64 // the stamp of the last short read
	_      [24]byte      // the counters below, written by every short read, on lines of their own

	// reads counts short reads while off: one in probeEvery probes.
	reads atomic.Uint64
	// The current period's samples: how many covered reads and how many
	// of them were fast; the same of the others, as count<<32 | fast;
	// and the covered reads' times, counted by their bit length in
	// nanoseconds.
	covN, covFast atomic.Int64
	oth           atomic.Int64
	covTimes      [64]atomic.Int64

	// seen holds recent windows, one per slot of a small hash table:
	// tag<<24 | stamp<<8 | a bit for each page read around and not yet
	// asked for, where stamp is when it was read (see stamp).
	seen [1 << seenBits]atomic.Uint64
}

// windowTag names the window of block w0 (a multiple of readWindow) in
// slot s of chunk ci, in 40 bits (two windows may share one: a mistaken
// sample at most).
func windowTag(ci int64, s, w0 int) uint64 {
	return (uint64(ci)&(1<<26-1))<<14 | uint64(s)<<13 | uint64(w0/readWindow)&(1<<13-1)
}

func (w *readWindows) slot(tag uint64) *atomic.Uint64 {
	return &w.seen[(tag*0x9e3779b97f4a7c15)>>(64-seenBits)]
}

// stamp is a time on the disk's monotonic clock in units of 2^24 ns
// (16.8 ms), 16 bits of it: it comes round every 18 minutes, when a window
// that old, if still in seen, would count once more by mistake.
func stamp(t time.Duration) uint64 { return uint64(t) >> 24 & 0xffff }

// covered reports whether pages [i, i+n) of the window tag were all read
// around within windowAge before now and not asked for since, and forgets
// them: the window earned them once, a second read of the page owes it
// nothing.
func (w *readWindows) covered(tag uint64, i, n int, now time.Duration) bool {
	s := w.slot(tag)
	e := s.Load()
	if e>>24 != tag || (stamp(now)-e>>8)&0xffff > uint64(windowAge)>>24 {
		return false
	}
	mask := uint64(1<<n-1) << i
	if e&mask != mask {
		return false
	}
	s.CompareAndSwap(e, e&^mask) // lost to a concurrent change: no matter
	return true
}

// remember records that a read at now read the window tag for pages
// [i, i+n) of it, of pages pages.
func (w *readWindows) remember(tag uint64, i, n, pages int, now time.Duration) {
	around := uint64(1<<pages-1) &^ (uint64(1<<n-1) << i)
	if around != 0 {
		w.slot(tag).Store(tag<<24 | stamp(now)<<8 | around)
	}
}

// choose tells how the next short read goes: whether it reads its window,
// whether it is watched (checked against the windows seen, and its window
// remembered), and whether its time belongs to the period's samples (a
// probe's does not: it is not the kind of read the others are). A watched
// read starts at now, read from clock.
//
// After a pause of windowAge without short reads the window is on again,
// as on a disk just opened: what made it go off may have changed meanwhile
// (a page cache emptied), and the probes of a window that is off would
// take seconds to show it.
func (w *readWindows) choose(clock func() time.Duration) (wide, watched, sampled bool, now time.Duration) {
	switch windowMode(w.mode.Load()) {
	case windowAlways:
		return true, false, false, 0
	case windowNever:
		return false, false, false, 0
	}
	now = clock()
	if t, last := stamp(now), w.last.Load(); t != last {
		if (t-last)&0xffff > uint64(windowAge)>>24 && w.off.Load() {
			w.votes.Store(0)
			w.median.Store(0)
			w.off.Store(false)
		}
		w.last.Store(t)
	}
	if !w.off.Load() {
		return true, true, true, now
	}
	if w.reads.Add(1)%probeEvery == 0 {
		return true, true, false, now
	}
	return false, true, true, now
}

// periodEnd is what sample reports of the period a read closed: whether
// the window was turned on or off (flipped), with the period's shares in
// percent of fast covered and other reads; or whether the choice started
// over (restart: the covered reads' median jumped windowJump times), with
// the medians before and now. The zero value: nothing changed.
type periodEnd struct {
	flipped, restart bool
	covPct, othPct   int64
	before, now      time.Duration
}

// sample adds one short read of the current kind, which took took, and
// says what changed if it closed a period.
func (w *readWindows) sample(covered bool, took time.Duration) periodEnd {
	t := max(int64(took), 1)
	fast := int64(0)
	if m := w.median.Load(); m != 0 && t <= fastFactor*m {
		fast = 1
	}
	if !covered {
		w.oth.Add(1<<32 | fast)
		return periodEnd{}
	}
	w.covTimes[bits.Len64(uint64(t))].Add(1)
	w.covFast.Add(fast)
	n := w.covN.Add(1)
	period := int64(windowPeriod)
	if w.off.Load() {
		// Covered reads are rare while off (only probes make them):
		// shorter periods, so that a page cache being filled again is
		// seen within a second.
		period = windowPeriod / 4
	}
	if n < period || !w.covN.CompareAndSwap(n, 0) {
		return periodEnd{}
	}
	// This read closes the period; samples added meanwhile by others fall
	// into either period, which is no matter for a share.
	covFast, o := w.covFast.Swap(0), w.oth.Swap(0)
	othN, othFast := o>>32, o&(1<<32-1)
	var times [64]int64
	total := int64(0)
	for b := range times {
		times[b] = w.covTimes[b].Swap(0)
		total += times[b]
	}
	median := int64(0)
	for b, seen := 0, int64(0); b < len(times); b++ {
		if seen += times[b]; 2*seen >= total {
			median = 1 << b // the top of the bucket: times of bit length b are below 2^b
			break
		}
	}
	prev := w.median.Swap(median)
	if prev != 0 && median >= windowJump*prev {
		for i := range w.seen {
			w.seen[i].Store(0)
		}
		w.votes.Store(0)
		flipped := w.off.CompareAndSwap(true, false)
		if flipped {
			w.flips.Add(1)
		}
		return periodEnd{flipped: flipped, restart: true, before: time.Duration(prev), now: time.Duration(median)}
	}
	if prev == 0 || othN < windowMinOthers {
		return periodEnd{}
	}
	cov, oth := 100*covFast/n, 100*othFast/othN
	ask := cov-oth > windowOn
	if !w.off.Load() {
		ask = cov-oth < windowOff
	}
	if !ask {
		w.votes.Store(0)
		return periodEnd{}
	}
	if w.votes.Add(1) < 2 {
		return periodEnd{}
	}
	w.votes.Store(0)
	off := w.off.Load()
	if !w.off.CompareAndSwap(off, !off) {
		return periodEnd{}
	}
	w.flips.Add(1)
	return periodEnd{flipped: true, covPct: cov, othPct: oth}
}
