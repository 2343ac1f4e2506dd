//go:build ceph

package rados

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"

	"hostcrypt/storage"
)

const (
	// metaGuess is the first read size of a metadata object; larger ones
	// take a second read of the exact size.
	metaGuess = 16 << 10
	// usageWorkers bounds the stat calls Usage has in flight.
	usageWorkers = 16
	// closedBit marks a closed Backend in its state word, whose low bits
	// count the calls in flight.
	closedBit = int64(1) << 62
	// probeObject is an object name no key can take (keys have no segment
	// starting with '.'), read once by Open to check the user's rights.
	probeObject = ".hostcrypt-open-probe"
)

// Backend is a storage.Backend on one pool and namespace, through one
// librados connection. Its methods may be called concurrently: librados
// serves many calls in flight on one I/O context.
type Backend struct {
	cfg   Config
	conn  *rados.Conn
	ioctx *rados.IOContext
	aio   *aioCalls // chunk reads and writes
	// slots holds a token for each call in flight (MaxInFlight at most).
	slots chan struct{}

	// state is closedBit once Close was called, plus the number of calls
	// in flight: Close waits for those before it frees the connection that
	// they use. A counter and not a lock, so that the data path of many
	// goroutines never waits on another.
	state   atomic.Int64
	drained chan struct{}
	once    sync.Once
}

var _ storage.Backend = (*Backend)(nil)

// Open connects to the cluster of cfg and returns a Backend on its pool and
// namespace. It fails if the pool does not exist or the user may not read
// it.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	where := fmt.Sprintf("rados pool %q as client.%s", cfg.Pool, cfg.User)
	conn, err := rados.NewConnWithUser(cfg.User)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if cfg.ConfFile != "" {
		// librados says only "no such file" without the name: check first.
		if _, err := os.Stat(cfg.ConfFile); err != nil {
			return nil, fmt.Errorf("%s: ceph configuration: %w", where, err)
		}
		err = conn.ReadConfigFile(cfg.ConfFile)
	} else {
		err = conn.ReadDefaultConfigFile()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: reading the ceph configuration %s: %w", where, confName(cfg), err)
	}
	secs := strconv.Itoa(int(math.Ceil(cfg.Timeout.Seconds())))
	for _, opt := range []string{"rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout"} {
		if err := conn.SetConfigOption(opt, secs); err != nil {
			return nil, fmt.Errorf("%s: setting %s: %w", where, opt, err)
		}
	}
	// Connect is bounded by client_mount_timeout; a cancelled ctx returns at
	// once and leaves the connection to be shut down when Connect is done.
	connected := make(chan error, 1)
	go func() { connected <- conn.Connect() }()
	select {
	case err = <-connected:
	case <-ctx.Done():
		go func() {
			if <-connected == nil {
				conn.Shutdown()
			}
		}()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, classify(fmt.Sprintf("%s: connecting to the monitors of %s", where, confName(cfg)), err, cfg)
	}
	ioctx, err := conn.OpenIOContext(cfg.Pool)
	if err != nil {
		conn.Shutdown()
		if errors.Is(err, rados.ErrNotFound) {
			return nil, fmt.Errorf("%s: the pool does not exist (create it: ceph osd pool create %s)", where, cfg.Pool)
		}
		return nil, classify(where, err, cfg)
	}
	ioctx.SetNamespace(cfg.Namespace)
	aio, err := newAIOCalls()
	if err != nil {
		ioctx.Destroy()
		conn.Shutdown()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	b := &Backend{cfg: cfg, conn: conn, ioctx: ioctx, aio: aio, slots: make(chan struct{}, MaxInFlight), drained: make(chan struct{})}
	// The first object call finds out whether the user may use the pool
	// and whether its OSDs answer.
	if _, err := ioctx.Stat(probeObject); err != nil && !errors.Is(err, rados.ErrNotFound) {
		b.shutdown()
		return nil, classify(where, err, cfg)
	}
	return b, nil
}

func confName(cfg Config) string {
	if cfg.ConfFile == "" {
		return "the default ceph.conf"
	}
	return cfg.ConfFile
}

