package disk

import (
	"sync"
	"sync/atomic"
)

// Read-ahead for a guest that reads a disk sequentially in large requests
// with one request in flight (fio's psync, dd, a VM copying a file). Such a
// request otherwise waits for the whole of its decryption, and while its
// reply travels to the guest and the next request comes back, the cores
// have nothing to do. When a read of at least aheadMin bytes (a long read)
// continues exactly where the previous long read ended and no other long
// read is in progress, the engine reads and opens the next ranges of the
// same length in the background; a long read that asks for exactly the
// first of them takes it, a long read of anything else drops them. Short
// reads take no part: they touch no state shared by the disk's readers.
//
// A write or discard, once it has changed the disk, drops the read-aheads
// its range overlaps (and those after them), so a read never returns data
// older than a write that completed before the read was issued (see
// changed). Read-aheads hold the plaintext of a few requests per disk, like
// request buffers do; they are also dropped when the reader leaves the
// stream, at a read after the lease has run out and on Close. Their
// failures raise no integrity alarm: the read that needs the range reads it
// again and reports what it finds.

// aheadMin is the smallest request that takes part in the read-ahead. A
// shorter one costs little to open next to its way to the guest and back,
// and keeping it out keeps small reads off the read-ahead's shared state.
const aheadMin = 128 << 10

// A sequential reader has up to aheadDepth ranges read ahead, and at most
// aheadBytes in all. With one range ahead, the next request still waits for
// most of its decryption; with three, the two cores are kept busy (see
// docs/PERFORMANCE.md).
const (
	aheadDepth = 3
	aheadBytes = 4 << 20
)

// aheadBudget is how many bytes the read-aheads of all disks of the process
// may hold at once, and aheadUsed how many they hold. Many disks streaming
// at once keep the cores busy without read-ahead; they would only add
// memory.
var (
	aheadBudget int64 = 16 << 20
	aheadUsed   atomic.Int64
)

// freeAhead returns a read-ahead's buffer to the pool and its bytes to the
// budget.
func (d *Disk) freeAhead(a *ahead) {
	aheadUsed.Add(-int64(len(*a.buf)))
	d.putBuf(a.buf)
}

// readAheadState is a disk's sequential-read tracking: next and queue are
// under mu.
type readAheadState struct {
	mu    sync.Mutex
	next  int64         // where the last read ended
	queue []*ahead      // read-aheads in progress or done and not taken yet, in stream order
	hits  atomic.Uint64 // reads served from a read-ahead
	// queued is len(queue), for writers to read without the lock.
	queued atomic.Int32
}

// ahead is one read-ahead of len(*buf) bytes at off.
type ahead struct {
	off  int64
	buf  *[]byte
	done chan struct{} // closed when it has ended
	err  error         // set before done is closed
	// Under readAheadState.mu: ended once it has ended, dropped once no
	// reader will take it (whoever comes second returns buf to the pool).
	ended, dropped bool
	released       atomic.Bool // the reader that took it gave buf back
}

// release gives back the buffer of a read-ahead a reader took; only the
// first call does.
func (d *Disk) release(a *ahead) {
	if a.released.CompareAndSwap(false, true) {
		d.freeAhead(a)
	}
}

// readAhead returns the read-ahead of exactly n bytes at off when there is
// a valid one, and starts the next; the caller owns the returned buffer.
func (d *Disk) readAhead(off int64, n int) *ahead {
	a := d.takeAhead(off, n)
	if a == nil {
		return nil
	}
	<-a.done
	if a.err != nil || d.usable(off/BlockSize) != nil {
		d.release(a)
		d.dropAhead()
		return nil
	}
	// Start the next range now, so that it overlaps this one's way back to
	// the guest.
	d.readDone(off, n)
	d.ra.hits.Add(1)
	return a
}

// takeAhead returns the first read-ahead when it covers exactly n bytes at
// off; otherwise every read-ahead is dropped.
func (d *Disk) takeAhead(off int64, n int) *ahead {
	d.ra.mu.Lock()
	defer d.ra.mu.Unlock()
	if len(d.ra.queue) == 0 {
		return nil
	}
	if a := d.ra.queue[0]; a.off == off && len(*a.buf) == n {
		d.ra.queue = append(d.ra.queue[:0], d.ra.queue[1:]...)
		d.ra.queued.Store(int32(len(d.ra.queue)))
		return a
	}
	d.dropFromLocked(0)
	return nil
}

// dropFromLocked gives up the read-aheads from queue[i] on; ra.mu is held.
func (d *Disk) dropFromLocked(i int) {
	for j, a := range d.ra.queue[i:] {
		if a.ended {
			d.freeAhead(a)
		} else {
			a.dropped = true // its goroutine returns the buffer when it ends
		}
		d.ra.queue[i+j] = nil
	}
	d.ra.queue = d.ra.queue[:i]
	d.ra.queued.Store(int32(i))
}

// changed is called by a write or discard of [off, off+n) once it has
// changed the disk (and released its locks), before it returns: it drops the
// read-aheads that overlap the range, and those after them. A read-ahead it
// does not see cannot be stale. Either the read-ahead read every block of
// the range after the change (the stripe locks order them), or it read one
// before: then it was queued before that read, the writer's lock of that
// stripe came after the read, and this check after the lock, so queued
// shows it. A read-ahead that a reader took before this check serves a read
// that was issued before the write completed.
func (d *Disk) changed(off, n int64) {
	if d.ra.queued.Load() == 0 {
		return
	}
	d.ra.mu.Lock()
	defer d.ra.mu.Unlock()
	for i, a := range d.ra.queue {
		if a.off < off+n && off < a.off+int64(len(*a.buf)) {
			d.dropFromLocked(i)
			return
		}
	}
}

// readDone records a completed long read of n bytes at off. When the read
// continued the previous one and is the only long read in progress, it
// starts reading ahead the ranges of n bytes that follow, up to aheadDepth
// of them (aheadBytes in all), inside the disk and within aheadBudget.
func (d *Disk) readDone(off int64, n int) {
	d.ra.mu.Lock()
	defer d.ra.mu.Unlock()
	seq := d.ra.next == off && off > 0
	d.ra.next = off + int64(n)
	if !seq || n > aheadBytes || d.reading.Load() != 1 || d.closed.Load() {
		return
	}
	depth := min(aheadDepth, aheadBytes/n)
	next := off + int64(n)
	if k := len(d.ra.queue); k > 0 {
		next = d.ra.queue[k-1].off + int64(n)
	}
	for len(d.ra.queue) < depth && next+int64(n) <= d.size.Load() {
		if aheadUsed.Add(int64(n)) > aheadBudget {
			aheadUsed.Add(-int64(n))
			return
		}
		a := &ahead{off: next, buf: d.getBuf(n), done: make(chan struct{})}
		d.ra.queue = append(d.ra.queue, a)
		d.ra.queued.Store(int32(len(d.ra.queue)))
		go d.runAhead(a)
		next += int64(n)
	}
}

func (d *Disk) runAhead(a *ahead) {
	_, err := d.readRange(*a.buf, a.off, true)
	d.ra.mu.Lock()
	a.err, a.ended = err, true
	if a.dropped {
		d.freeAhead(a)
	}
	d.ra.mu.Unlock()
	close(a.done)
}

// dropAhead drops every read-ahead (a stale one, Close).
func (d *Disk) dropAhead() {
	d.ra.mu.Lock()
	defer d.ra.mu.Unlock()
	d.dropFromLocked(0)
}
