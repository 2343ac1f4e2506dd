package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"hostcrypt/storage"
)

var errHandleClosed = errors.New("cache: chunk handle closed")

// chunk is a handle on a cached chunk object.
type chunk struct {
	c      *Cache
	o      *object
	closed atomic.Bool
}

var _ storage.Chunk = (*chunk)(nil)

func (h *chunk) live() error {
	switch {
	case h.closed.Load():
		return errHandleClosed
	case h.c.closed.Load():
		return storage.ErrClosed
	case h.o.deleted.Load():
		return fmt.Errorf("cache: chunk %s was deleted", h.o.key)
	}
	return nil
}

// span calls fn for every page that [off, off+n) touches, with the byte
// range of the page it covers, relative to off and to the page.
func span(off, n int64, fn func(pn, lo, hi, inPage int64) error) error {
	for pn := off / PageSize; pn*PageSize < off+n; pn++ {
		start := pn * PageSize
		lo, hi := max(off, start), min(off+n, start+PageSize)
		if err := fn(pn, lo-off, hi-off, lo-start); err != nil {
			return err
		}
	}
	return nil
}

// Prefetch passes the hint on to the remote chunk, when it takes one: it
// changes no data, so it needs none of the cache's bookkeeping.
func (h *chunk) Prefetch(off, n int64) bool {
	return h.live() == nil && storage.Prefetch(h.o.remote, off, n)
}

func (h *chunk) ReadAt(p []byte, off int64) (int, error) {
	_, n, err := h.read(p, off, nil)
	return n, err
}

// read is ReadAt. With lend set, a read that goes straight to the remote
// calls lend instead, which may answer with a buffer of its own (data,
// release); otherwise data is nil.
func (h *chunk) read(p []byte, off int64, lend lendFunc) (lent, int, error) {
	if off < 0 {
		return lent{}, 0, fmt.Errorf("read chunk %s: negative offset %d", h.o.key, off)
	}
	if err := h.live(); err != nil {
		return lent{}, 0, err
	}
	if len(p) == 0 {
		return lent{}, 0, nil
	}
	c, o := h.c, h.o
	admit := c.pol.admit(o, off, int64(len(p)))
	// A read around the cache goes straight to the remote when the remote
	// holds every completed write: always in ReadOnly (writes reach the
	// remote first), and in ReadWrite when the object has no cached page
	// (so none dirty) as the read starts. A page that turns dirty while it
	// runs belongs to a write that is concurrent with it.
	if !admit && (c.mode == ReadOnly || o.npages.Load() == 0) {
		if lend != nil {
			t := now()
			l, err := lend(p, off)
			if err != nil {
				return lent{}, 0, err
			}
			c.pol.observe(now()-t, len(p))
			return l, len(p), nil
		}
		if _, err := c.remoteRead(o, p, off); err != nil {
			return lent{}, 0, err
		}
		return lent{}, len(p), nil
	}
	n, err := h.readCached(p, off, admit)
	return lent{}, n, err
}

// lent is a buffer a remote lent for a read, and how to give it back.
type lent struct {
	data    []byte
	release func()
}

// lendFunc reads like ReadAt into p, or answers with a buffer of its own.
type lendFunc func(p []byte, off int64) (lent, error)

