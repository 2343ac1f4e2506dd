package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// maxRun bounds one remote write of consecutive dirty pages.
	maxRun = 256
	// parallelWrites bounds the remote writes of one object in flight
	// during a write-back, and parallelObjects the objects written back
	// at once.
	parallelWrites  = 16
	parallelObjects = 4
)

// Flush writes every dirty page back to the remote, syncs the remote
// chunks it wrote, and commits the dirty-page index without them. It does
// nothing in None and ReadOnly, which hold no dirty pages.
func (c *Cache) Flush(ctx context.Context) error {
	if err := c.check(); err != nil {
		return err
	}
	if c.mode != ReadWrite {
		return nil
	}
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	start := time.Now()
	c.mu.Lock()
	work := map[*object][]*page{}
	for _, o := range c.objs {
		if len(o.dirty) == 0 && !o.remoteDirty && !o.aroundDirty.Load() {
			continue
		}
		work[o] = nil
		for _, pg := range o.dirty {
			work[o] = append(work[o], pg)
		}
	}
	c.mu.Unlock()
	var (
		emu   sync.Mutex
		errs  []error
		wrote atomic.Int64
		wg    sync.WaitGroup
	)
	sem := make(chan struct{}, parallelObjects)
	for o, pgs := range work {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			slices.SortFunc(pgs, func(a, b *page) int { return cmp.Compare(a.n, b.n) })
			n, err := c.writeBack(o, pgs)
			wrote.Add(n)
			if err != nil {
				emu.Lock()
				errs = append(errs, fmt.Errorf("write back %s: %w", o.key, err))
				emu.Unlock()
			}
		})
	}
	wg.Wait()
	if n := wrote.Load(); n > 0 {
		c.flushes.Add(1)
		c.writtenBack.Add(n)
		c.writeBackNanos.Add(int64(time.Since(start)))
	}
	errs = append(errs, c.commit())
	return errors.Join(errs...)
}

// syncBack is Chunk.Sync of a ReadWrite cache on shared storage: every
// write to o completed before it is in the remote, and synced there, when
// it returns, as in ReadOnly. It writes o's dirty pages back and syncs the
// remote chunk (also when no page is dirty: a write around the cache or a
// punched hole is synced too), counted as a write-back round, then
// commits the dirty-page index without the pages it cleaned, as Flush
// does: the index must not name a page whose newer bytes, written around
// the cache since, the remote holds (see Crash safety in the package
// comment). Only o is written back; the disk engine syncs each chunk it
// wrote, and the other objects' dirty pages keep coalescing writes.
func (c *Cache) syncBack(o *object) error {
	start := time.Now()
	c.mu.Lock()
	pgs := make([]*page, 0, len(o.dirty))
	for _, pg := range o.dirty {
		pgs = append(pgs, pg)
	}
	c.mu.Unlock()
	slices.SortFunc(pgs, func(a, b *page) int { return cmp.Compare(a.n, b.n) })
	n, err := c.writeBack(o, pgs)
	if n > 0 {
		c.flushes.Add(1)
		c.writtenBack.Add(n)
		c.writeBackNanos.Add(int64(time.Since(start)))
	}
	if err != nil {
		return fmt.Errorf("write back %s: %w", o.key, err)
	}
	return c.commit()
}

// writeBack writes pgs (dirty pages of o, in order) to the remote in runs
// of consecutive pages, several runs at a time, syncs it, and marks clean
// every page not written again meanwhile. It returns the bytes written.
func (c *Cache) writeBack(o *object, pgs []*page) (int64, error) {
	o.wb.Lock()
	defer o.wb.Unlock()
	if o.deleted.Load() {
		return 0, nil
	}
	c.mu.Lock()
	o.remoteDirty = false
	c.mu.Unlock()
	// Writes around the cache completed before this are synced below.
	o.aroundDirty.Store(false)
	fail := func(err error) (int64, error) {
		c.mu.Lock()
		o.remoteDirty = true
		c.mu.Unlock()
		return 0, err
	}
	vers := make([]uint64, len(pgs))
	los := make([]int64, len(pgs))
	his := make([]int64, len(pgs))
	ok := make([]bool, len(pgs))
	type run struct {
		off  int64
		data []byte
	}
	var runs []run
	var wrote int64
	for i := 0; i < len(pgs); {
		var data []byte
		j := i
		// A run is consecutive pages whose dirty extents join up.
		for ; j < len(pgs) && j-i < maxRun; j++ {
			pg := pgs[j]
			if j > i && (pg.n != pgs[j-1].n+1 || his[j-1] != PageSize) {
				break
			}
			pg.rw.RLock()
			if pg.gone.Load() {
				pg.rw.RUnlock()
				break
			}
			c.mu.Lock()
			dirty := pg.dirty
			vers[j], los[j], his[j] = pg.ver, int64(pg.lo), int64(pg.hi)
			c.mu.Unlock()
			// A page cleaned meanwhile was written back, and the remote
			// synced, by another round (a Flush and a Sync on shared
			// storage may both hold it): the remote has its bytes.
			if !dirty || j > i && los[j] != 0 {
				pg.rw.RUnlock()
				break
			}
			m := int(his[j] - los[j])
			data = append(data, make([]byte, m)...)
			err := c.readSlot(data[len(data)-m:], pg.slot, los[j])
			pg.rw.RUnlock()
			if err != nil {
				return fail(err)
			}
			ok[j] = true
		}
		if j == i {
			i++ // a page dropped meanwhile
			continue
		}
		runs = append(runs, run{off: pgs[i].n*PageSize + los[i], data: data})
		wrote += int64(len(data))
		i = j
	}
	// The remote's round trips, not its bandwidth, bound a write-back of
	// scattered pages: keep several writes in flight.
	errs := make([]error, len(runs))
	sem := make(chan struct{}, parallelWrites)
	var wg sync.WaitGroup
	for k, r := range runs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, errs[k] = c.remoteWrite(o, r.data, r.off)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fail(err)
	}
	if err := o.remote.Sync(); err != nil {
		return fail(err)
	}
	c.mu.Lock()
	for j, pg := range pgs {
		if ok[j] {
			// The remote changed: a fill that read it before must not
			// install its image once the page turns clean and is evicted.
			o.bump(pg.n, pg.n)
		}
		if ok[j] && !pg.gone.Load() && pg.dirty && pg.ver == vers[j] {
			pg.dirty = false
			delete(o.dirty, pg.n)
			c.dirty -= PageSize
			c.changes++
			pg.elem = c.clean.PushFront(pg)
		}
	}
	c.mu.Unlock()
	return wrote, nil
}
