package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hcrypto "hostcrypt/crypto"
	"hostcrypt/internal/zeros"
	"hostcrypt/storage"
)

// Disk is an open encrypted disk. All methods are safe for concurrent use.
//
// There is no per-disk lock on the data path: I/O locks only the striped
// locks of the blocks it touches (readers share, writers exclude), so writers
// to different blocks of one disk run in parallel.
type Disk struct {
	be     storage.Backend
	prefix string
	log    *slog.Logger
	vol    [16]byte
	lay    layout
	layers []hcrypto.Layer // [0] = layer 1 (data key), [1] = layer 2 (infrastructure key)
	selKey []byte          // version 3: the MAC key of the selector state, derived from the data key
	sector int
	cbytes int64 // plaintext bytes per chunk

	size   atomic.Int64
	mu     sync.Mutex // serialises Resize; guards meta
	meta   *Metadata
	table  chunkTable   // the chunk records, sparse (table.go)
	dirty  dirtySet     // the chunks Sync visits (table.go)
	opened atomic.Int64 // chunk objects open

	stripes [nStripes]stripe
	bufs    [2]sync.Pool // *[]byte: up to smallBuf bytes, and larger
	scratch sync.Pool    // *scratch

	closed atomic.Bool
	fenced atomic.Pointer[fenceError] // why writes and flushes are refused; nil: they are not
	// The data key lease runs on the monotonic clock: leaseEnd is its end
	// as read from mono, or noLease. wall only converts the time SetLease
	// is given. Both are fields so that tests can step one and not the
	// other.
	leaseEnd   atomic.Int64
	wall       func() time.Time
	mono       func() time.Duration
	integrity  atomic.Uint64
	closeOnce  sync.Once
	closeError error
	stop       chan struct{} // closed by Close: ends the flusher
	everyMu    sync.Mutex
	every      chan time.Duration // a new interval for the flusher

	// For the read-ahead of a sequential reader (readahead.go): the long
	// reads in progress, and the read-aheads.
	reading atomic.Int32
	ra      readAheadState

	// win decides whether short reads read the pages around them
	// (window.go). Every short read writes to it: it keeps off the
	// lines of the fields around it.
	_   [64]byte
	win readWindows

	// work counts the crypto and background syncs behind the I/O (Stats).
	// It is written by every request, so it sits on cache lines of its own
	// and does not evict the fields every request reads (size, closed,
	// leaseEnd) from the other cores' caches.
	_    [64]byte
	work workCounters
	_    [64]byte
}

// workCounters are the engine's own counters of where time goes: sealing
// and opening blocks, and the syncs the engine runs by itself.
type workCounters struct {
	sealNanos, openNanos atomic.Int64
	sealed, opened       atomic.Uint64
	bgSyncs              atomic.Uint64
	bgSyncNanos          atomic.Int64
}

// Blocks are locked in groups of stripeBlocks consecutive blocks; group g uses
// stripe g mod nStripes.
const (
	nStripes     = 256
	stripeBlocks = 16
)

type stripe struct {
	sync.RWMutex
	_ [40]byte // keep stripes on separate cache lines
}

type chunk struct {
	idx    int64
	mu     sync.Mutex // serialises loading and creating the chunk object
	syncMu sync.Mutex // serialises Syncs of the chunk: a Sync returns only once the data it saw written is durable
	st     atomic.Pointer[chunkState]
	absent atomic.Bool // known not to exist in the backend yet
	dirty  atomic.Bool // written since the last Sync; set with Disk.markDirty
	listed atomic.Bool // in Disk.dirty (see dirtySet)
	// syncing is set while a Sync of the chunk runs (under syncMu). A Sync
	// that finds the chunk clean but syncing waits for it and takes over if
	// it failed: a clean chunk is not yet a durable one.
	syncing atomic.Bool
}

type chunkState struct {
	obj storage.Chunk
	// sel is the current selector of each block, psel the one last written to
	// the chunk object. A write goes to the slot psel does not name, so the
	// version a persisted selector names is never overwritten; sel is
	// persisted by Sync, after the data it names is durable. A byte of
	// either is read and written under its block's stripe lock.
	sel, psel []byte
	// ent (version 2) holds the entry (nonces and tags) of the version sel
	// names, entrySize bytes per block, under the same locks. Entries of
	// versions not synced yet exist only here until Sync writes them.
	ent []byte
	// gen (version 3) is the generation of the persisted selector state;
	// read and written under the chunk's syncMu.
	gen uint64
	// flight is the Sync in progress, if any: the selectors it is making
	// persistent. Set and cleared by the Sync under read locks of all the
	// chunk's stripes, read by writers under their write locks.
	flight *flight
}

// flight is what one Sync of a chunk persists: a copy of the selectors (and
// in version 2 the entries) of blocks [lo, lo+len(sel)) taken when it
// started. The Sync writes them without holding the chunk's locks, so
// writers go on meanwhile; they must leave alone the slots these selectors
// name as well as the persisted ones (see target).
type flight struct {
	lo   int
	sel  []byte
	ent  []byte
	done chan struct{} // closed when the Sync is over
}

// at returns the selector the flight persists for block k, and whether the
// flight covers k.
func (f *flight) at(k int) (byte, bool) {
	if f == nil || k < f.lo || k >= f.lo+len(f.sel) {
		return selNone, false
	}
	return f.sel[k-f.lo], true
}

// target returns the selector of the slot a new version of block k goes to,
// or ok false when no slot is free: both hold a version that must survive a
// crash (the persisted one and the one a Sync in flight is persisting), and
// the writer has to wait for that Sync. The caller holds k's stripe lock.
func (st *chunkState) target(k int) (sel byte, ok bool) {
	p := st.psel[k]
	if s, in := st.flight.at(k); in && s != selNone && s != p {
		if p != selNone {
			return selNone, false
		}
		p = s // only the flight's slot is taken
	}
	_, sel = nextSlot(p)
	return sel, true
}

// unused reports whether block k has no version anywhere: no current, no
// persisted and none in flight (never written, discarded, or zeroed). The
// caller holds k's stripe lock.
func (st *chunkState) unused(k int) bool {
	if st.sel[k] != selNone || st.psel[k] != selNone {
		return false
	}
	s, in := st.flight.at(k)
	return !in || s == selNone
}

// scratch is one goroutine's working memory for sealing and opening blocks,
// recycled through Disk.scratch so that the data path does not allocate.
type scratch struct {
	unit  []byte // one sealed unit (slotSize)
	inner []byte // layer 1's sealed unit inside layer 2 (slotSize)
	plain []byte // one plaintext block (BlockSize)
	ad    [adLen]byte
	// One sealer and opener per layer: they keep the derived key of a
	// nonce prefix from one block to the next (see crypto.Sealer).
	seal [2]hcrypto.Sealer
	open [2]hcrypto.Opener
}

func (d *Disk) getScratch() *scratch {
	if sc, ok := d.scratch.Get().(*scratch); ok {
		return sc
	}
	b := make([]byte, 2*d.lay.slotSize+BlockSize)
	sc := &scratch{unit: b[:d.lay.slotSize], inner: b[d.lay.slotSize : 2*d.lay.slotSize], plain: b[2*d.lay.slotSize:]}
	for i, l := range d.layers {
		sc.seal[i], sc.open[i] = l.NewSealer(), l.NewOpener()
	}
	return sc
}

func (d *Disk) putScratch(sc *scratch) { d.scratch.Put(sc) }

// Stats are counters of an open disk.
type Stats struct {
	// IntegrityErrors counts blocks that failed authentication on read.
	IntegrityErrors uint64
	// ChunksOpen counts chunk objects currently open.
	ChunksOpen int
	// ReadAheads counts reads served from a read-ahead (readahead.go).
	ReadAheads uint64
	// BlocksSealed and BlocksOpened count the blocks the data path sealed
	// and opened (all-zero blocks are stored as holes, not sealed), and
	// SealTime and OpenTime the time it spent doing so, both layers
	// included.
	BlocksSealed, BlocksOpened uint64
	SealTime, OpenTime         time.Duration
	// BackgroundSyncs counts the syncs the engine ran by itself (every
	// flush interval, when the guest does not flush), and
	// BackgroundSyncTime the time they took.
	BackgroundSyncs    uint64
	BackgroundSyncTime time.Duration
}

// IOError is returned for a block that could not be read or written. It
// matches syscall.EIO with errors.Is, so the FUSE layer answers EIO, and the
// cause (ErrIntegrity, ErrClosed, an I/O error).
type IOError struct {
	Disk  string
	Block int64
	Err   error
}

