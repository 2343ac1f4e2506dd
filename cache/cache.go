package cache

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hostcrypt/internal/dirfd"
	"hostcrypt/storage"
)

// PageSize is the unit the cache tracks: 4 KiB of a chunk object's byte
// range, aligned in the object.
const PageSize = 4096

// MinBytes is the smallest bound accepted for Options.MaxBytes. A cache of
// a few pages would work, but would spend its time flushing and evicting;
// 256 pages leave room for the pages that concurrent requests hold while
// they are filled, written or flushed.
const MinBytes = 256 * PageSize

// DefaultFlushInterval is the background flush period of a ReadWrite cache.
const DefaultFlushInterval = time.Second

// Mode is a disk's host caching mode.
type Mode string

// The three caching modes a disk can be attached with.
const (
	None      Mode = "None"
	ReadOnly  Mode = "ReadOnly"
	ReadWrite Mode = "ReadWrite"
)

// ParseMode returns the mode named s, ignoring case.
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{None, ReadOnly, ReadWrite} {
		if strings.EqualFold(s, string(m)) {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown cache mode %q: use None, ReadOnly or ReadWrite", s)
}

// Options configures New.
type Options struct {
	// Mode is the caching mode; it must be set.
	Mode Mode
	// Dir is the host directory holding this disk's cache, created 0700
	// with files 0600. It is required for ReadOnly and ReadWrite. With
	// None it may be empty; if it names a directory left by a crashed
	// ReadWrite cache, New still writes that cache's dirty data back.
	// A symbolic link, FIFO or device at Dir, or at one of the cache's
	// files in it, is an error (dirfd.ErrNotRegular), never followed.
	Dir string
	// MaxBytes bounds the cached data; at least MinBytes. Ignored by None.
	MaxBytes int64
	// FlushInterval is the background flush period of a ReadWrite cache;
	// 0 means DefaultFlushInterval.
	FlushInterval time.Duration
	// Logger receives warnings and recovery reports; nil discards them.
	Logger *slog.Logger
	// SequentialCutoff: I/O of a sequential stream on a chunk object
	// bypasses the cache once the stream has reached this many bytes, and
	// so does a single I/O of this size (it goes to the remote, and
	// updates the dirty pages it covers). 0 means
	// DefaultSequentialCutoff; negative turns the cut-off off.
	SequentialCutoff int64
	// SlowStorage: random I/O goes through the cache only while the
	// remote's measured latency (the fastest of its recent calls of at
	// most 64 KiB) is at least this; a remote faster than that is read
	// and written directly, since the cache would add its own work and
	// save nothing. 0 means DefaultSlowStorage; negative caches random
	// I/O whatever the latency.
	SlowStorage time.Duration
	// SharedStorage says that the remote is shared with other hosts (a
	// RADOS pool), one of which takes the disk over when this host dies,
	// and this host's cache directory dies with it. In ReadWrite,
	// Chunk.Sync then writes the object's dirty pages back and syncs the
	// remote before it returns, so that what a guest's flush acknowledged
	// is in the remote, not only here. Writes between syncs are still
	// absorbed by the cache, and a page written many times between two
	// syncs goes back once. Without it (the host's own storage),
	// Chunk.Sync makes writes durable in the cache directory, which the
	// next New on this host writes back. None and ReadOnly ignore it:
	// their Sync is the remote's.
	SharedStorage bool
}

// Stats are a cache's counters. Hits and Misses count pages looked up by
// reads; Evictions counts pages dropped to make room; Flushes counts
// write-back rounds that wrote at least one page (a Flush, background or
// not, and with Options.SharedStorage each Chunk.Sync that wrote its
// object back); WrittenBackBytes counts the bytes they wrote to the remote
// backend. Bypassed counts reads and
// writes that went around the cache (sequential, or with a fast remote);
// StorageLatency is the remote's measured latency (0 until measured) and
// SlowStorage whether random I/O is cached for it.
type Stats struct {
	Mode             Mode
	Hits             int64
	Misses           int64
	CachedBytes      int64
	DirtyBytes       int64
	Evictions        int64
	Flushes          int64
	WrittenBackBytes int64
	// WriteBackTime is the time the write-back rounds that wrote took.
	WriteBackTime  time.Duration
	Bypassed       int64
	StorageLatency time.Duration
	SlowStorage    bool
}

// File names inside the cache directory.
const (
	dataName     = "data"
	indexName    = "dirty.idx"
	indexTmpName = "dirty.idx.tmp"
	filePerm     = 0o600
)

// Cache is a host cache over a remote storage.Backend. It implements
// storage.Backend itself.
type Cache struct {
	remote storage.Backend
	mode   Mode
	// shared: Chunk.Sync writes back (Options.SharedStorage).
	shared bool
	dir    string
	log    *slog.Logger
	data   *os.File // the slot file; nil with None
	// d is the cache directory, open from New to Close; nil with None.
	// Its files are opened through it, never following a link.
	d      *dirfd.Dir
	nslots int32

	mu      sync.Mutex
	objs    map[string]*object
	slots   []slotState // grows up to nslots
	free    []int32
	clean   list.List // present clean pages, most recently used at the front
	cached  int64     // bytes of present pages
	dirty   int64     // bytes of dirty pages
	indexed []int32   // slots named by the committed index
	// changes counts changes to dirty pages (writes, write-backs, drops);
	// committed is its value at the last successful commit, so a Sync
	// with nothing new since then costs nothing.
	changes, committed uint64

	hits, misses, evictions, flushes, writtenBack atomic.Int64
	writeBackNanos                                atomic.Int64

	flushMu  sync.Mutex // one write-back round at a time
	commitMu sync.Mutex // one index commit at a time

	// pol decides which I/O goes through the cache and which around it.
	pol *policy

	closed    atomic.Bool
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

var _ storage.Backend = (*Cache)(nil)

// slotState says who uses a slot of the data file. A slot is free when it
// has no owner and no index names it.
type slotState struct {
	owner     *page
	reserved  bool // handed out by alloc, not yet owned
	inIndex   bool // named by the committed index
	inPending bool // named by the index being committed
}

func (s *slotState) free() bool { return s.owner == nil && !s.reserved && !s.inIndex && !s.inPending }

// object is the cache's state of one chunk object, shared by every handle
// opened on its key.
type object struct {
	key    string
	remote storage.Chunk // open until Delete or Close

	// Guarded by Cache.mu.
	pages    map[int64]*page
	dirty    map[int64]*page
	wt       map[int64]int  // write-throughs in flight, per page
	conflict map[int64]bool // pages two write-throughs overlapped on
	// gen counts changes to the remote (write-through, punch, write-back,
	// a write that bypassed the cache) per bucket of pages: a fill installs
	// its image only if its page's bucket did not move meanwhile.
	gen         [genBuckets]uint64
	remoteDirty bool // the remote chunk needs a Sync of its own

	// npages is len(pages), readable without Cache.mu: a read that
	// bypasses the cache goes straight to the remote when it is 0.
	npages atomic.Int64
	// A write around the cache to an object with no cached page and no
	// fill in flight skips Cache.mu: fills count themselves in fills
	// while they run, such writes count themselves in arounds and bump
	// wgen once written, and a fill installs its image only if no such
	// write ran since it read wgen (its image may predate the write).
	fills, arounds atomic.Int64
	wgen           atomic.Uint64
	// aroundDirty: such a write (ReadWrite) left the remote chunk in
	// need of a Sync, like remoteDirty.
	aroundDirty atomic.Bool
	// streams are the object's recent sequential streams.
	streams streams

	// wb excludes write-back of this object's pages from a PunchHole and
	// (held shared) from writes that bypass the cache, which would
	// otherwise race an older page image to the remote.
	wb sync.RWMutex
	// deleted is set, under Cache.mu, when Delete takes the object away.
	deleted atomic.Bool
}

const genBuckets = 64

// bump records a change to the remote in pages [p0, p1]; called with
// Cache.mu held.
func (o *object) bump(p0, p1 int64) {
	if p1-p0+1 >= genBuckets {
		for i := range o.gen {
			o.gen[i]++
		}
		return
	}
	for pn := p0; pn <= p1; pn++ {
		o.gen[pn%genBuckets]++
	}
}

// page is one cached page. Its slot and flags are guarded by Cache.mu; rw
// is held shared by every read or write of the slot and exclusively by
// whoever takes the slot away, so a slot is never reused under I/O.
type page struct {
	obj   *object
	n     int64 // page number in the object
	slot  int32
	dirty bool
	lo    int32 // the dirty extent in the page
	hi    int32
	ver   uint64 // bumped by every write, so a flush knows if it wrote the latest
	elem  *list.Element
	gone  atomic.Bool // dropped or evicted: look it up again
	rw    sync.RWMutex
}

// New wraps remote in a cache configured by o; see the package comment.
// With None it returns a Cache whose chunks are remote's own, so the data
// path costs nothing. A cache directory left by a crash is recovered first:
// its dirty pages are written back to remote and synced before New returns,
// whatever the new mode, and the directory starts empty.
func New(ctx context.Context, remote storage.Backend, o Options) (*Cache, error) {
	mode, err := ParseMode(string(o.Mode))
	if err != nil {
		return nil, err
	}
	if o.FlushInterval < 0 {
		return nil, fmt.Errorf("cache flush interval %v is negative", o.FlushInterval)
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{remote: remote, mode: mode, shared: o.SharedStorage, dir: o.Dir, log: log, objs: map[string]*object{}}
	c.pol = newPolicy(o)
	if mode == None {
		if o.Dir != "" {
			d, err := dirfd.OpenLeaf(o.Dir, false)
			if errors.Is(err, fs.ErrNotExist) {
				return c, nil
			}
			if err != nil {
				return nil, fmt.Errorf("cache directory: %w", err)
			}
			c.d = d
			err = c.recover(ctx)
			c.d = nil
			if err = errors.Join(err, d.Close()); err != nil {
				return nil, err
			}
		}
		return c, nil
	}
	if o.MaxBytes < MinBytes {
		return nil, fmt.Errorf("cache size %d bytes is too small: the minimum is %d bytes (1 MiB, %d pages of %d bytes)",
			o.MaxBytes, MinBytes, MinBytes/PageSize, PageSize)
	}
	if o.Dir == "" {
		return nil, errors.New("cache directory not set: a ReadOnly or ReadWrite cache needs one")
	}
	if o.MaxBytes/PageSize > 1<<31-1 {
		return nil, fmt.Errorf("cache size %d bytes is too large: at most %d", o.MaxBytes, int64(1<<31-1)*PageSize)
	}
	c.nslots = int32(o.MaxBytes / PageSize)
	// The directory is the host's, made by the control plane: a link in
	// its place, or at one of its files, is never followed.
	c.d, err = dirfd.OpenLeaf(o.Dir, true)
	if err != nil {
		return nil, fmt.Errorf("cache directory: %w", err)
	}
	if err := c.recover(ctx); err != nil {
		c.d.Close()
		return nil, err
	}
	// recover removed any data file left behind, so this one is new.
	c.data, err = c.d.OpenFile(dataName, os.O_RDWR|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		c.d.Close()
		return nil, fmt.Errorf("cache directory %s: %w", o.Dir, err)
	}
	if mode == ReadWrite {
		c.stop, c.done = make(chan struct{}), make(chan struct{})
		go c.flusher(o.FlushInterval)
	}
	return c, nil
}

// Mode returns the cache's mode.
func (c *Cache) Mode() Mode { return c.mode }

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	cached, dirty := c.cached, c.dirty
	c.mu.Unlock()
	return Stats{
		Mode:             c.mode,
		Hits:             c.hits.Load(),
		Misses:           c.misses.Load(),
		CachedBytes:      cached,
		DirtyBytes:       dirty,
		Evictions:        c.evictions.Load(),
		Flushes:          c.flushes.Load(),
		WrittenBackBytes: c.writtenBack.Load(),
		WriteBackTime:    time.Duration(c.writeBackNanos.Load()),
		Bypassed:         c.pol.bypassed.Load(),
		StorageLatency:   c.pol.latency(),
		SlowStorage:      c.pol.isSlow.Load(),
	}
}

// flusher writes dirty pages back every interval until Close.
func (c *Cache) flusher(interval time.Duration) {
	defer close(c.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.mu.Lock()
			dirty := c.dirty > 0 || len(c.indexed) > 0
			c.mu.Unlock()
			if dirty {
				if err := c.Flush(context.Background()); err != nil {
					c.log.Warn("background cache flush failed; will retry", "dir", c.dir, "err", err)
				}
			}
		}
	}
}

// Close writes every dirty page back, stops the background flusher, closes
// the cache's files and the remote chunks it holds, then closes remote.
// When everything was written back, the data file is removed: the next
// New would start empty anyway. Later calls return ErrClosed.
func (c *Cache) Close() error {
	c.closeOnce.Do(func() {
		if c.mode == ReadWrite {
			close(c.stop)
			<-c.done
			c.closeErr = c.Flush(context.Background())
		}
		c.closed.Store(true)
		c.mu.Lock()
		objs := c.objs
		c.objs = map[string]*object{}
		c.mu.Unlock()
		for _, o := range objs {
			c.closeErr = errors.Join(c.closeErr, o.remote.Close())
		}
		if c.data != nil {
			c.closeErr = errors.Join(c.closeErr, c.data.Close())
			if c.closeErr == nil {
				c.closeErr = c.d.Remove(dataName)
			}
			c.closeErr = errors.Join(c.closeErr, c.d.Close())
		}
		c.closeErr = errors.Join(c.closeErr, c.remote.Close())
	})
	return c.closeErr
}

func (c *Cache) check() error {
	if c.closed.Load() {
		return storage.ErrClosed
	}
	return nil
}

// OpenChunk opens a chunk through the cache. Handles on one key share its
// cached pages. The cache keeps the remote chunk open until Delete or
// Close, so that dirty pages can be written back after the last handle
// is closed.
func (c *Cache) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if c.mode == None {
		return c.remote.OpenChunk(ctx, key, create)
	}
	if err := storage.ValidKey(key); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if o := c.objs[key]; o != nil {
		c.mu.Unlock()
		return &chunk{c: c, o: o}, nil
	}
	c.mu.Unlock()
	rc, err := c.remote.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		rc.Close()
		return nil, storage.ErrClosed
	}
	o := c.objs[key]
	if o != nil {
		rc.Close()
	} else {
		o = &object{
			key: key, remote: rc,
			pages: map[int64]*page{}, dirty: map[int64]*page{},
			wt: map[int64]int{}, conflict: map[int64]bool{},
			remoteDirty: create, // it may have just been created
		}
		c.objs[key] = o
	}
	return &chunk{c: c, o: o}, nil
}

