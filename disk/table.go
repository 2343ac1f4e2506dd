package disk

import (
	"sync"
	"sync/atomic"
)

// chunkTable maps a chunk index to its chunk record. It is a three-level
// radix table whose pages are allocated on first use, so that its memory
// follows the chunks in use, not the disk's size: a 32 TiB disk with 1 GiB
// written costs what a 1 GiB disk costs, and a disk of the largest size
// (MaxChunks chunks) costs at most 128 KiB of top level.
//
// Lookups, the data path's part, take no lock: three atomic loads of the
// pages and one of the record. Records and pages are only ever added, under
// mu, and never removed while the disk is open.
type chunkTable struct {
	mu  sync.Mutex // serialises adding pages and records, and growing top
	top atomic.Pointer[[]atomic.Pointer[tableMid]]
}

// A leaf covers 256 chunks (1 GiB of disk with 4 MiB chunks) in 2 KiB; a
// mid page 1024 leaves in 8 KiB. Together they take 18 bits of the index,
// and the top level, sized to the disk, the rest: one entry per 1 TiB of
// disk with 4 MiB chunks, at most 2^14 for MaxChunks.
const (
	leafBits = 8
	midBits  = 10
	leafLen  = 1 << leafBits
	midLen   = 1 << midBits
)

type tableLeaf [leafLen]atomic.Pointer[chunk]

type tableMid [midLen]atomic.Pointer[tableLeaf]

// topLen is the length of the top level for n chunks.
func topLen(n int64) int { return int((n + leafLen*midLen - 1) >> (leafBits + midBits)) }

// newTopFor returns a top level for n chunks; grow installs it.
func newTopFor(n int64) []atomic.Pointer[tableMid] {
	return make([]atomic.Pointer[tableMid], max(topLen(n), 1))
}

// init sets up the table for n chunks.
func (t *chunkTable) init(n int64) {
	top := newTopFor(n)
	t.top.Store(&top)
}

// grow installs top, made by newTopFor for a larger disk, holding the
// pages of the current one; a top no longer than the current one is left
// unused.
func (t *chunkTable) grow(top []atomic.Pointer[tableMid]) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.top.Load()
	if len(top) <= len(old) {
		return
	}
	for i := range old {
		top[i].Store(old[i].Load())
	}
	t.top.Store(&top)
}

// load returns the record of chunk i, or nil if there is none yet.
func (t *chunkTable) load(i int64) *chunk {
	top := *t.top.Load()
	ti := int(i >> (leafBits + midBits))
	if ti >= len(top) {
		return nil
	}
	m := top[ti].Load()
	if m == nil {
		return nil
	}
	l := m[(i>>leafBits)&(midLen-1)].Load()
	if l == nil {
		return nil
	}
	return l[i&(leafLen-1)].Load()
}

// loadOrAdd returns the record of chunk i, adding one made by mk if there
// is none. i must be below the chunk count the table was sized for.
func (t *chunkTable) loadOrAdd(i int64, mk func() *chunk) *chunk {
	if c := t.load(i); c != nil {
		return c
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	top := *t.top.Load()
	mp := &top[i>>(leafBits+midBits)]
	m := mp.Load()
	if m == nil {
		m = new(tableMid)
		mp.Store(m)
	}
	lp := &m[(i>>leafBits)&(midLen-1)]
	l := lp.Load()
	if l == nil {
		l = new(tableLeaf)
		lp.Store(l)
	}
	cp := &l[i&(leafLen-1)]
	if c := cp.Load(); c != nil {
		return c
	}
	c := mk()
	cp.Store(c)
	return c
}

// each calls fn for every chunk record, in index order. Records added
// meanwhile may or may not be seen.
func (t *chunkTable) each(fn func(*chunk)) {
	for i := range *t.top.Load() {
		m := (*t.top.Load())[i].Load()
		if m == nil {
			continue
		}
		for j := range m {
			l := m[j].Load()
			if l == nil {
				continue
			}
			for k := range l {
				if c := l[k].Load(); c != nil {
					fn(c)
				}
			}
		}
	}
}

// dirtySet is the set of chunks a Sync must visit: those written (or
// discarded, or created) since their last successful Sync, and those whose
// Sync is in flight. Sync visits only these, so its cost follows the
// chunks written, not the disk's size.
//
// A chunk is added by the writer that makes it dirty, once (chunk.listed),
// and removed by the Sync that made it durable; see mark and unmark for why
// no dirty chunk is ever left out.
type dirtySet struct {
	mu sync.Mutex
	m  map[*chunk]struct{}
}

// mark records that c is dirty. The caller has already set c.dirty: if a
// Sync is unmarking c at this moment, either mark sees listed cleared and
// adds c again, or that Sync sees dirty set and keeps c (both sides store
// their flag, then load the other's).
func (s *dirtySet) mark(c *chunk) {
	if c.listed.Load() || !c.listed.CompareAndSwap(false, true) {
		return
	}
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[*chunk]struct{})
	}
	s.m[c] = struct{}{}
	s.mu.Unlock()
}

// unmark removes c after a successful Sync of it, unless it became dirty
// again or another Sync of it is in flight.
func (s *dirtySet) unmark(c *chunk) {
	s.mu.Lock()
	c.listed.Store(false)
	delete(s.m, c)
	s.mu.Unlock()
	if c.dirty.Load() || c.syncing.Load() {
		s.mark(c)
	}
}

// list returns the chunks of the set, in no particular order.
func (s *dirtySet) list() []*chunk {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*chunk, 0, len(s.m))
	for c := range s.m {
		out = append(out, c)
	}
	return out
}