func (e *IOError) Error() string {
	return fmt.Sprintf("disk %s block %d: %v", e.Disk, e.Block, e.Err)
}

func (e *IOError) Unwrap() []error { return []error{e.Err, syscall.EIO} }

func newDisk(be storage.Backend, prefix string, m *Metadata, keys [][]byte) (*Disk, error) {
	vol, err := m.volumeID()
	if err != nil {
		return nil, err
	}
	d := &Disk{
		be:     be,
		prefix: prefix,
		log:    slog.Default().With("disk", prefix),
		vol:    vol,
		sector: m.SectorSize,
		cbytes: int64(m.ChunkBlocks) * BlockSize,
		meta:   m,
	}
	overhead := 0
	for i, k := range keys {
		l, err := hcrypto.NewLayer(layerAlgorithm(i+1), k, vol[:])
		if err != nil {
			d.wipeLayers()
			return nil, fmt.Errorf("disk %s layer %d: %w", prefix, i+1, err)
		}
		d.layers = append(d.layers, l)
		overhead += l.Overhead()
	}
	d.lay = newLayout(m.Format, m.ChunkBlocks, overhead, hcrypto.LayerNonceSize*len(d.layers))
	if m.Format >= formatV3 {
		// The selector state's MAC key comes from the data key (layer
		// 1), which the storage operator never holds, even with double
		// encryption's infrastructure key.
		k, err := hcrypto.DeriveKey(keys[0], vol[:], stateLabel, 32)
		if err != nil {
			d.wipeLayers()
			return nil, fmt.Errorf("disk %s: %w", prefix, err)
		}
		d.selKey = k
	}
	d.size.Store(m.Size)
	epoch := time.Now()
	d.wall = time.Now
	d.mono = func() time.Duration { return time.Since(epoch) } // monotonic: epoch has a monotonic reading
	d.leaseEnd.Store(noLease)
	d.table.init(d.chunkCount(m.Size))
	d.stop = make(chan struct{})
	d.every = make(chan time.Duration, 1)
	go d.flusher(flushEvery)
	return d, nil
}

func (d *Disk) chunkCount(size int64) int64 { return (size + d.cbytes - 1) / d.cbytes }

// Size is the disk's size in bytes.
func (d *Disk) Size() int64 { return d.size.Load() }

// SectorSize is the logical sector size (512 or 4096).
func (d *Disk) SectorSize() int { return d.sector }

// VolumeID is the disk's identity bound into every block.
func (d *Disk) VolumeID() string { return fmt.Sprintf("%x", d.vol) }

// Layers is 1 for single and 2 for double encryption.
func (d *Disk) Layers() int { return len(d.layers) }

// noLease is leaseEnd without a lease.
const noLease = math.MaxInt64

// SetLease limits how long the disk serves I/O: after until, every read and
// write fails with ErrLeaseExpired (EIO) until the lease is extended. The
// zero time removes the limit. The host extends the lease each time it has
// confirmed with the key store that the disk's key may still be used.
//
// The lease is measured on the monotonic clock: until is turned into the
// time left from now, and a step of the wall clock afterwards (an NTP
// correction, an operator's date) neither extends nor cuts it.
func (d *Disk) SetLease(until time.Time) {
	if until.IsZero() {
		d.leaseEnd.Store(noLease)
		return
	}
	// Both times carry a monotonic reading when they come from time.Now,
	// and then Sub uses it.
	now, left := d.mono(), until.Sub(d.wall())
	if left > noLease-1-now { // a lease beyond any disk's life: never ends
		left = noLease - 1 - now
	}
	d.leaseEnd.Store(int64(now + left))
}

// fenceError says why a disk refuses writes and flushes: a sync of a chunk
// failed. It matches ErrFenced and syscall.EIO (never the errno of its
// cause, which it only quotes: a guest sees EIO, whatever the backend
// said).
type fenceError struct {
	op    string
	chunk int64
	at    time.Time
	cause string
}

func (e *fenceError) Error() string {
	return fmt.Sprintf("%v: %s of chunk %d failed at %s: %s", ErrFenced, e.op, e.chunk, e.at.Format(time.RFC3339), e.cause)
}

func (e *fenceError) Unwrap() []error { return []error{ErrFenced, syscall.EIO} }

// fence stops every later write, discard and Sync of the disk (and in
// format 1 every read): the sync of a chunk failed. After a failed fsync
// the backing file system may have dropped the chunk's dirty pages and
// marked them clean, so a second fsync can succeed without them, and a
// Sync that then wrote selectors would name data the device never got;
// and after a failed selector write or sync the device may name either
// version of a block. Nothing is retried: the disk stays fenced until it
// is opened again and reads back what the device holds.
func (d *Disk) fence(chunk int64, op string, err error) {
	fe := &fenceError{op: op, chunk: chunk, at: time.Now().UTC(), cause: err.Error()}
	if d.fenced.CompareAndSwap(nil, fe) {
		d.log.Error("disk refuses writes and flushes until it is opened again: a sync failed", "chunk", chunk, "op", op, "err", err)
	}
}

// Fenced returns why the disk refuses writes and flushes, or nil while it
// does not: the first sync that failed, with when and why. The control
// plane shows it with the disk.
func (d *Disk) Fenced() error {
	if fe := d.fenced.Load(); fe != nil {
		return fe
	}
	return nil
}

// writable is usable for a write or discard: it also fails once the disk is
// fenced.
func (d *Disk) writable(block int64) error {
	if err := d.usable(block); err != nil {
		return err
	}
	if fe := d.fenced.Load(); fe != nil {
		return &IOError{Disk: d.prefix, Block: block, Err: fe}
	}
	return nil
}

// usable reports why I/O must not proceed: the disk is closed or its lease
// ran out, or it is a fenced disk of format 1. The caller holds the stripe
// locks of the blocks it touches.
//
// Reads of a fenced disk go on from format 2 on, where the nonces and
// tag of each block's current version are in memory: a page the device
// lost fails authentication against them, so a read returns the data last
// written or EIO, never an older version. A format 1 slot carries its own
// nonce and tag, and a lost page could read back as an older version still
// on the device, so a fenced format 1 disk refuses reads too.
func (d *Disk) usable(block int64) error {
	if d.closed.Load() {
		return &IOError{Disk: d.prefix, Block: block, Err: ErrClosed}
	}
	if l := d.leaseEnd.Load(); l != noLease && int64(d.mono()) > l {
		return &IOError{Disk: d.prefix, Block: block, Err: ErrLeaseExpired}
	}
	if d.lay.format == formatV1 {
		if fe := d.fenced.Load(); fe != nil {
			return &IOError{Disk: d.prefix, Block: block, Err: fe}
		}
	}
	return nil
}

// Stats returns the disk's counters.
func (d *Disk) Stats() Stats {
	s := Stats{IntegrityErrors: d.integrity.Load()}
	s.ReadAheads = d.ra.hits.Load()
	s.ChunksOpen = int(d.opened.Load())
	s.BlocksSealed, s.SealTime = d.work.sealed.Load(), time.Duration(d.work.sealNanos.Load())
	s.BlocksOpened, s.OpenTime = d.work.opened.Load(), time.Duration(d.work.openNanos.Load())
	s.BackgroundSyncs, s.BackgroundSyncTime = d.work.bgSyncs.Load(), time.Duration(d.work.bgSyncNanos.Load())
	return s
}

// LeaseLeft returns how long the disk serves I/O before its data key lease
// runs out (negative once it has), and false when it has no lease.
func (d *Disk) LeaseLeft() (time.Duration, bool) {
	l := d.leaseEnd.Load()
	if l == noLease {
		return 0, false
	}
	return time.Duration(l - int64(d.mono())), true
}

// chunk returns the chunk record for index i, creating the record (not the
// object) on first use.
func (d *Disk) chunk(i int64) *chunk {
	return d.table.loadOrAdd(i, func() *chunk { return &chunk{idx: i} })
}

// markDirty records that c has changes a Sync must make durable.
func (d *Disk) markDirty(c *chunk) {
	c.dirty.Store(true)
	d.dirty.mark(c)
}

// state returns the loaded chunk, loading it from the backend on first use.
// A chunk that does not exist yet is created when create is set and reported
// as nil otherwise (it reads as zeros).
func (d *Disk) state(c *chunk, create bool) (*chunkState, error) {
	return d.stateOf(c, create, false)
}

