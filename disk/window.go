package disk

import (
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
// around in its last windowAge short reads (seen) and times every short
// read: one that asks for such a page is "covered", any other is not. When covered
// reads come back no faster than the others, the backend keeps nothing the
// window could give, and short reads read only their own pages; when they
// come back clearly faster, the window is on. Both are measured over the
// same stretch of reads, so a busier or quieter store moves both alike.
// While the window is off, one short read in probeEvery still reads its
// window, so that covered reads go on being observed and a backend that
// starts keeping pages (a page cache emptied, then filling) turns it on
// again.
//
// The choice is made from what the reads cost, never from which backend
// this is: a remote store with a cache of its own may well earn the window.

// readWindow is how many pages around a short read its window holds
// (aligned, within the slot's pages of the chunk).
const readWindow = 8

const (
	// windowPeriod is how many covered reads each decision looks at.
	windowPeriod = 64
	// windowMinOthers is how many other reads a decision needs beside
	// them; with fewer the period is dropped and nothing changes.
	windowMinOthers = 16
	// probeEvery: while the window is off, one short read in probeEvery
	// still reads it. On a store that keeps nothing this adds 7/8 of a
	// window's bytes to one read in 64, 0.44 KiB per 4 KiB read on average.
	probeEvery = 64
	// 1<<seenBits recent windows are remembered, 8 bytes each.
	seenBits = 11
)

// windowMode fixes the choice, for tests and benchmarks that compare the
// two; a disk observes (windowObserved) unless told otherwise.
type windowMode int32

const (
	windowObserved windowMode = iota
	windowAlways
	windowNever
)

// windowAge is how many short reads a window counts for: a page read around
// longer ago is no longer looked for, as a page cache emptied since (or a
// store changed) would make old windows look as if they did not pay.
const windowAge = 8192

// readWindows is a disk's record of its read windows. Every field is an
// atomic: short reads update it without a lock.
type readWindows struct {
	mode  atomic.Int32  // windowMode
	off   atomic.Bool   // observed: short reads read only their pages
	votes atomic.Int32  // periods in a row that voted to flip off
	reads atomic.Uint64 // short reads watched

	// The current period's samples: count and total time of covered
	// reads, and of the others.
	covN, covT, othN, othT atomic.Int64
	flips                  atomic.Uint64

	// seen holds recent windows, one per slot of a small hash table:
	// tag<<24 | stamp<<8 | a bit for each page read around and not yet
	// asked for, where stamp is reads/64 when it was read (16 bits).
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

func stamp(reads uint64) uint64 { return reads >> 6 & 0xffff }

// covered reports whether pages [i, i+n) of the window tag were all read
// around by one of the last windowAge reads and not asked for since, and
// forgets them: the window earned them once, a second read of the page owes
// it nothing. now is the read's number.
func (w *readWindows) covered(tag uint64, i, n int, now uint64) bool {
	s := w.slot(tag)
	e := s.Load()
	if e>>24 != tag || (stamp(now)-e>>8)&0xffff > windowAge>>6 {
		return false
	}
	bits := uint64(1<<n-1) << i
	if e&bits != bits {
		return false
	}
	s.CompareAndSwap(e, e&^bits) // lost to a concurrent change: no matter
	return true
}

// remember records that read number now read the window tag for pages
// [i, i+n) of it, of pages pages.
func (w *readWindows) remember(tag uint64, i, n, pages int, now uint64) {
	around := uint64(1<<pages-1) &^ (uint64(1<<n-1) << i)
	if around != 0 {
		w.slot(tag).Store(tag<<24 | stamp(now)<<8 | around)
	}
}

// choose tells how the next short read goes: whether it reads its window,
// whether it is watched (checked against the windows seen, and its window
// remembered; now is then its number), and whether its time belongs to the
// period's samples (a probe's does not: it is not the kind of read the
// others are).
func (w *readWindows) choose() (wide, watched, sampled bool, now uint64) {
	switch windowMode(w.mode.Load()) {
	case windowAlways:
		return true, false, false, 0
	case windowNever:
		return false, false, false, 0
	}
	now = w.reads.Add(1)
	if !w.off.Load() {
		return true, true, true, now
	}
	if now%probeEvery == 0 {
		return true, true, false, now
	}
	return false, true, true, now
}

// sample adds the time of one short read of the current kind.
func (w *readWindows) sample(covered bool, took time.Duration) {
	if !covered {
		w.othT.Add(int64(took))
		w.othN.Add(1)
		return
	}
	w.covT.Add(int64(took))
	n := w.covN.Add(1)
	if n < windowPeriod || !w.covN.CompareAndSwap(n, 0) {
		return
	}
	// This read closes the period; samples added meanwhile by others fall
	// into either period, which is no matter for an average.
	covT, othT, othN := w.covT.Swap(0), w.othT.Swap(0), w.othN.Swap(0)
	if othN < windowMinOthers {
		return
	}
	cov, oth := covT/n, othT/othN
	if w.off.Load() {
		// On when covered reads take less than half the time of others.
		if 2*cov < oth && w.off.CompareAndSwap(true, false) {
			w.flips.Add(1)
		}
		return
	}
	// Off when they do not take a third less, two periods in a row.
	// Between the two lines the window stays as it is, so that a ratio
	// near either does not flip it at every period.
	if 3*cov < 2*oth {
		w.votes.Store(0)
		return
	}
	if w.votes.Add(1) >= 2 && w.off.CompareAndSwap(false, true) {
		w.votes.Store(0)
		w.flips.Add(1)
	}
}