// Config returns the configuration the backend was opened with, defaults
// filled in.
func (b *Backend) Config() Config { return b.cfg }

func (b *Backend) shutdown() {
	b.ioctx.Destroy()
	b.conn.Shutdown()
	b.aio.close()
}

// enter counts a call in flight and takes its turn (turn); it fails once
// the backend is closed, and with ErrTimeout when no turn came. On success
// the caller must call b.leave.
func (b *Backend) enter() error {
	if err := b.count(); err != nil {
		return err
	}
	return b.turn()
}

// turn waits for one of the MaxInFlight turns of a counted call, at most
// the configured timeout; without one, it uncounts the call.
func (b *Backend) turn() error {
	select {
	case b.slots <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(b.cfg.Timeout)
	defer t.Stop()
	select {
	case b.slots <- struct{}{}:
		return nil
	case <-t.C:
		b.done()
		return fmt.Errorf("rados pool %q: %d calls of this client were in flight for %v and this one got no turn "+
			"(the cluster is slow or unreachable; every call is bounded by the location's timeout): %w",
			b.cfg.Pool, cap(b.slots), b.cfg.Timeout, ErrTimeout)
	}
}

// leave ends a call enter let in.
func (b *Backend) leave() {
	<-b.slots
	b.done()
}

// count counts a call in flight without taking a turn, or fails once the
// backend is closed; the caller calls done. The lock calls (renewals
// above all) and the fencing take no turn: a lease must not run out
// behind a queue of data calls.
func (b *Backend) count() error {
	if b.state.Add(1)&closedBit != 0 {
		b.done()
		return fmt.Errorf("rados pool %q: %w", b.cfg.Pool, storage.ErrClosed)
	}
	return nil
}

// done uncounts a call, and lets Close go on after the last one.
func (b *Backend) done() {
	if b.state.Add(-1) == closedBit {
		b.once.Do(func() { close(b.drained) })
	}
}

// begin is the common entry of every method taking a key: a closed backend,
// a cancelled context and an invalid key are refused before any RADOS call.
// On success the caller must call b.leave.
func (b *Backend) begin(ctx context.Context, key string, prefix bool) error {
	if err := b.beginControl(ctx, key, prefix); err != nil {
		return err
	}
	return b.turn()
}

// beginControl is begin without a turn, for the lock calls (count). On
// success the caller must call b.done.
func (b *Backend) beginControl(ctx context.Context, key string, prefix bool) error {
	if err := b.count(); err != nil {
		return err
	}
	err := ctx.Err()
	if err == nil && prefix {
		err = storage.ValidPrefix(key)
	} else if err == nil {
		err = storage.ValidKey(key)
	}
	if err != nil {
		b.done()
	}
	return err
}

// Close waits for the calls in flight (each is bounded by the timeout),
// then closes the connection. Chunks still open fail from then on.
func (b *Backend) Close() error {
	old := b.state.Or(closedBit)
	if old&closedBit != 0 {
		return nil
	}
	if old != 0 {
		<-b.drained
	}
	b.shutdown()
	return nil
}

// classify wraps a librados error with what the caller can do about it.
func classify(what string, err error, cfg Config) error {
	var e syscall.Errno
	if !errors.As(err, &e) {
		var coded interface{ ErrorCode() int }
		if errors.As(err, &coded) {
			e = syscall.Errno(-coded.ErrorCode())
		}
	}
	switch e {
	case syscall.ENOENT:
		return fmt.Errorf("%s: %w", what, storage.ErrNotFound)
	case syscall.ETIMEDOUT:
		return fmt.Errorf("%s: no answer within %v (is the cluster up and reachable? every call is bounded by the location's timeout): %w",
			what, cfg.Timeout, ErrTimeout)
	case syscall.EPERM, syscall.EACCES:
		return fmt.Errorf("%s: permission denied: client.%s needs read and write rights on pool %s "+
			"(e.g. ceph auth caps client.%s mon 'profile rbd' osd 'profile rbd pool=%s'): %w",
			what, cfg.User, cfg.Pool, cfg.User, cfg.Pool, err)
	case syscall.ESHUTDOWN:
		return fmt.Errorf("%s: this client was blocklisted by the cluster (fenced: another client took over): %w", what, err)
	case syscall.EFBIG:
		return fmt.Errorf("%s: beyond the OSDs' object size limit (osd_max_object_size): %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (b *Backend) fail(op, key string, err error) error {
	return classify(fmt.Sprintf("rados %s %q", op, key), err, b.cfg)
}

// OpenChunk opens the object key for offset I/O. With create set it makes
// the object if missing (one call either way); without, it checks that the
// object exists. WithEpoch's chunks open their own way (epoch.go).
func (b *Backend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	if err := b.begin(ctx, key, false); err != nil {
		return nil, err
	}
	defer b.leave()
	var err error
	if create {
		err = b.ioctx.Create(key, rados.CreateIdempotent)
	} else {
		_, err = b.ioctx.Stat(key)
	}
	if err != nil {
		return nil, b.fail("open chunk", key, err)
	}
	return &chunk{b: b, key: key}, nil
}

// ReadMeta reads the whole object key in one operation.
func (b *Backend) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	if err := b.begin(ctx, key, false); err != nil {
		return nil, err
	}
	defer b.leave()
	data, _, err := readWhole(b.ioctx, key, make([]byte, metaGuess))
	if err != nil {
		return nil, b.fail("read", key, err)
	}
	// A copy of the exact size: the caller may keep it, and the read
	// buffer is mostly unused for a small value.
	return slices.Clone(data), nil
}

// WriteMeta replaces the object key with data in one full-object write,
// which RADOS applies atomically and acknowledges once durable.
func (b *Backend) WriteMeta(ctx context.Context, key string, data []byte) error {
	if err := b.begin(ctx, key, false); err != nil {
		return err
	}
	defer b.leave()
	if _, err := writeFull(b.ioctx, key, data, always, 0); err != nil {
		return b.fail("write", key, err)
	}
	return nil
}

// ReadMetaVersion is ReadMeta that also returns the version of the value
// read, for WriteMetaIf.
func (b *Backend) ReadMetaVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	if err := b.begin(ctx, key, false); err != nil {
		return nil, storage.NoVersion, err
	}
	defer b.leave()
	// librados reports versions per I/O context, so each versioned call
	// has one of its own: on the shared one, another call's version could
	// come back.
	io, err := b.privateIOContext()
	if err != nil {
		return nil, storage.NoVersion, b.fail("read", key, err)
	}
	defer io.Destroy()
	data, ver, err := readWhole(io, key, make([]byte, metaGuess))
	if err != nil {
		return nil, storage.NoVersion, b.fail("read", key, err)
	}
	return slices.Clone(data), storage.Version(ver), nil
}

// WriteMetaIf replaces the object key with data only if it is still at
// version ifVersion, as ReadMetaVersion returned it, or, with storage.NoVersion,
// only if it does not exist. It returns the new version. When the object is
// elsewhere (changed, created or deleted meanwhile) nothing is written and
// the error wraps storage.ErrConflict; of several callers racing from one version,
// exactly one wins.
func (b *Backend) WriteMetaIf(ctx context.Context, key string, data []byte, ifVersion storage.Version) (storage.Version, error) {
	if err := b.begin(ctx, key, false); err != nil {
		return storage.NoVersion, err
	}
	defer b.leave()
	io, err := b.privateIOContext()
	if err != nil {
		return storage.NoVersion, b.fail("write", key, err)
	}
	defer io.Destroy()
	cond := ifAt
	if ifVersion == storage.NoVersion {
		cond = ifAbsent
	}
	nv, err := writeFull(io, key, data, cond, uint64(ifVersion))
	switch {
	case err == nil:
		return storage.Version(nv), nil
	case cond == ifAbsent && errors.Is(err, syscall.EEXIST):
		return storage.NoVersion, fmt.Errorf("rados write %q: it exists already: %w", key, storage.ErrConflict)
	// A stale version gives ERANGE (older) or EOVERFLOW (newer), a deleted
	// object ENOENT.
	case cond == ifAt && (errors.Is(err, syscall.ERANGE) || errors.Is(err, syscall.EOVERFLOW)):
		return storage.NoVersion, fmt.Errorf("rados write %q: it is no longer at version %d: %w", key, ifVersion, storage.ErrConflict)
	case cond == ifAt && errors.Is(err, syscall.ENOENT):
		return storage.NoVersion, fmt.Errorf("rados write %q: it was deleted: %w", key, storage.ErrConflict)
	}
	return storage.NoVersion, b.fail("write", key, err)
}

func (b *Backend) privateIOContext() (*rados.IOContext, error) {
	io, err := b.conn.OpenIOContext(b.cfg.Pool)
	if err != nil {
		return nil, err
	}
	io.SetNamespace(b.cfg.Namespace)
	return io, nil
}

// Delete removes the object key; RADOS acknowledges once it is durable.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.begin(ctx, key, false); err != nil {
		return err
	}
	defer b.leave()
	if err := b.ioctx.Delete(key); err != nil {
		return b.fail("delete", key, err)
	}
	return nil
}