// stateAt is state for callers that hold no lock (seek, CopyChunks): it
// takes block b's lock, as any I/O does, so that a closed disk opens no
// chunk object again.
func (d *Disk) stateAt(ci, b int64) (*chunkState, error) {
	held := d.lockBlocks(b, b+1, false)
	defer held.unlock()
	if err := d.usable(b); err != nil {
		return nil, err
	}
	return d.state(d.chunk(ci), false)
}

// stateOf is state; quiet leaves a damaged chunk header to the caller to
// report (a read-ahead's failure is reported by the read that needs it).
func (d *Disk) stateOf(c *chunk, create, quiet bool) (*chunkState, error) {
	if st := c.st.Load(); st != nil {
		return st, nil
	}
	if !create && c.absent.Load() {
		return nil, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.st.Load(); st != nil {
		return st, nil
	}
	ctx := context.Background()
	key := chunkKey(d.prefix, c.idx)
	if !c.absent.Load() {
		obj, err := d.be.OpenChunk(ctx, key, false)
		switch {
		case err == nil:
			st, err := d.load(c, obj, quiet)
			if err != nil {
				obj.Close()
				return nil, err
			}
			if st != nil {
				c.st.Store(st)
				d.opened.Add(1)
				return st, nil
			}
			obj.Close() // blank: as good as absent, and created again below
			c.absent.Store(true)
		case errors.Is(err, storage.ErrNotFound):
			c.absent.Store(true)
		default:
			return nil, err
		}
	}
	if !create {
		return nil, nil
	}
	obj, err := d.be.OpenChunk(ctx, key, true)
	if err != nil {
		return nil, err
	}
	// The header, and zeros over the selector table: the object may be a
	// blank one left by a creation that never got this far. Whole pages.
	// Version 3 writes its first selector state and zeros over the other
	// copy and the entries instead (which also allocates everything a
	// Sync writes later, so that a Sync needs no new space), and makes
	// them durable before any block goes in: a chunk whose header did not
	// reach the device holds nothing else (see checkBlank).
	v3 := d.lay.format >= formatV3
	first := make([]byte, headerSize+d.lay.selBytes)
	if v3 {
		first = make([]byte, d.lay.entriesEnd())
	}
	h := d.header(c.idx)
	copy(first, h.marshal())
	if v3 {
		off := d.lay.stateOffset(1)
		d.encodeState(first[off:off+d.lay.stateBytes], c.idx, 1, make([]byte, d.lay.chunkBlocks))
	}
	if _, err := obj.WriteAt(first, 0); err != nil {
		obj.Close()
		return nil, err
	}
	if v3 {
		// The object now exists with a header the kernel may have
		// dropped after a failed sync; a later load would find it in
		// the page cache and never write it again. Fence, as for any
		// failed sync.
		if err := obj.Sync(); err != nil {
			d.fence(c.idx, "sync of a new chunk", err)
			obj.Close()
			return nil, err
		}
	}
	st := &chunkState{obj: obj, sel: make([]byte, d.lay.chunkBlocks), psel: make([]byte, d.lay.chunkBlocks)}
	if v3 {
		st.gen = 1
	}
	if d.lay.format != formatV1 {
		st.ent = make([]byte, d.lay.chunkBlocks*d.lay.entrySize)
	}
	c.st.Store(st)
	d.opened.Add(1)
	c.absent.Store(false)
	d.markDirty(c)
	return st, nil
}

func (d *Disk) header(idx int64) chunkHeader {
	return chunkHeader{
		Version:     uint16(d.lay.format),
		Layers:      uint16(len(d.layers)),
		BlockSize:   BlockSize,
		ChunkBlocks: uint32(d.lay.chunkBlocks),
		SlotSize:    uint32(d.lay.slotSize),
		ChunkIndex:  uint64(idx),
		VolumeID:    d.vol,
	}
}

// load reads and checks an existing chunk's header and selectors, and in
// version 2 the entries of the versions they name.
//
// A chunk whose header is all zeros is blank: load returns no state and no
// error. Creating a chunk makes its object and then writes its header, so a
// process killed in between leaves an empty object; and a Sync makes the
// header durable before it writes any selector, so after a power loss a
// header that did not reach the disk means that no selector of the chunk
// did either. Either way no block of the chunk was ever persisted, and it
// reads as zeros, as an absent chunk does. (Someone who can write the
// backend can blank a chunk, as they can delete it; see docs/SECURITY.md.)
func (d *Disk) load(c *chunk, obj storage.Chunk, quiet bool) (*chunkState, error) {
	end := int64(headerSize + d.lay.chunkBlocks)
	if d.lay.format != formatV1 {
		end = d.lay.entriesEnd()
	}
	buf := make([]byte, end)
	if _, err := obj.ReadAt(buf, 0); err != nil {
		return nil, err
	}
	damaged := func(err error) error {
		if !quiet {
			d.alarm(c.idx*int64(d.lay.chunkBlocks), 0, err)
		}
		return &IOError{Disk: d.prefix, Block: c.idx * int64(d.lay.chunkBlocks), Err: fmt.Errorf("chunk %d: %w: %w", c.idx, ErrIntegrity, err)}
	}
	if zeros.Is(buf[:headerSize]) {
		if d.lay.format >= formatV3 {
			if err := d.checkBlank(obj, buf); err != nil {
				return nil, damaged(err)
			}
		}
		return nil, nil
	}
	h, err := parseChunkHeader(buf[:headerSize])
	if err == nil && h != d.header(c.idx) {
		err = fmt.Errorf("%w: it belongs to volume %x chunk %d (%d layers)", errBadHeader, h.VolumeID, h.ChunkIndex, h.Layers)
	}
	if err != nil {
		return nil, damaged(err)
	}
	// Keep only the selectors, not the header page they were read with.
	var sel []byte
	var gen uint64
	if d.lay.format >= formatV3 {
		g, s, err := d.pickState(buf, c.idx)
		if err != nil {
			return nil, damaged(err)
		}
		sel, gen = bytes.Clone(s), g
	} else {
		sel = bytes.Clone(buf[headerSize : headerSize+d.lay.chunkBlocks])
	}
	st := &chunkState{obj: obj, sel: sel, psel: bytes.Clone(sel), gen: gen}
	if d.lay.format != formatV1 {
		es := d.lay.entrySize
		st.ent = make([]byte, d.lay.chunkBlocks*es)
		for k, v := range sel {
			// A damaged selector keeps a zero entry; reads of the block
			// report the selector.
			if slot, ok, err := slotOf(v); ok && err == nil {
				off := d.lay.entryOffset(slot, k)
				copy(st.ent[k*es:(k+1)*es], buf[off:off+int64(es)])
			}
		}
	}
	return st, nil
}

// alarm records an integrity failure: a counter and a log line. It never logs
// data or keys.
func (d *Disk) alarm(block int64, layer int, err error) {
	d.integrity.Add(1)
	d.log.Error("integrity alarm: stored data failed authentication", "block", block, "layer", layer, "err", err)
}

// heldStripes is a set of stripes locked by lockBlocks: up to two ascending
// index ranges [lo, hi]. It is a value, so locking costs no allocation.
type heldStripes struct {
	d      *Disk
	lo, hi [2]int
	ranges int
	write  bool
}

// lockBlocks locks the stripes covering absolute blocks [b0, b1) in ascending
// stripe order (so that two ranges can never deadlock).
func (d *Disk) lockBlocks(b0, b1 int64, write bool) heldStripes {
	h := heldStripes{d: d, ranges: 1, write: write}
	g0, g1 := b0/stripeBlocks, (b1-1)/stripeBlocks
	if g1-g0+1 >= nStripes {
		h.lo[0], h.hi[0] = 0, nStripes-1
	} else {
		s0, s1 := int(g0%nStripes), int(g1%nStripes)
		if s0 <= s1 {
			h.lo[0], h.hi[0] = s0, s1
		} else { // wraps around: lock the low part first
			h.lo[0], h.hi[0], h.lo[1], h.hi[1] = 0, s1, s0, nStripes-1
			h.ranges = 2
		}
	}
	h.each(func(s *stripe) {
		if write {
			s.Lock()
		} else {
			s.RLock()
		}
	})
	return h
}

func (h heldStripes) each(fn func(*stripe)) {
	for r := 0; r < h.ranges; r++ {
		for s := h.lo[r]; s <= h.hi[r]; s++ {
			fn(&h.d.stripes[s])
		}
	}
}

func (h heldStripes) unlock() {
	h.each(func(s *stripe) {
		if h.write {
			s.Unlock()
		} else {
			s.RUnlock()
		}
	})
}

// smallBuf is the size of every small buffer: a 4 KiB request, a read
// window, a chunk's selectors and entries. Small and large buffers are
// pooled apart so that a 4 KiB request never takes (and a 1 MiB request
// never drops) the other kind.
const smallBuf = 64 << 10

func (d *Disk) getBuf(n int) *[]byte {
	class, size := 0, smallBuf
	if n > smallBuf {
		class, size = 1, n
	}
	if p, ok := d.bufs[class].Get().(*[]byte); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, size)
	b = b[:n]
	return &b
}