// ReadMeta passes through. In ReadWrite, a chunk object read whole this
// way is written back first, so the value is what was written.
func (c *Cache) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if c.mode == ReadWrite {
		c.mu.Lock()
		o := c.objs[key]
		dirty := o != nil && len(o.dirty) > 0
		c.mu.Unlock()
		if dirty {
			if err := c.Flush(ctx); err != nil {
				return nil, err
			}
		}
	}
	return c.remote.ReadMeta(ctx, key)
}

// WriteMeta passes through.
func (c *Cache) WriteMeta(ctx context.Context, key string, data []byte) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.remote.WriteMeta(ctx, key, data)
}

// ReadMetaVersion passes through; metadata objects are never cached.
func (c *Cache) ReadMetaVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	if err := c.check(); err != nil {
		return nil, storage.NoVersion, err
	}
	return c.remote.ReadMetaVersion(ctx, key)
}

// WriteMetaIf passes through.
func (c *Cache) WriteMetaIf(ctx context.Context, key string, data []byte, ifVersion storage.Version) (storage.Version, error) {
	if err := c.check(); err != nil {
		return storage.NoVersion, err
	}
	return c.remote.WriteMetaIf(ctx, key, data, ifVersion)
}

// List passes through.
func (c *Cache) List(ctx context.Context, prefix string) ([]string, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.remote.List(ctx, prefix)
}