// List lists the whole namespace, as RADOS has no prefix listing, and
// keeps the names under prefix. It costs one listing call per page of the
// namespace's objects, whatever the prefix.
func (b *Backend) List(ctx context.Context, prefix string) ([]string, error) {
	if err := b.begin(ctx, prefix, true); err != nil {
		return nil, err
	}
	defer b.leave()
	return b.list(ctx, prefix)
}

func (b *Backend) list(ctx context.Context, prefix string) ([]string, error) {
	it, err := b.ioctx.Iter()
	if err != nil {
		return nil, b.fail("list", prefix, err)
	}
	defer it.Close()
	keys := []string{}
	for i := 0; it.Next(); i++ {
		if i%256 == 255 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		name := it.Value()
		// Names no key can take are another program's objects sharing the
		// namespace, or this backend's probe: not objects of the backend.
		if (prefix == "" || strings.HasPrefix(name, prefix+"/")) && storage.ValidKey(name) == nil {
			keys = append(keys, name)
		}
	}
	if err := it.Err(); err != nil {
		return nil, b.fail("list", prefix, err)
	}
	slices.Sort(keys)
	return keys, nil
}

// Usage is the sum of the logical sizes of the objects under prefix:
// RADOS reports no allocation per object, so holes count as data here.
// It lists, then stats each object, usageWorkers at a time.
func (b *Backend) Usage(ctx context.Context, prefix string) (int64, error) {
	var total atomic.Int64
	err := b.eachUnder(ctx, prefix, func(key string) error {
		st, err := b.ioctx.Stat(key)
		if errors.Is(err, rados.ErrNotFound) {
			return nil // deleted since the listing
		}
		if err != nil {
			return b.fail("stat", key, err)
		}
		total.Add(int64(st.Size))
		return nil
	})
	if err != nil {
		return 0, err
	}
	return total.Load(), nil
}