func (d *Disk) putBuf(p *[]byte) {
	if cap(*p) > smallBuf {
		d.bufs[1].Put(p)
		return
	}
	d.bufs[0].Put(p)
}

// checkRange validates an I/O and returns the length that fits the disk.
func (d *Disk) checkRange(n int, off int64) (int, error) {
	size := d.size.Load()
	if off < 0 {
		return 0, fmt.Errorf("disk %s: negative offset %d: %w", d.prefix, off, ErrRange)
	}
	if off >= size {
		return 0, io.EOF
	}
	return int(min(int64(n), size-off)), nil
}

// ReadAt reads len(p) bytes at off. Never-written ranges read as zeros. A
// block that fails authentication fails the read with an *IOError matching
// ErrIntegrity and syscall.EIO; no byte of it is returned.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	n, a, err := d.read(p, off)
	if a != nil {
		copy(p, *a.buf)
		d.release(a)
	}
	return n, err
}

// ReadLent is ReadAt, except that when the disk already holds the data in a
// buffer of its own (a read-ahead, see readahead.go) it returns that buffer
// instead of copying it into p, with a release function to call once the
// data has been used. Otherwise data is p[:n] and release is nil. release
// may be called more than once, and also after Close.
func (d *Disk) ReadLent(p []byte, off int64) (data []byte, release func(), err error) {
	n, a, err := d.read(p, off)
	if a != nil {
		return *a.buf, func() { d.release(a) }, err
	}
	return p[:n], nil, err
}

// read is ReadAt, except that a read served from a read-ahead returns it
// instead of copying it into p: the caller copies or lends it.
func (d *Disk) read(p []byte, off int64) (int, *ahead, error) {
	n, err := d.checkRange(len(p), off)
	if err != nil || n == 0 {
		return 0, nil, err
	}
	// Short reads leave the read-ahead alone: they touch no state shared
	// by the disk's readers.
	var a *ahead
	long := n >= aheadMin
	if long {
		d.reading.Add(1)
		defer d.reading.Add(-1)
		a = d.readAhead(off, n)
	}
	if a == nil {
		if done, err := d.readRange(p[:n], off, false); err != nil {
			return done, nil, err
		}
		if long {
			d.readDone(off, n)
		}
	}
	if n < len(p) {
		return n, a, io.EOF
	}
	return n, a, nil
}

// readRange reads p at off, which lie inside the disk, and returns how many
// bytes it read before an error. quiet is for a read-ahead.
func (d *Disk) readRange(p []byte, off int64, quiet bool) (int, error) {
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		in := int(min(int64(len(p)-done), d.cbytes-pos%d.cbytes))
		if err := d.readChunk(pos/d.cbytes, p[done:done+in], pos%d.cbytes, quiet); err != nil {
			return done, err
		}
		done += in
	}
	return done, nil
}

func (d *Disk) readChunk(ci int64, p []byte, coff int64, quiet bool) error {
	b0 := int(coff / BlockSize)
	b1 := int((coff + int64(len(p)) + BlockSize - 1) / BlockSize)
	base := ci * int64(d.lay.chunkBlocks)
	held := d.lockBlocks(base+int64(b0), base+int64(b1), false)
	defer held.unlock()
	if err := d.usable(base + int64(b0)); err != nil {
		return err
	}
	st, err := d.stateOf(d.chunk(ci), false, quiet)
	if err != nil {
		return d.ioErr(base+int64(b0), err)
	}
	if st == nil {
		clear(p)
		return nil
	}
	// A run of blocks held in the same slot is read with one call: whole
	// slots in version 1, the ciphertext pages in version 2 (their entries
	// are in memory).
	ss := d.lay.slotSize
	if d.lay.format != formatV1 {
		ss = BlockSize
	}
	bp := d.getBuf((b1 - b0) * ss)
	defer d.putBuf(bp)
	raw := *bp
	for i := b0; i < b1; {
		slot, ok, err := slotOf(st.sel[i])
		if err != nil {
			err = fmt.Errorf("%w: %w", ErrIntegrity, err)
			if !quiet {
				d.alarm(base+int64(i), 0, err)
			}
			return d.ioErr(base+int64(i), err)
		}
		if !ok {
			lo, hi := d.within(i, coff, len(p))
			clear(p[lo:hi])
			i++
			continue
		}
		j := i + 1
		for j < b1 && st.sel[j] == st.sel[i] {
			j++
		}
		run := raw[(i-b0)*ss : (j-b0)*ss]
		off := d.lay.slotOffset(slot, i)
		if d.lay.format != formatV1 {
			off = d.lay.pageOffset(slot, i)
		}
		job := openJob{d: d, st: st, p: p, coff: coff, base: base, first: i, run: run, off: off, slot: slot, quiet: quiet}
		if j-i >= parallelMin {
			big := job // only this copy escapes to the goroutines
			err = d.parallel(j-i, big.open)
		} else {
			sc := d.getScratch()
			err = job.open(0, j-i, sc)
			d.putScratch(sc)
		}
		if err != nil {
			return err
		}
		i = j
	}
	return nil
}

// openJob reads and opens a run of blocks held in one slot: run receives
// their sealed units (version 1) or ciphertext pages (version 2), read from
// off in the chunk, and the plaintext goes to the request buffer p. A long
// run is split between goroutines, each reading and opening its part, so
// that one part's read overlaps another's opening.
type openJob struct {
	d     *Disk
	st    *chunkState
	p     []byte
	coff  int64
	base  int64
	first int // chunk-relative block of run[0]
	run   []byte
	off   int64
	slot  int  // the slot run is read from
	quiet bool // a read-ahead: failures raise no alarm
}

// open reads and opens blocks [lo, hi) of the run.
func (j *openJob) open(lo, hi int, sc *scratch) error {
	d := j.d
	ss := d.lay.slotSize
	if d.lay.format != formatV1 {
		ss = BlockSize
	}
	if err := j.read(lo, hi, ss); err != nil {
		return d.ioErr(j.base+int64(j.first+lo), err)
	}
	start := time.Now()
	for k := j.first + lo; k < j.first+hi; k++ {
		var sealed []byte
		if d.lay.format == formatV1 {
			ss := d.lay.slotSize
			sealed = j.run[(k-j.first)*ss : (k-j.first+1)*ss]
		} else {
			es := d.lay.entrySize
			d.lay.join(sc.unit, j.run[(k-j.first)*BlockSize:], j.st.ent[k*es:(k+1)*es])
			sealed = sc.unit
		}
		if err := d.openInto(j.p, j.coff, k, j.base, sealed, sc, j.quiet); err != nil {
			return err
		}
	}
	d.work.openNanos.Add(int64(time.Since(start)))
	d.work.opened.Add(uint64(hi - lo))
	return nil
}

// read fills run[lo:hi] (units of ss bytes) from the chunk. A short read of
// a version 2 chunk may read the aligned window of readWindow pages around
// it (or have the backend prefetch it), so that neighbouring blocks whose
// current version is in the same slot are where the backend keeps what it
// read (the page cache) when they are read next; window.go decides when.
func (j *openJob) read(lo, hi, ss int) error {
	d := j.d
	n := hi - lo
	if d.lay.format == formatV1 || n >= readWindow {
		_, err := j.st.obj.ReadAt(j.run[lo*ss:hi*ss], j.off+int64(lo*ss))
		return err
	}
	// Page index of run[lo] within its slot, and the window around it.
	first := j.first + lo
	w0 := first / readWindow * readWindow
	w1 := min(w0+readWindow, d.lay.chunkBlocks)
	if first+n > w1 { // crosses a window boundary: read it as asked
		_, err := j.st.obj.ReadAt(j.run[lo*ss:hi*ss], j.off+int64(lo*ss))
		return err
	}
	w := &d.win
	wide, watched, sampled, start := w.choose(d.mono)
	var tag uint64
	covered := false
	if watched {
		tag = windowTag(j.base/int64(d.lay.chunkBlocks), j.slot, w0)
		covered = w.covered(tag, first-w0, n, start)
	}
	if !wide {
		_, err := j.st.obj.ReadAt(j.run[lo*ss:hi*ss], j.off+int64(lo*ss))
		if err == nil && sampled {
			d.windowSample(covered, d.mono()-start)
		}
		return err
	}
	wOff := j.off + int64(lo*ss) - int64(first-w0)*BlockSize
	if storage.Prefetch(j.st.obj, wOff, int64(w1-w0)*BlockSize) {
		// The backend fetches the window in the background, and the read
		// waits only for its own pages: a read whose page is kept is not
		// held up by neighbours that are not. A backend that declines
		// the hint has the window read here instead.
		_, err := j.st.obj.ReadAt(j.run[lo*ss:hi*ss], j.off+int64(lo*ss))
		if err != nil {
			return err
		}
	} else {
		bp := d.getBuf((w1 - w0) * BlockSize)
		defer d.putBuf(bp)
		win := (*bp)[:(w1-w0)*BlockSize]
		if _, err := j.st.obj.ReadAt(win, wOff); err != nil {
			return err
		}
		copy(j.run[lo*ss:hi*ss], win[(first-w0)*BlockSize:])
	}
	if sampled {
		d.windowSample(covered, d.mono()-start)
	}
	if watched {
		w.remember(tag, first-w0, n, w1-w0, start)
	}
	return nil
}