// readCached reads page by page: cached pages from their slots, missing
// ones from the remote, taken in if admit.
func (h *chunk) readCached(p []byte, off int64, admit bool) (int, error) {
	c, o := h.c, h.o
	first := off / PageSize
	var missing []bool
	missLo, missHi, misses := int64(-1), int64(-1), int64(0)
	err := span(off, int64(len(p)), func(pn, lo, hi, inPage int64) error {
		ok, err := c.readPresent(o, pn, p[lo:hi], inPage)
		if err != nil {
			return err
		}
		if ok {
			c.hits.Add(1)
			return nil
		}
		c.misses.Add(1)
		misses++
		if missing == nil {
			missing = make([]bool, (off+int64(len(p))-1)/PageSize-first+1)
		}
		missing[pn-first] = true
		if missLo < 0 {
			missLo = pn
		}
		missHi = pn
		return nil
	})
	if err != nil {
		return 0, err
	}
	if missLo < 0 {
		return len(p), nil
	}
	// Fetch the missing pages, whole, in one remote call: into p itself
	// when they are exactly p's pages (a page-aligned read that found
	// nothing cached), so that the page is read once and copied only into
	// its slot.
	if admit {
		o.fills.Add(1)
		defer o.fills.Add(-1)
	}
	w := o.wgen.Load()
	c.mu.Lock()
	gen := o.gen
	c.mu.Unlock()
	var buf []byte
	direct := off == missLo*PageSize && off+int64(len(p)) == (missHi+1)*PageSize && misses == missHi-missLo+1
	if direct {
		buf = p
	} else {
		buf = make([]byte, (missHi-missLo+1)*PageSize)
	}
	if _, err := c.remoteRead(o, buf, missLo*PageSize); err != nil {
		return 0, err
	}
	err = span(off, int64(len(p)), func(pn, lo, hi, inPage int64) error {
		if !missing[pn-first] {
			return nil
		}
		img := buf[(pn-missLo)*PageSize : (pn-missLo+1)*PageSize]
		if !direct {
			copy(p[lo:hi], img[inPage:])
		}
		if !admit {
			return nil
		}
		_, _, err := c.install(o, pn, img, seen{gen[pn%genBuckets], w}, false, 0, 0, true)
		return err
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// remoteRead and remoteWrite are the remote chunk's calls, timed for the
// policy.
func (c *Cache) remoteRead(o *object, p []byte, off int64) (int, error) {
	t := now()
	n, err := o.remote.ReadAt(p, off)
	if err == nil {
		c.pol.observe(now()-t, len(p))
	}
	return n, err
}

func (c *Cache) remoteWrite(o *object, p []byte, off int64) (int, error) {
	t := now()
	n, err := o.remote.WriteAt(p, off)
	if err == nil {
		c.pol.observe(now()-t, len(p))
	}
	return n, err
}

func (h *chunk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("write chunk %s: negative offset %d", h.o.key, off)
	}
	if err := h.live(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	c, o := h.c, h.o
	if !c.pol.admit(o, off, int64(len(p))) || c.mode == ReadOnly {
		return c.writeAround(o, p, off)
	}
	o.fills.Add(1)
	defer o.fills.Add(-1)
	w := o.wgen.Load()
	pre, gen, err := c.prefetchEdges(o, off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	err = span(off, int64(len(p)), func(pn, lo, hi, inPage int64) error {
		return c.writePage(o, pn, p[lo:hi], inPage, pre[pn], seen{gen[pn%genBuckets], w})
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (h *chunk) PunchHole(off, n int64) error {
	if off < 0 || n < 0 {
		return fmt.Errorf("punch hole in chunk %s: negative range %d+%d", h.o.key, off, n)
	}
	if err := h.live(); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return h.c.punch(h.o, off, n)
}

// Sync: in ReadOnly, the remote chunk's Sync. In ReadWrite, every completed
// write is made durable in the cache (the data file, then the dirty-page
// index), and the remote chunk is synced only if something went to it
// directly (its creation, or a write that found no room in the cache).
// On shared storage (Options.SharedStorage), a ReadWrite Sync writes the
// object's dirty pages back and syncs the remote chunk instead.
func (h *chunk) Sync() error {
	if err := h.live(); err != nil {
		return err
	}
	c, o := h.c, h.o
	if c.mode == ReadOnly {
		return o.remote.Sync()
	}
	if c.shared {
		return c.syncBack(o)
	}
	if err := c.commit(); err != nil {
		return err
	}
	c.mu.Lock()
	rd := o.remoteDirty
	o.remoteDirty = false
	c.mu.Unlock()
	if o.aroundDirty.Swap(false) || rd {
		if err := o.remote.Sync(); err != nil {
			c.mu.Lock()
			o.remoteDirty = true
			c.mu.Unlock()
			return err
		}
	}
	return nil
}

// Close releases the handle. The object's cached pages stay, and its dirty
// pages are still written back.
func (h *chunk) Close() error {
	if h.closed.Swap(true) {
		return errHandleClosed
	}
	return nil
}

// readPresent copies the cached bytes of page pn at inPage into dst, and
// reports false if the page is not cached.
func (c *Cache) readPresent(o *object, pn int64, dst []byte, inPage int64) (bool, error) {
	for {
		c.mu.Lock()
		pg := o.pages[pn]
		if pg != nil && pg.elem != nil {
			c.clean.MoveToFront(pg.elem)
		}
		c.mu.Unlock()
		if pg == nil {
			return false, nil
		}
		pg.rw.RLock()
		if pg.gone.Load() {
			pg.rw.RUnlock()
			continue
		}
		err := c.readSlot(dst, pg.slot, inPage)
		pg.rw.RUnlock()
		return true, err
	}
}

func (c *Cache) readSlot(dst []byte, slot int32, inPage int64) error {
	_, err := c.data.ReadAt(dst, int64(slot)*PageSize+inPage)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF // every slot in use was written whole
	}
	if err != nil {
		return fmt.Errorf("cache %s: read slot %d: %w", c.dir, slot, err)
	}
	return nil
}

func (c *Cache) writeSlot(src []byte, slot int32, inPage int64) error {
	if _, err := c.data.WriteAt(src, int64(slot)*PageSize+inPage); err != nil {
		return fmt.Errorf("cache %s: write slot %d: %w", c.dir, slot, err)
	}
	return nil
}

// writePresent writes src into page pn at inPage if the page is cached,
// marking it dirty when dirty is set, and reports whether it was cached.
func (c *Cache) writePresent(o *object, pn int64, src []byte, inPage int64, dirty bool) (bool, error) {
	for {
		c.mu.Lock()
		pg := o.pages[pn]
		c.mu.Unlock()
		if pg == nil {
			return false, nil
		}
		pg.rw.RLock()
		if pg.gone.Load() {
			pg.rw.RUnlock()
			continue
		}
		err := c.writeSlot(src, pg.slot, inPage)
		if err == nil && dirty {
			c.mu.Lock()
			gone := pg.gone.Load()
			if !gone {
				pg.ver++
				c.markDirty(pg, inPage, inPage+int64(len(src)))
			}
			c.mu.Unlock()
			if gone {
				// Dropped while written (a write around the cache
				// drops clean pages): the write is not in the cache.
				pg.rw.RUnlock()
				continue
			}
		}
		pg.rw.RUnlock()
		return true, err
	}
}

// markDirty records that bytes [lo, hi) of pg were written; called with
// c.mu held.
func (c *Cache) markDirty(pg *page, lo, hi int64) {
	c.changes++
	if pg.dirty {
		pg.lo, pg.hi = min(pg.lo, int32(lo)), max(pg.hi, int32(hi))
		return
	}
	pg.lo, pg.hi = int32(lo), int32(hi)
	pg.dirty = true
	pg.obj.dirty[pg.n] = pg
	c.dirty += PageSize
	if pg.elem != nil {
		c.clean.Remove(pg.elem)
		pg.elem = nil
	}
}

// seen is what a fill saw of the remote's changes before it read a page:
// the page's o.gen bucket and o.wgen.
type seen struct{ gen, w uint64 }

// install caches img (one whole page) as page pn of o, unless the page is
// cached already, the object was deleted, or (with checkSeq) the remote
// changed since the fill saw seq, or changes now, when img may be stale. It reports whether the page
// was installed, and noSlot when the cache had no room for it.
//
// A dirty page records the extent [lo, hi) written in it: write-back
// writes only that, so that it never grows a remote object past what was
// written.
func (c *Cache) install(o *object, pn int64, img []byte, seq seen, dirty bool, lo, hi int64, checkSeq bool) (installed, noSlot bool, err error) {
	slot, ok := c.alloc()
	if !ok {
		return false, true, nil
	}
	if err := c.writeSlot(img, slot, 0); err != nil {
		c.mu.Lock()
		c.release(slot)
		c.mu.Unlock()
		return false, false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if o.deleted.Load() || o.pages[pn] != nil || checkSeq && (o.gen[pn%genBuckets] != seq.gen || o.wt[pn] > 0 ||
		o.arounds.Load() > 0 || o.wgen.Load() != seq.w) {
		c.release(slot)
		return false, false, nil
	}
	pg := &page{obj: o, n: pn, slot: slot}
	c.slots[slot].owner = pg
	c.slots[slot].reserved = false
	o.pages[pn] = pg
	o.npages.Add(1)
	c.cached += PageSize
	if dirty {
		c.markDirty(pg, lo, hi)
	} else {
		pg.elem = c.clean.PushFront(pg)
	}
	return true, false, nil
}

// alloc hands out a slot: a free one, a new one while the data file is
// below its bound, or the slot of the least recently used clean page that
// no request is using and no index names. It never blocks; it reports
// false when all of that fails (only dirty, pinned or busy pages are left).
func (c *Cache) alloc() (int32, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.free); n > 0 {
		s := c.free[n-1]
		c.free = c.free[:n-1]
		c.slots[s].reserved = true
		return s, true
	}
	if int32(len(c.slots)) < c.nslots {
		c.slots = append(c.slots, slotState{reserved: true})
		return int32(len(c.slots) - 1), true
	}
	const maxScan = 64
	e := c.clean.Back()
	for i := 0; e != nil && i < maxScan; i++ {
		pg := e.Value.(*page)
		prev := e.Prev()
		st := &c.slots[pg.slot]
		if !st.inIndex && !st.inPending && pg.rw.TryLock() {
			c.unlink(pg)
			st.owner = nil
			st.reserved = true
			pg.rw.Unlock()
			c.evictions.Add(1)
			return pg.slot, true
		}
		e = prev
	}
	return -1, false
}

// release gives back a slot that its owner or reserver no longer uses;
// called with c.mu held.
func (c *Cache) release(s int32) {
	st := &c.slots[s]
	st.owner = nil
	st.reserved = false
	if st.free() {
		c.free = append(c.free, s)
	}
}

// unlink takes pg out of the cache's maps and lists and marks it gone;
// called with c.mu held. Its slot stays taken until released.
func (c *Cache) unlink(pg *page) {
	o := pg.obj
	if o.pages[pg.n] == pg {
		delete(o.pages, pg.n)
		o.npages.Add(-1)
	}
	if pg.dirty {
		delete(o.dirty, pg.n)
		c.dirty -= PageSize
		pg.dirty = false
		c.changes++
	}
	if pg.elem != nil {
		c.clean.Remove(pg.elem)
		pg.elem = nil
	}
	c.cached -= PageSize
	pg.gone.Store(true)
}

// drop unlinks the pages (under c.mu, by the caller) and frees their slots
// once no request uses them.
func (c *Cache) freeDropped(victims []*page) {
	for _, pg := range victims {
		pg.rw.Lock()
		c.mu.Lock()
		c.release(pg.slot)
		c.mu.Unlock()
		pg.rw.Unlock()
	}
}

// dropRange drops every cached page of o that lies wholly in [lo, hi).
func (c *Cache) dropRange(o *object, lo, hi int64) {
	c.mu.Lock()
	var victims []*page
	for _, pg := range o.pages {
		if pg.n*PageSize >= lo && (pg.n+1)*PageSize <= hi {
			c.unlink(pg)
			victims = append(victims, pg)
		}
	}
	c.mu.Unlock()
	c.freeDropped(victims)
}

// writePage writes src at inPage of page pn in a ReadWrite cache: into the
// cached page, or into a new one filled from the remote first when src does
// not cover it. With no room even after a flush, the write goes straight to
// the remote.
//
// pre, if not nil, is the page as read from the remote after the fill saw
// preSeq, to use instead of reading it again. The caller counts itself in
// o.fills.
func (c *Cache) writePage(o *object, pn int64, src []byte, inPage int64, pre []byte, preSeq seen) error {
	for attempt := 0; ; attempt++ {
		if ok, err := c.writePresent(o, pn, src, inPage, true); ok || err != nil {
			return err
		}
		full := len(src) == PageSize
		var img []byte
		var seq seen
		switch {
		case pre != nil && attempt == 0:
			img, seq = pre, preSeq
		case full:
			img = make([]byte, PageSize)
		default:
			seq.w = o.wgen.Load()
			c.mu.Lock()
			seq.gen = o.gen[pn%genBuckets]
			c.mu.Unlock()
			img = make([]byte, PageSize)
			if _, err := c.remoteRead(o, img, pn*PageSize); err != nil {
				return err
			}
		}
		copy(img[inPage:], src)
		installed, noSlot, err := c.install(o, pn, img, seq, true, inPage, inPage+int64(len(src)), !full)
		switch {
		case err != nil:
			return err
		case installed:
			return nil
		case !noSlot:
			continue // lost a race with another fill or a remote change
		case attempt < 2:
			c.makeRoom()
			continue
		}
		c.log.Warn("cache full of dirty or busy pages; writing through", "dir", c.dir, "key", o.key)
		// A page cached meanwhile (filled, or written dirty) is brought
		// up to date too.
		_, err = c.writeAround(o, src, pn*PageSize+inPage)
		return err
	}
}

// prefetchEdges reads from the remote, in one call when they are close,
// the pages at either end of [off, off+n) that the write covers in part and
// that are not cached: a sealed block's slot straddles two or three pages,
// and filling them one after the other would double the latency of a
// first write. It returns them by page number, with the o.gen they were
// read at.
func (c *Cache) prefetchEdges(o *object, off, n int64) (pre map[int64][]byte, gen [genBuckets]uint64, err error) {
	first, last := off/PageSize, (off+n-1)/PageSize
	c.mu.Lock()
	gen = o.gen
	var need []int64
	if (off%PageSize != 0 || (off+n)%PageSize != 0 && first == last) && o.pages[first] == nil {
		need = append(need, first)
	}
	if last != first && (off+n)%PageSize != 0 && o.pages[last] == nil {
		need = append(need, last)
	}
	c.mu.Unlock()
	if len(need) == 0 {
		return nil, gen, nil
	}
	pre = make(map[int64][]byte, 2)
	if len(need) == 2 && last-first < 4 {
		buf := make([]byte, (last-first+1)*PageSize)
		if _, err := c.remoteRead(o, buf, first*PageSize); err != nil {
			return nil, gen, err
		}
		pre[first] = buf[:PageSize:PageSize]
		pre[last] = buf[(last-first)*PageSize:]
		return pre, gen, nil
	}
	imgs := make([][]byte, len(need))
	errs := make([]error, len(need))
	var wg sync.WaitGroup
	for i, pn := range need {
		wg.Go(func() {
			imgs[i] = make([]byte, PageSize)
			_, errs[i] = c.remoteRead(o, imgs[i], pn*PageSize)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, gen, err
	}
	for i, pn := range need {
		pre[pn] = imgs[i]
	}
	return pre, gen, nil
}

// makeRoom writes dirty pages back so that their slots can be reused.
func (c *Cache) makeRoom() {
	if err := c.Flush(context.Background()); err != nil {
		c.log.Warn("cache flush to make room failed", "dir", c.dir, "err", err)
	}
}

// writeAround writes to the remote first, then into the cached pages it
// covers: every ReadOnly write, and a ReadWrite write that bypasses the
// cache. Write-back of the object waits meanwhile (o.wb), so an older image
// of a dirty page can never reach the remote after this write.
//
// In ReadOnly, a cached page is updated in place; two write-throughs
// overlapping on a page in time could reach the remote and the cache in
// different orders, so such a page is dropped instead. In ReadWrite, a
// clean page is dropped, and a dirty page receives the write and stays
// dirty over its bytes too: whatever order two writes reach the remote and
// the page in, the page's bytes are what the remote ends up with, once
// written back. A dirty page is never dropped here: it may hold other
// writes that the remote has not seen.
func (c *Cache) writeAround(o *object, p []byte, off int64) (int, error) {
	rw := c.mode == ReadWrite
	// No cached page (so none dirty, and no write-back of this object
	// under way) and no fill in flight: nothing in the cache to update,
	// and a fill that starts now will see this write (o.arounds, o.wgen).
	o.arounds.Add(1)
	if o.npages.Load() == 0 && o.fills.Load() == 0 {
		n, err := c.remoteWrite(o, p, off)
		if rw {
			o.aroundDirty.Store(true) // synced by the next Chunk.Sync or write-back
		}
		o.wgen.Add(1)
		o.arounds.Add(-1)
		return n, err
	}
	o.arounds.Add(-1)
	if rw {
		o.wb.RLock()
		defer o.wb.RUnlock()
	}
	p0, p1 := off/PageSize, (off+int64(len(p))-1)/PageSize
	c.mu.Lock()
	for pn := p0; pn <= p1; pn++ {
		if o.wt[pn] > 0 {
			o.conflict[pn] = true
		}
		o.wt[pn]++
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for pn := p0; pn <= p1; pn++ {
			if o.wt[pn]--; o.wt[pn] == 0 {
				delete(o.wt, pn)
				delete(o.conflict, pn)
			}
		}
		c.mu.Unlock()
	}()

	n, werr := c.remoteWrite(o, p, off)
	c.mu.Lock()
	o.bump(p0, p1)
	if rw {
		o.remoteDirty = true // synced by the next Chunk.Sync or write-back
	}
	var victims []*page
	var update []int64
	if o.npages.Load() > 0 {
		for pn := p0; pn <= p1; pn++ {
			pg := o.pages[pn]
			switch {
			case pg == nil:
			case rw && pg.dirty:
				if werr == nil {
					update = append(update, pn)
				}
			case rw || werr != nil || o.conflict[pn]:
				c.unlink(pg)
				victims = append(victims, pg)
			default:
				update = append(update, pn)
			}
		}
	}
	c.mu.Unlock()
	c.freeDropped(victims)
	if werr != nil {
		return n, werr
	}
	for _, pn := range update {
		start := pn * PageSize
		lo, hi := max(off, start), min(off+int64(len(p)), start+PageSize)
		_, err := c.writePresent(o, pn, p[lo-off:hi-off], lo-start, rw)
		switch {
		case err == nil:
		case rw:
			// The page may hold other writes the remote has not seen:
			// it cannot be dropped, and it is older than this write.
			return 0, err
		default:
			// The remote has the data; forget the page rather than fail.
			c.mu.Lock()
			var v []*page
			if pg := o.pages[pn]; pg != nil {
				c.unlink(pg)
				v = append(v, pg)
			}
			c.mu.Unlock()
			c.freeDropped(v)
		}
	}
	return n, nil
}

// punch makes [off, off+n) read as zeros: in the remote, and in the cache
// by dropping the pages it covers. A page it covers in part is dropped if
// clean (the remote is right) and zeroed in place if dirty, without
// widening its dirty extent: outside it, the remote was punched already.
// Holding o.wb keeps write-back away, so the page cannot turn clean
// meanwhile.
func (c *Cache) punch(o *object, off, n int64) error {
	o.wb.Lock() // no write-back of an older image of these pages meanwhile
	defer o.wb.Unlock()
	if err := o.remote.PunchHole(off, n); err != nil {
		return err
	}
	c.mu.Lock()
	o.bump(off/PageSize, (off+n-1)/PageSize)
	var victims []*page
	var zero []*page
	for _, pg := range o.pages {
		start, end := pg.n*PageSize, (pg.n+1)*PageSize
		switch {
		case end <= off || start >= off+n:
		case (start >= off && end <= off+n) || !pg.dirty || c.mode != ReadWrite:
			c.unlink(pg)
			victims = append(victims, pg)
		default:
			zero = append(zero, pg)
		}
	}
	c.mu.Unlock()
	c.freeDropped(victims)
	for _, pg := range zero {
		start := pg.n * PageSize
		lo, hi := max(off, start), min(off+n, start+PageSize)
		if _, err := c.writePresent(o, pg.n, make([]byte, hi-lo), lo-start, false); err != nil {
			return err
		}
		c.mu.Lock()
		c.changes++
		c.mu.Unlock()
	}
	return nil
}