// Usage passes through; a ReadWrite cache writes its dirty pages back
// first, so the answer is what storage will hold.
func (c *Cache) Usage(ctx context.Context, prefix string) (int64, error) {
	if err := c.check(); err != nil {
		return 0, err
	}
	if c.mode == ReadWrite {
		if err := c.Flush(ctx); err != nil {
			return 0, err
		}
	}
	return c.remote.Usage(ctx, prefix)
}

// Delete drops the cached pages of key, dirty ones too, then deletes it
// in remote. In ReadWrite the dirty-page index is committed without the
// key's pages before the remote delete, so recovery cannot bring the
// object back.
func (c *Cache) Delete(ctx context.Context, key string) error {
	if err := c.check(); err != nil {
		return err
	}
	if c.mode != None {
		c.mu.Lock()
		o := c.objs[key]
		if o != nil {
			delete(c.objs, key)
			o.deleted.Store(true)
		}
		c.mu.Unlock()
		if o != nil {
			o.wb.Lock()
			c.dropRange(o, 0, 1<<62)
			o.wb.Unlock()
			err := o.remote.Close()
			if c.mode == ReadWrite {
				err = errors.Join(err, c.commit())
			}
			if err != nil {
				return fmt.Errorf("delete %s from cache: %w", key, err)
			}
		}
	}
	return c.remote.Delete(ctx, key)
}