// eachUnder lists the objects under prefix and calls fn for each, up to
// usageWorkers at once, as one call in flight; it stops at the first error
// fn returns (or when ctx is done) and returns that.
func (b *Backend) eachUnder(ctx context.Context, prefix string, fn func(key string) error) error {
	if err := b.begin(ctx, prefix, true); err != nil {
		return err
	}
	defer b.leave()
	keys, err := b.list(ctx, prefix)
	if err != nil {
		return err
	}
	var (
		next  atomic.Int64
		first error
		mu    sync.Mutex
		wg    sync.WaitGroup
	)
	for range min(usageWorkers, len(keys)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(keys) || ctx.Err() != nil {
					return
				}
				if err := fn(keys[i]); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					next.Store(int64(len(keys)))
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// chunk is offset I/O on one object. It holds nothing but its name and
// its writer's epoch: each call is one RADOS operation on the backend's
// I/O context.
type chunk struct {
	b   *Backend
	key string
	// epoch, if not 0, guards each write and zero: it fails once the
	// object carries a newer ownership epoch (WithEpoch). Once the object
	// carries epoch (stamped: since its opening, or by the first write or
	// zero that succeeded) the later ones only compare.
	epoch   uint64
	stamped atomic.Bool
	closed  atomic.Bool
}

// guard is the epoch guard of c's next write or zero.
func (c *chunk) guard() guard {
	return guard{epoch: c.epoch, stamp: c.epoch != 0 && !c.stamped.Load()}
}

// done notes that an operation under g succeeded.
func (c *chunk) done(g guard) {
	if g.stamp {
		c.stamped.Store(true)
	}
}

// fail is Backend.fail, but a guarded operation the epoch compare refused
// is an error of its own (staleEpoch).
func (c *chunk) fail(op string, err error) error {
	if c.epoch != 0 && errors.Is(err, syscall.ECANCELED) {
		return c.b.staleEpoch(op, c.key, c.epoch)
	}
	return c.b.fail(op, c.key, err)
}

func (c *chunk) enter(op string, off, n int64) error {
	if off < 0 || n < 0 {
		return fmt.Errorf("rados %s %q: negative offset or length (%d, %d)", op, c.key, off, n)
	}
	if c.closed.Load() {
		return fmt.Errorf("rados %s %q: %w", op, c.key, os.ErrClosed)
	}
	return c.b.enter()
}

// ReadAt reads in one asynchronous call (aio.go), waiting for it without
// holding a thread; what lies past the object's end reads as zeros, and so
// does a range never written (RADOS objects are sparse).
func (c *chunk) ReadAt(p []byte, off int64) (int, error) {
	if err := c.enter("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	defer c.b.leave()
	if len(p) == 0 {
		return 0, nil
	}
	n, err := c.b.aio.read(c.b.ioctx, c.key, p, uint64(off))
	if err != nil {
		return 0, c.b.fail("read", c.key, err)
	}
	clear(p[n:])
	return len(p), nil
}

// WriteAt writes in one call, asynchronous like ReadAt's when writes come
// together (aio.go). The object must exist: a chunk deleted while open is
// not brought back by a late write.
func (c *chunk) WriteAt(p []byte, off int64) (int, error) {
	if err := c.enter("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	defer c.b.leave()
	if len(p) == 0 {
		return 0, nil
	}
	g := c.guard()
	if err := c.b.aio.write(c.b.ioctx, c.key, p, uint64(off), g); err != nil {
		return 0, c.fail("write", err)
	}
	c.done(g)
	return len(p), nil
}

// PunchHole zeroes the range with RADOS' zero operation, clipped to the
// object's size so that it never grows the object (nor reaches past the
// OSDs' object size limit, which a zero may not cross). A write racing the
// punch past the old end keeps its bytes, as if it came after.
func (c *chunk) PunchHole(off, n int64) error {
	if err := c.enter("punch", off, n); err != nil {
		return err
	}
	defer c.b.leave()
	if n == 0 {
		return nil
	}
	st, err := c.b.ioctx.Stat(c.key)
	if err != nil {
		return c.b.fail("punch", c.key, err)
	}
	end := min(uint64(off)+uint64(n), st.Size)
	if uint64(off) >= end {
		return nil
	}
	g := c.guard()
	if err := zero(c.b.ioctx, c.key, uint64(off), end-uint64(off), g); err != nil {
		return c.fail("punch", err)
	}
	c.done(g)
	return nil
}

// Sync has nothing to do: RADOS acknowledges a write, a zero and a create
// only once every replica has made it durable.
func (c *chunk) Sync() error {
	if c.closed.Load() {
		return fmt.Errorf("rados sync %q: %w", c.key, os.ErrClosed)
	}
	if err := c.b.count(); err != nil {
		return err
	}
	c.b.done()
	return nil
}

// Close forgets the chunk; there is nothing to flush.
func (c *chunk) Close() error {
	c.closed.Store(true)
	return nil
}
