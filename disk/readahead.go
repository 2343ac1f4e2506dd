package disk

import "sync"

// Read-ahead for a guest that reads a disk sequentially in large requests
// with one request in flight (fio's psync, dd, a VM copying a file). Such a
// request otherwise waits for the whole of its decryption, and while its
// reply travels to the guest and the next request comes back, the cores
// have nothing to do. When a read of at least aheadMin bytes continues
// exactly where the previous one ended and no other read is in progress,
// the engine reads and opens the next ranges of the same length in the
// background; a read that asks for exactly the first of them takes it.
//
// A read-ahead is used only when no write or discard of the disk has ended
// since it started (Disk.gen), so a read never returns data older than a
// write that completed before the read was issued. It holds the plaintext
// of a few requests per disk, like request buffers do, and is dropped on
// Close and whenever the reader leaves the stream. Its failures raise no
// integrity alarm: the read that needs the range reads it again and reports
// what it finds.

// aheadMin is the smallest request that starts a read-ahead. Shorter
// sequential reads are not spread over several cores either (parallelMin)
// and gain little from running one request ahead.
const aheadMin = 128 << 10

// A sequential reader has up to aheadDepth ranges read ahead, and at most
// aheadBytes in all. With one range ahead, the next request still waits for
// most of its decryption; with three, the two cores are kept busy (see
// docs/PERFORMANCE.md).
const (
	aheadDepth = 3
	aheadBytes = 4 << 20
)

// readAheadState is a disk's sequential-read tracking, under mu.
type readAheadState struct {
	mu    sync.Mutex
	next  int64    // where the last read ended
	queue []*ahead // read-aheads in progress or done and not taken yet, in stream order
	hits  uint64   // reads served from a read-ahead
}

// ahead is one read-ahead of len(*buf) bytes at off.
type ahead struct {
	off  int64
	buf  *[]byte
	gen  uint64        // Disk.gen when it started
	done chan struct{} // closed when it has ended
	err  error         // set before done is closed
	// Under readAheadState.mu: ended once it has ended, dropped once no
	// reader will take it (whoever comes second returns buf to the pool).
	ended, dropped bool
}

// readAhead returns the read-ahead of exactly n bytes at off when there is
// a valid one, and starts the next; the caller owns the returned buffer.
func (d *Disk) readAhead(off int64, n int) *ahead {
	a := d.takeAhead(off, n)
	if a == nil {
		return nil
	}
	<-a.done
	ok := a.err == nil && a.gen == d.gen.Load() && d.usable(off/BlockSize) == nil
	if !ok {
		d.putBuf(a.buf)
		d.dropAhead()
		return nil
	}
	// Start the next range now, so that it overlaps this one's way back to
	// the guest.
	d.readDone(off, n)
	d.ra.mu.Lock()
	d.ra.hits++
	d.ra.mu.Unlock()
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
		return a
	}
	d.dropAllLocked()
	return nil
}

// dropAllLocked gives up every read-ahead; ra.mu is held.
func (d *Disk) dropAllLocked() {
	for i, a := range d.ra.queue {
		if a.ended {
			d.putBuf(a.buf)
		} else {
			a.dropped = true // its goroutine returns the buffer when it ends
		}
		d.ra.queue[i] = nil
	}
	d.ra.queue = d.ra.queue[:0]
}

// readDone records a completed read of n bytes at off. When the read
// continued the previous one, is long enough and is the only read in
// progress, it starts reading ahead the ranges of n bytes that follow, up to
// aheadDepth of them, inside the disk.
func (d *Disk) readDone(off int64, n int) {
	d.ra.mu.Lock()
	defer d.ra.mu.Unlock()
	seq := d.ra.next == off && off > 0
	d.ra.next = off + int64(n)
	if !seq || n < aheadMin || d.reading.Load() != 1 || d.closed.Load() {
		return
	}
	depth := min(aheadDepth, max(1, aheadBytes/n))
	next := off + int64(n)
	if k := len(d.ra.queue); k > 0 {
		next = d.ra.queue[k-1].off + int64(n)
	}
	for len(d.ra.queue) < depth && next+int64(n) <= d.size.Load() {
		a := &ahead{off: next, buf: d.getBuf(n), gen: d.gen.Load(), done: make(chan struct{})}
		d.ra.queue = append(d.ra.queue, a)
		go d.runAhead(a)
		next += int64(n)
	}
}

func (d *Disk) runAhead(a *ahead) {
	_, err := d.readRange(*a.buf, a.off, true)
	d.ra.mu.Lock()
	a.err, a.ended = err, true
	if a.dropped {
		d.putBuf(a.buf)
	}
	d.ra.mu.Unlock()
	close(a.done)
}

// dropAhead drops every read-ahead (a stale one, Close).
func (d *Disk) dropAhead() {
	d.ra.mu.Lock()
	defer d.ra.mu.Unlock()
	d.dropAllLocked()
}