// windowSample adds a short read's time to the window's samples, and logs
// when that turns the window on or off, or starts its choice over.
func (d *Disk) windowSample(covered bool, took time.Duration) {
	switch e := d.win.sample(covered, took); {
	case e.restart:
		d.log.Debug("read window: reads of pages read around slowed, windows forgotten", "on", true,
			"median_before", e.before, "median_now", e.now)
	case e.flipped:
		d.log.Debug("read window", "on", !d.win.off.Load(),
			"fast_read_around_pct", e.covPct, "fast_other_pct", e.othPct)
	}
}

// within returns where block i of a chunk lies in a request buffer that
// starts at chunk offset coff and is n bytes long.
func (d *Disk) within(i int, coff int64, n int) (lo, hi int) {
	start := int64(i) * BlockSize
	l := max(coff, start)
	h := min(coff+int64(n), start+BlockSize)
	return int(l - coff), int(h - coff)
}

// openInto opens the sealed block k (chunk-relative) and puts the part of it
// that the request covers into p.
func (d *Disk) openInto(p []byte, coff int64, k int, base int64, sealed []byte, sc *scratch, quiet bool) error {
	lo, hi := d.within(k, coff, len(p))
	dst := p[lo:hi]
	if hi-lo != BlockSize {
		dst = sc.plain
	}
	if err := d.openQuiet(dst, sealed, base+int64(k), sc, quiet); err != nil {
		return err
	}
	if hi-lo != BlockSize {
		start := int(int64(k)*BlockSize - coff) // may be negative for the first block
		copy(p[lo:hi], dst[lo-start:hi-start])
	}
	return nil
}

// openBlock authenticates and decrypts one sealed unit into dst (BlockSize
// bytes), using sc.inner for a second layer. sealed must not be sc.inner.
func (d *Disk) openBlock(dst, sealed []byte, block int64, sc *scratch) error {
	return d.openQuiet(dst, sealed, block, sc, false)
}

// openQuiet is openBlock; quiet leaves the alarm to the caller.
func (d *Disk) openQuiet(dst, sealed []byte, block int64, sc *scratch, quiet bool) error {
	if len(d.layers) == 2 {
		inner, err := sc.open[1].Open(sc.inner[:0], sealed, blockAD(&sc.ad, &d.vol, uint64(block), 2))
		if err != nil {
			if !quiet {
				d.alarm(block, 2, err)
			}
			return d.ioErr(block, err)
		}
		sealed = inner
	}
	out, err := sc.open[0].Open(dst[:0], sealed, blockAD(&sc.ad, &d.vol, uint64(block), 1))
	if err == nil && len(out) != BlockSize {
		err = fmt.Errorf("%w: opened block is %d bytes", ErrIntegrity, len(out))
	}
	if err != nil {
		if !quiet {
			d.alarm(block, 1, err)
		}
		return d.ioErr(block, err)
	}
	if &out[0] != &dst[0] {
		copy(dst, out)
	}
	return nil
}

// sealBlock seals one plaintext block into dst (exactly one sealed unit),
// using sc.inner for a second layer. dst must not be sc.inner.
func (d *Disk) sealBlock(dst, plain []byte, block int64, sc *scratch) {
	src := plain
	if len(d.layers) == 2 {
		src = sc.seal[0].Seal(sc.inner[:0], plain, blockAD(&sc.ad, &d.vol, uint64(block), 1))
		out := sc.seal[1].Seal(dst[:0], src, blockAD(&sc.ad, &d.vol, uint64(block), 2))
		if &out[0] != &dst[0] {
			copy(dst, out)
		}
		return
	}
	out := sc.seal[0].Seal(dst[:0], src, blockAD(&sc.ad, &d.vol, uint64(block), 1))
	if &out[0] != &dst[0] {
		copy(dst, out)
	}
}

func (d *Disk) ioErr(block int64, err error) error {
	var ioe *IOError
	if errors.As(err, &ioe) {
		return err
	}
	return &IOError{Disk: d.prefix, Block: block, Err: err}
}

// parallelMin is the run length from which sealing and opening are spread
// over several goroutines. A 1 MiB request with one request in flight (fio
// psync) otherwise keeps one core busy while the other idles.
const parallelMin = 64

// parallel runs fn over [0, n) split into parts, each with its own scratch,
// and returns the first error. Callers run short runs (below parallelMin)
// themselves, without the goroutines and the closure this costs. There are
// no more parts than CPUs: hostcryptd may run more Go processors than that
// (cmd/hostcryptd), and parts beyond the CPUs only wait for one.
func (d *Disk) parallel(n int, fn func(lo, hi int, sc *scratch) error) error {
	workers := min(runtime.GOMAXPROCS(0), runtime.NumCPU(), n/(parallelMin/2))
	if workers <= 1 {
		sc := d.getScratch()
		defer d.putScratch(sc)
		return fn(0, n, sc)
	}
	var wg sync.WaitGroup
	errs := make([]error, workers)
	per := (n + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := w*per, min(n, (w+1)*per)
		wg.Go(func() {
			sc := d.getScratch()
			defer d.putScratch(sc)
			errs[w] = fn(lo, hi, sc)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

var zeroBlock [BlockSize]byte

// WriteAt writes len(p) bytes at off. Partial blocks are read, merged and
// sealed again; whole zero blocks are stored as holes. A write past the end
// of the disk is refused with ErrRange.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	defer d.changed(off, int64(len(p))) // after the change: read-aheads of the range are stale
	if off < 0 || int64(len(p)) > d.size.Load()-off {
		return 0, fmt.Errorf("disk %s: write of %d bytes at %d: %w (size %d)", d.prefix, len(p), off, ErrRange, d.size.Load())
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		in := int(min(int64(len(p)-done), d.cbytes-pos%d.cbytes))
		if err := d.writeChunk(pos/d.cbytes, p[done:done+in], pos%d.cbytes); err != nil {
			return done, err
		}
		done += in
	}
	return done, nil
}

func (d *Disk) writeChunk(ci int64, p []byte, coff int64) error {
	for {
		wait, err := d.tryWriteChunk(ci, p, coff)
		if wait == nil {
			return err
		}
		<-wait
	}
}

// tryWriteChunk is writeChunk, unless a block of the write has no free slot
// while a Sync of the chunk is in flight: then it changes nothing and
// returns the channel to wait on before trying again.
func (d *Disk) tryWriteChunk(ci int64, p []byte, coff int64) (chan struct{}, error) {
	b0 := int(coff / BlockSize)
	b1 := int((coff + int64(len(p)) + BlockSize - 1) / BlockSize)
	base := ci * int64(d.lay.chunkBlocks)
	held := d.lockBlocks(base+int64(b0), base+int64(b1), true)
	defer held.unlock()
	if err := d.writable(base + int64(b0)); err != nil {
		return nil, err
	}
	c := d.chunk(ci)
	st, err := d.state(c, false)
	if err != nil {
		return nil, d.ioErr(base+int64(b0), err)
	}
	if st == nil {
		if zeros.Is(p) {
			return nil, nil // zeros onto a chunk that does not exist: nothing to store
		}
		if st, err = d.state(c, true); err != nil {
			return nil, d.ioErr(base+int64(b0), err)
		}
	}
	if st.flight != nil {
		for k := b0; k < b1; k++ {
			if _, ok := st.target(k); !ok {
				return st.flight.done, nil
			}
		}
	}
	return nil, d.writeBlocks(c, st, p, coff, b0, b1)
}

// writeBlocks seals and writes blocks [b0, b1) of a loaded chunk. The caller
// holds their stripe locks and has checked that each has a free slot.
func (d *Disk) writeBlocks(c *chunk, st *chunkState, p []byte, coff int64, b0, b1 int) error {
	n := b1 - b0
	base := c.idx * int64(d.lay.chunkBlocks)
	// What goes to the backend: whole sealed units (version 1), or the
	// ciphertext pages plus the entries that stay in memory (version 2).
	v1 := d.lay.format == formatV1
	ss, es := d.lay.slotSize, d.lay.entrySize
	if !v1 {
		ss = BlockSize
	}
	bp := d.getBuf(n*(ss+es+2) + 2*BlockSize)
	defer d.putBuf(bp)
	buf := *bp
	data, ents, rest := buf[:n*ss], buf[n*ss:n*(ss+es)], buf[n*(ss+es):]
	newSel, rest := rest[:n], rest[n:]
	fresh, rest := rest[:n], rest[n:]
	head, tail := rest[:BlockSize], rest[BlockSize:2*BlockSize]

	sc := d.getScratch()
	defer d.putScratch(sc)
	merge := func(k int, blk []byte) error {
		lo, hi := d.within(k, coff, len(p))
		if err := d.readPlain(st, k, base, blk, sc); err != nil {
			return err
		}
		start := int(int64(k)*BlockSize - coff)
		copy(blk[lo-start:hi-start], p[lo:hi])
		return nil
	}
	if lo, hi := d.within(b0, coff, len(p)); hi-lo != BlockSize {
		if err := merge(b0, head); err != nil {
			return err
		}
	}
	if lo, hi := d.within(b1-1, coff, len(p)); n > 1 && hi-lo != BlockSize {
		if err := merge(b1-1, tail); err != nil {
			return err
		}
	}

	// Data into the slots not named by the persisted selectors; the new
	// selectors (and in version 2 the entries) stay in memory until Sync
	// persists them, after the data is durable. A crash before that leaves
	// the old versions selected. A long write is split between goroutines,
	// each sealing and writing its part, so that one part's write to the
	// backend overlaps another's sealing.
	job := sealJob{d: d, st: st, p: p, coff: coff, base: base, b0: b0, b1: b1,
		head: head, tail: tail, data: data, ents: ents, newSel: newSel, fresh: fresh}
	var err error
	if n >= parallelMin {
		big := job // only this copy escapes to the goroutines
		err = d.parallel(n, big.seal)
	} else {
		err = job.seal(0, n, sc)
	}
	if err != nil {
		return errors.Join(err, d.fallBack(st, b0, newSel))
	}
	copy(st.sel[b0:b1], newSel)
	if !v1 {
		for k := b0; k < b1; k++ {
			if newSel[k-b0] != selNone {
				copy(st.ent[k*es:(k+1)*es], ents[(k-b0)*es:])
			}
		}
	}
	d.markDirty(c)
	return nil
}

// sealJob seals the blocks of one write.
type sealJob struct {
	d          *Disk
	st         *chunkState
	p          []byte
	coff, base int64
	b0, b1     int
	head, tail []byte // merged first and last block of a partial write
	data, ents []byte // out: sealed units or pages, and entries
	newSel     []byte // out: the selector of each block
	fresh      []byte // out (version 3): 1 for a block with no version at all, whose other slot is reserved too
}

// seal seals blocks b0+lo .. b0+hi-1 and writes them to their slots.
func (j *sealJob) seal(lo, hi int, sc *scratch) error {
	d := j.d
	ss, es := d.lay.slotSize, d.lay.entrySize
	v1 := d.lay.format == formatV1
	start, sealed := time.Now(), 0
	for k := j.b0 + lo; k < j.b0+hi; k++ {
		// The plaintext of block k: the request's bytes for a whole block,
		// or the old block merged with the request's bytes.
		var src []byte
		switch l, h := d.within(k, j.coff, len(j.p)); {
		case h-l == BlockSize:
			src = j.p[l:h]
		case k == j.b0:
			src = j.head
		default:
			src = j.tail
		}
		j.fresh[k-j.b0] = 0
		if zeros.Is(src) {
			j.newSel[k-j.b0] = selNone
			continue
		}
		sel, _ := j.st.target(k) // free: checked by tryWriteChunk
		j.newSel[k-j.b0] = sel
		if d.lay.format >= formatV3 && j.st.unused(k) {
			j.fresh[k-j.b0] = 1
		}
		sealed++
		if v1 {
			d.sealBlock(j.data[(k-j.b0)*ss:(k-j.b0+1)*ss], src, j.base+int64(k), sc)
			continue
		}
		d.sealBlock(sc.unit, src, j.base+int64(k), sc)
		d.lay.split(j.data[(k-j.b0)*BlockSize:], j.ents[(k-j.b0)*es:(k-j.b0+1)*es], sc.unit)
	}
	if sealed > 0 {
		d.work.sealNanos.Add(int64(time.Since(start)))
		d.work.sealed.Add(uint64(sealed))
	}
	// Runs of blocks going to the same slot are one write each.
	if !v1 {
		ss = BlockSize
	}
	for i := j.b0 + lo; i < j.b0+hi; {
		s := j.newSel[i-j.b0]
		if s == selNone {
			i++
			continue
		}
		e := i + 1
		for e < j.b0+hi && j.newSel[e-j.b0] == s {
			e++
		}
		slot, _, _ := slotOf(s)
		off := d.lay.slotOffset(slot, i)
		if !v1 {
			off = d.lay.pageOffset(slot, i)
		}
		if _, err := j.st.obj.WriteAt(j.data[(i-j.b0)*ss:(e-j.b0)*ss], off); err != nil {
			return d.ioErr(j.base+int64(i), err)
		}
		if err := j.reserve(i, e); err != nil {
			return err
		}
		i = e
	}
	return nil
}

// reserve writes the pages of the fresh blocks among [i, e) (which went to
// slot A) to slot B as well (version 3). A block's first write so takes
// the space of both its slots: its next version is an overwrite of space
// the backing file system has already allocated, as fast as any later
// one and never short of space (ENOSPC), and only a block never written
// can run out of it. The same ciphertext goes to both pages (rather than
// zeros, which a compressing or deduplicating store would not allocate);
// slot B's entry stays zero, so until a version of its own is synced
// there nothing in slot B opens.
func (j *sealJob) reserve(i, e int) error {
	d := j.d
	for i < e {
		if j.fresh[i-j.b0] == 0 {
			i++
			continue
		}
		f := i + 1
		for f < e && j.fresh[f-j.b0] != 0 {
			f++
		}
		if _, err := j.st.obj.WriteAt(j.data[(i-j.b0)*BlockSize:(f-j.b0)*BlockSize], d.lay.pageOffset(1, i)); err != nil {
			return d.ioErr(j.base+int64(i), err)
		}
		i = f
	}
	return nil
}

// fallBack is called when writing the new versions newSel of blocks
// [b0, b0+len(newSel)) failed: a block whose current version was in the slot
// just written (it was not synced yet) may have been overwritten, so it falls
// back to the version before: the one a Sync in flight is persisting, whose
// entry the flight holds, or else the persisted one. In version 2 the
// persisted version's entry is read back from the chunk, where the Sync that
// persisted its selector put it.
func (d *Disk) fallBack(st *chunkState, b0 int, newSel []byte) error {
	var errs []error
	es := d.lay.entrySize
	for k := b0; k < b0+len(newSel); k++ {
		if newSel[k-b0] == selNone || st.sel[k] != newSel[k-b0] {
			continue
		}
		if s, in := st.flight.at(k); in {
			st.sel[k] = s
			if d.lay.format != formatV1 {
				i := k - st.flight.lo
				copy(st.ent[k*es:(k+1)*es], st.flight.ent[i*es:(i+1)*es])
			}
			continue
		}
		st.sel[k] = st.psel[k]
		if d.lay.format == formatV1 {
			continue
		}
		if slot, ok, _ := slotOf(st.psel[k]); ok {
			// If this read fails too, the block fails authentication
			// until the disk is opened again.
			if _, err := st.obj.ReadAt(st.ent[k*es:(k+1)*es], d.lay.entryOffset(slot, k)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// readPlain reads the current plaintext of block k of a loaded chunk into dst
// (BlockSize bytes). The caller holds the block's stripe lock.
func (d *Disk) readPlain(st *chunkState, k int, base int64, dst []byte, sc *scratch) error {
	slot, ok, err := slotOf(st.sel[k])
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrIntegrity, err)
		d.alarm(base+int64(k), 0, err)
		return d.ioErr(base+int64(k), err)
	}
	if !ok {
		clear(dst)
		return nil
	}
	unit := sc.unit
	if d.lay.format == formatV1 {
		if _, err := st.obj.ReadAt(unit, d.lay.slotOffset(slot, k)); err != nil {
			return d.ioErr(base+int64(k), err)
		}
	} else {
		h, es := d.lay.head, d.lay.entrySize
		if _, err := st.obj.ReadAt(unit[h:h+BlockSize], d.lay.pageOffset(slot, k)); err != nil {
			return d.ioErr(base+int64(k), err)
		}
		e := st.ent[k*es : (k+1)*es]
		copy(unit[:h], e[:h])
		copy(unit[h+BlockSize:], e[h:])
	}
	return d.openBlock(dst, unit, base+int64(k), sc)
}

// Discard drops the range [off, off+n): afterwards it reads as zeros, and the
// space of whole blocks is given back to the backend (punched).
func (d *Disk) Discard(off, n int64) error {
	defer d.changed(off, n) // after the change: read-aheads of the range are stale
	size := d.size.Load()
	if off < 0 || n < 0 || n > size-off {
		return fmt.Errorf("disk %s: discard of %d bytes at %d: %w (size %d)", d.prefix, n, off, ErrRange, size)
	}
	end := off + n
	first := (off + BlockSize - 1) / BlockSize * BlockSize
	last := end / BlockSize * BlockSize
	if first >= last { // no whole block inside: write zeros
		return d.writeZeros(off, n)
	}
	if err := d.writeZeros(off, first-off); err != nil {
		return err
	}
	if err := d.writeZeros(last, end-last); err != nil {
		return err
	}
	for pos := first; pos < last; {
		ci := pos / d.cbytes
		in := min(last-pos, d.cbytes-pos%d.cbytes)
		if err := d.discardChunk(ci, int((pos%d.cbytes)/BlockSize), int(in/BlockSize)); err != nil {
			return err
		}
		pos += in
	}
	return nil
}

// writeZeros zeroes a small range through the write path (partial blocks).
func (d *Disk) writeZeros(off, n int64) error {
	for n > 0 {
		in := min(n, BlockSize-off%BlockSize)
		if _, err := d.WriteAt(zeroBlock[:in], off); err != nil {
			return err
		}
		off, n = off+in, n-in
	}
	return nil
}

// ZeroRange makes [off, off+n) read as zeros; it is the same as Discard.
func (d *Disk) ZeroRange(off, n int64) error { return d.Discard(off, n) }

func (d *Disk) discardChunk(ci int64, b0, n int) error {
	base := ci * int64(d.lay.chunkBlocks)
	c := d.chunk(ci)
	// Discard writes persisted selectors itself: no Sync of the chunk may
	// be in flight, or its end would record older selectors over these.
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	held := d.lockBlocks(base+int64(b0), base+int64(b0+n), true)
	defer held.unlock()
	if err := d.writable(base + int64(b0)); err != nil {
		return err
	}
	st, err := d.state(c, false)
	if err != nil || st == nil {
		return err
	}
	// The zero selectors go to the chunk and are made durable before the
	// slots are punched: a selector on the device must never name a
	// punched slot. Until then psel keeps the old ones, so a new write
	// keeps off the slots they name; should the writes fail, the device
	// holds old or zero selectors, both safe with that, and the chunk is
	// left dirty for the next Sync.
	clear(st.sel[b0 : b0+n])
	d.markDirty(c)
	if d.lay.format >= formatV3 {
		err := d.commitState(ci, st, func(sel []byte) {
			copy(sel, st.psel)
			clear(sel[b0 : b0+n])
		})
		if err != nil {
			return d.ioErr(base+int64(b0), err)
		}
	} else {
		if _, err := st.obj.WriteAt(st.sel[b0:b0+n], d.lay.selOffset(b0)); err != nil {
			return d.ioErr(base+int64(b0), err)
		}
		if err := st.obj.Sync(); err != nil {
			// The zero selectors alone would be safe either way, but
			// the sync covered the chunk's other dirty pages too,
			// which the file system may have dropped: fence (see
			// fence).
			d.fence(ci, "sync of a discard", err)
			return d.ioErr(base+int64(b0), err)
		}
	}
	clear(st.psel[b0 : b0+n])
	for s := 0; s < 2; s++ {
		off, size := d.lay.slotOffset(s, b0), int64(n)*int64(d.lay.slotSize)
		if d.lay.format != formatV1 {
			// The entries stay: with a zero selector nothing reads them.
			off, size = d.lay.pageOffset(s, b0), int64(n)*BlockSize
		}
		if err := st.obj.PunchHole(off, size); err != nil {
			return d.ioErr(base+int64(b0), err)
		}
	}
	return nil
}

// Sync makes every completed write durable in the backend. For each chunk
// written since the last Sync: the entries and data are made durable, then
// the selectors that name them are written and made durable in turn, so that
// a selector on stable storage never names data that is not. The chunk's
// locks are held only to copy the selectors at the start and to record them
// as persisted at the end: reads and writes go on during the two syncs
// (see chunkState.target for how writers keep off the slots in flight).
//
// Only the chunks in the dirty set are visited (written since their last
// Sync, or with a Sync in flight), so a Sync costs what was written, not
// what the disk's size is.
func (d *Disk) Sync() error {
	if err := d.Fenced(); err != nil {
		return fmt.Errorf("disk %s: %w", d.prefix, err)
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	sem := make(chan struct{}, syncParallel)
	for _, c := range d.dirty.list() {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := d.syncChunk(c); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("disk %s chunk %d: %w", d.prefix, c.idx, err))
				mu.Unlock()
				return
			}
			d.dirty.unmark(c)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// syncParallel is how many chunks one Sync makes durable at the same time.
// Each chunk costs two fsyncs, each a journal commit in the backing file
// system when blocks were allocated; in parallel the file system can share
// commits between chunks.
const syncParallel = 8

func (d *Disk) syncChunk(c *chunk) error {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	c.syncing.Store(true)
	defer c.syncing.Store(false) // before syncMu is released: a Sync that sees neither flag finds the chunk durable
	if err := d.Fenced(); err != nil {
		return err // a Sync of another chunk failed meanwhile: no sync after that
	}
	base := c.idx * int64(d.lay.chunkBlocks)
	lockChunk := func() heldStripes { return d.lockBlocks(base, base+int64(d.lay.chunkBlocks), false) }

	// Start: copy what is to be persisted and publish it as the flight.
	held := lockChunk()
	st := c.st.Load()
	if st == nil || !c.dirty.Swap(false) {
		held.unlock()
		return nil
	}
	lo, hi := 0, len(st.sel)
	for lo < hi && st.sel[lo] == st.psel[lo] {
		lo++
	}
	for hi > lo && st.sel[hi-1] == st.psel[hi-1] {
		hi--
	}
	es := d.lay.entrySize
	bp := d.getBuf((hi - lo) * (1 + es))
	defer d.putBuf(bp)
	f := &flight{lo: lo, sel: (*bp)[:hi-lo], done: make(chan struct{})}
	copy(f.sel, st.sel[lo:hi])
	if d.lay.format != formatV1 {
		f.ent = (*bp)[hi-lo : (hi-lo)*(1+es)]
		copy(f.ent, st.ent[lo*es:hi*es])
	}
	st.flight = f
	held.unlock()

	// The I/O, without the locks.
	var err error
	if d.lay.format != formatV1 {
		err = d.writeEntries(st, f)
	}
	if err == nil {
		if err = st.obj.Sync(); err != nil {
			// Data pages may be lost without a trace: no selector may
			// ever name them (see fence).
			d.fence(c.idx, "sync of data", err)
		}
	}
	if err == nil && lo < hi && d.lay.format >= formatV3 {
		err = d.commitState(c.idx, st, func(sel []byte) {
			copy(sel, st.psel)
			copy(sel[lo:], f.sel)
		})
		if err == nil {
			// The zeros over the older copy are durable only after the
			// chunk's next sync: leave the chunk to the next Sync (the
			// background one at the latest), so that the older copy
			// does not stay valid on the device for as long as the
			// chunk is not written again.
			d.markDirty(c)
		}
	} else if err == nil && lo < hi {
		if _, err = st.obj.WriteAt(f.sel, d.lay.selOffset(lo)); err == nil {
			if err = st.obj.Sync(); err != nil {
				d.fence(c.idx, "sync of selectors", err)
			}
		} else {
			// The device may hold the old selectors, the new ones or a
			// mix, and a write could go to the slot a selector there
			// names: no write is safe until the disk is opened again
			// and reads them back.
			d.fence(c.idx, "write of selectors", err)
		}
	}

	// End: the flight's selectors are the persisted ones now.
	held = lockChunk()
	if err == nil {
		copy(st.psel[lo:hi], f.sel)
	} else {
		d.markDirty(c)
	}
	st.flight = nil
	close(f.done)
	held.unlock()
	return err
}

// writeEntries writes the entries of the versions a flight persists that
// were not persisted before (version 2). The entries of a range of blocks
// are one range of the chunk, holding both slots' entries: it is read, the
// new entries are laid over it, and it is written back whole, so the entries
// of persisted versions are rewritten with the bytes they already have. Only
// Syncs write entries, one at a time per chunk (chunk.syncMu), so the range
// does not change between the read and the write.
func (d *Disk) writeEntries(st *chunkState, f *flight) error {
	// psel does not change while the flight is out: only the Sync that
	// owns it and Discard (which waits for it) write psel.
	changed := func(i int) bool { return f.sel[i] != selNone && f.sel[i] != st.psel[f.lo+i] }
	lo, hi := 0, len(f.sel)
	for lo < hi && !changed(lo) {
		lo++
	}
	for hi > lo && !changed(hi-1) {
		hi--
	}
	if lo == hi {
		return nil
	}
	es := d.lay.entrySize
	start := d.lay.entryOffset(0, f.lo+lo)
	bp := d.getBuf(2 * (hi - lo) * es)
	defer d.putBuf(bp)
	buf := *bp
	if _, err := st.obj.ReadAt(buf, start); err != nil {
		return err
	}
	for i := lo; i < hi; i++ {
		if !changed(i) {
			continue
		}
		slot, _, _ := slotOf(f.sel[i])
		off := d.lay.entryOffset(slot, f.lo+i) - start
		copy(buf[off:off+int64(es)], f.ent[i*es:(i+1)*es])
	}
	_, err := st.obj.WriteAt(buf, start)
	return err
}

// DefaultFlushInterval is how often an open disk syncs by itself unless told
// otherwise (SetFlushInterval), so that a guest that never flushes still has
// its writes persisted within seconds.
const DefaultFlushInterval = 5 * time.Second

// flushEvery is the interval new disks start with: DefaultFlushInterval, a
// variable only so that tests can keep the background Sync out of their way.
var flushEvery = DefaultFlushInterval

// SetFlushInterval changes how often the disk syncs by itself; the next
// background Sync comes one interval from now. A longer interval leaves
// more unflushed writes to lose in a crash, and spends less of the machine
// on making them durable while the guest writes: every Sync writes back the
// data written since the last one and flushes the backing device's cache.
// A guest's own flush (fsync) always syncs at once. Intervals under 100 ms
// are taken as 100 ms.
func (d *Disk) SetFlushInterval(every time.Duration) {
	every = max(every, 100*time.Millisecond)
	d.everyMu.Lock()
	defer d.everyMu.Unlock()
	select {
	case <-d.every: // replace a value the flusher has not taken yet
	default:
	}
	d.every <- every
}

func (d *Disk) flusher(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case every := <-d.every:
			t.Reset(every)
		case <-t.C:
			if d.Fenced() != nil {
				continue // said once, by fence; nothing is synced again
			}
			start := time.Now()
			err := d.Sync()
			took := time.Since(start)
			d.work.bgSyncs.Add(1)
			d.work.bgSyncNanos.Add(int64(took))
			d.log.Debug("background sync", "took", took)
			if err != nil && !d.closed.Load() {
				d.log.Error("background sync failed", "err", err)
			}
		}
	}
}

// SeekData returns the offset of the first byte at or after off that lies in a
// written block, or an error matching syscall.ENXIO when there is none.
func (d *Disk) SeekData(off int64) (int64, error) { return d.seek(off, true) }

// SeekHole returns the offset of the first never-written (or discarded) block
// at or after off; the end of the disk counts as a hole.
func (d *Disk) SeekHole(off int64) (int64, error) { return d.seek(off, false) }

func (d *Disk) seek(off int64, data bool) (int64, error) {
	size := d.size.Load()
	if off < 0 || off >= size {
		return 0, syscall.ENXIO
	}
	cb := int64(d.lay.chunkBlocks)
	for b := off / BlockSize; b*BlockSize < size; {
		ci := b / cb
		st, err := d.stateAt(ci, b)
		if err != nil {
			return 0, err
		}
		if st == nil {
			if !data {
				return max(off, b*BlockSize), nil
			}
			b = (ci + 1) * cb
			continue
		}
		for ; b < (ci+1)*cb && b*BlockSize < size; b++ {
			held := d.lockBlocks(b, b+1, false)
			written := st.sel[b-ci*cb] != selNone
			held.unlock()
			if written == data {
				return max(off, b*BlockSize), nil
			}
		}
	}
	if data {
		return 0, syscall.ENXIO
	}
	return size, nil
}

// Resize grows the disk to size bytes (a multiple of the sector size).
// Shrinking is refused: it would destroy data.
func (d *Disk) Resize(ctx context.Context, size int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if size < d.meta.Size {
		return fmt.Errorf("disk %s: shrinking from %d to %d bytes is not supported; create a new, smaller disk and copy the data", d.prefix, d.meta.Size, size)
	}
	if err := checkGeometry(size, d.sector, d.lay.chunkBlocks); err != nil {
		return fmt.Errorf("disk %s: %w", d.prefix, err)
	}
	// Everything that can fail comes before the metadata is written: the
	// new size is valid (so the disk opens at it), and the chunk table's
	// new top level is made here and only installed after the write. A
	// failed write leaves the disk as it was, on storage and in memory.
	top := newTopFor(d.chunkCount(size))
	// The stored metadata, not the copy read at open: a Rewrap since
	// then changed the wraps, and writing the old ones back would undo it;
	// written back by compare-and-swap, so that a Rewrap racing this one
	// is not undone either.
	var m *Metadata
	for attempt := 1; ; attempt++ {
		var v storage.Version
		var err error
		if m, v, err = readMetadataVersion(ctx, d.be, d.prefix); err != nil {
			return err
		}
		if m.VolumeID != d.meta.VolumeID {
			return fmt.Errorf("disk %s: the stored metadata is of another volume (%s, opened as %s)", d.prefix, m.VolumeID, d.meta.VolumeID)
		}
		m.Size = size
		_, err = writeMetadataIf(ctx, d.be, d.prefix, m, v)
		if err == nil {
			break
		}
		if !errors.Is(err, storage.ErrConflict) || attempt >= casRetries {
			return err
		}
		if err := casBackoff(ctx, attempt); err != nil {
			return err
		}
	}
	d.meta = m
	d.table.grow(top) // before the size: no I/O reaches a chunk the table has no room for
	d.size.Store(size)
	return nil
}

// Close makes every write durable, closes the chunk objects and wipes the
// disk's keys from memory. It waits for I/O in flight; later I/O fails with
// ErrClosed.
func (d *Disk) Close() error {
	d.closeOnce.Do(func() {
		close(d.stop)
		// Wait for the I/O in flight; everything after fails with
		// ErrClosed.
		held := d.lockBlocks(0, nStripes*stripeBlocks, true)
		d.closed.Store(true)
		held.unlock()
		d.dropAhead()
		err := d.Sync()
		if err == nil {
			// Again, for the chunks whose selector state the first one
			// committed: the zeros over their older copies (format 3).
			err = d.Sync()
		}
		d.table.each(func(c *chunk) {
			// A Sync that started before Close (the flusher's, a
			// caller's) may still be writing the chunk.
			c.syncMu.Lock()
			if st := c.st.Swap(nil); st != nil {
				err = errors.Join(err, st.obj.Close())
				d.opened.Add(-1)
			}
			c.syncMu.Unlock()
		})
		d.wipeLayers()
		// Drop the scratch buffers with the sealers' derived keys; no I/O
		// reaches them any more.
		d.scratch = sync.Pool{}
		d.closeError = err
	})
	return d.closeError
}

func (d *Disk) wipeLayers() {
	for _, l := range d.layers {
		l.Close()
	}
	hcrypto.Wipe(d.selKey)
}
