package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"hostcrypt/storage"
)

// ErrLeaseLost is wrapped by every call a Guard refuses: the writer's
// lease ran out, or another writer took the locks. It wraps syscall.EIO,
// which is what the guest sees.
var ErrLeaseLost = fmt.Errorf("the lease on the disk ran out or was taken over: %w", syscall.EIO)

// Lease holds exclusive locks on a set of objects for one writer (the
// disks of one running VM), renewed every third of the lease with "must
// renew". Its deadline runs on this host's monotonic clock, from when the
// last renewal that succeeded was sent: the server expires the lock no
// earlier than a lease after it received that renewal, so this host stops
// first. Past the deadline Check fails even while a renewal hangs.
type Lease struct {
	locks  Locks
	keys   []string
	cookie string
	desc   string
	lease  time.Duration
	onLost func(error)
	stop   chan struct{}
	wg     sync.WaitGroup

	mu       sync.Mutex
	deadline time.Time // monotonic
	lost     error
}

// LockKey is the object whose lock stands for the disk id.
func LockKey(id string) string { return "cluster/locks/" + id }

// DiskLockName is the name of a disk's writer lock.
const DiskLockName = "hostcrypt.writer"

// Acquire takes the exclusive lock on each of keys for lease, shown to
// others as desc. A lock held by another writer is an error wrapping
// storage.ErrConflict, and nothing stays held. onLost, if not nil, is
// called once (from the renewing goroutine) when a renewal finds a lock no
// longer held.
func Acquire(ctx context.Context, locks Locks, keys []string, desc string, lease time.Duration, onLost func(error)) (*Lease, error) {
	if lease <= 0 {
		lease = DefaultLease
	}
	l := &Lease{locks: locks, keys: keys, cookie: newCookie(), desc: desc, lease: lease, onLost: onLost, stop: make(chan struct{})}
	sent := time.Now()
	for i, k := range keys {
		if err := locks.Lock(ctx, k, DiskLockName, l.cookie, desc, lease, false); err != nil {
			for _, held := range keys[:i] {
				_ = locks.Unlock(context.WithoutCancel(ctx), held, DiskLockName, l.cookie)
			}
			return nil, err
		}
	}
	l.deadline = sent.Add(lease)
	l.wg.Go(l.renew)
	return l, nil
}

func (l *Lease) renew() {
	t := time.NewTicker(l.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), l.lease)
		var err error
		for _, k := range l.keys {
			if err = l.locks.Lock(ctx, k, DiskLockName, l.cookie, l.desc, l.lease, true); err != nil {
				err = fmt.Errorf("renewing the lock on %s: %w", k, err)
				break
			}
		}
		cancel()
		l.mu.Lock()
		switch {
		case err == nil:
			if d := sent.Add(l.lease); d.After(l.deadline) {
				l.deadline = d
			}
		case errors.Is(err, storage.ErrNotFound):
			// Expired or broken: another writer may hold it now. It is
			// never taken back.
			l.lost = err
		case !time.Now().Before(l.deadline):
			// Past the deadline without a renewal (this host was frozen
			// or cut off, or its client was fenced): another writer may
			// hold the lock now, so it is lost for good too.
			l.lost = fmt.Errorf("no renewal reached the store within the lease (%v): %w", l.lease, err)
		}
		lost := l.lost
		l.mu.Unlock()
		if lost != nil {
			if l.onLost != nil {
				l.onLost(lost)
			}
			return
		}
	}
}

// Check says whether the writer may still use the disks: nil before the
// deadline while no renewal found a lock lost, else an error wrapping
// ErrLeaseLost.
func (l *Lease) Check() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil {
		return fmt.Errorf("%w (%v)", ErrLeaseLost, l.lost)
	}
	if !time.Now().Before(l.deadline) {
		return fmt.Errorf("%w: no renewal of the lock reached the store within the lease (%v)", ErrLeaseLost, l.lease)
	}
	return nil
}

// Release stops renewing and gives the locks up.
func (l *Lease) Release(ctx context.Context) error {
	select {
	case <-l.stop:
		return nil
	default:
	}
	close(l.stop)
	l.wg.Wait()
	var errs []error
	for _, k := range l.keys {
		errs = append(errs, l.locks.Unlock(ctx, k, DiskLockName, l.cookie))
	}
	return errors.Join(errs...)
}

// Guard returns be with every call refused once the lease is lost (Check),
// before it reaches be.
func Guard(be storage.Backend, l *Lease) storage.Backend { return &guarded{be: be, l: l} }

// GuardOwned is Guard for a disk that o owns (Own): besides, a metadata
// write goes out only while the disk's owner record still names o's
// client and epoch. (The record is read before the write, not in one
// operation with it; what closes the gap is the taker's order: it
// blocklists the last owner's client before it changes the record, and
// bumps the version of the disk's metadata, so that a conditional write
// prepared before the takeover fails.)
func GuardOwned(be storage.Backend, l *Lease, id string, o Owner) storage.Backend {
	return &guarded{be: be, l: l, id: id, own: &o}
}

type guarded struct {
	be  storage.Backend
	l   *Lease
	id  string
	own *Owner
}

// checkWrite is Check and, for an owned disk, CheckOwner.
func (g *guarded) checkWrite(ctx context.Context) error {
	if err := g.l.Check(); err != nil {
		return err
	}
	if g.own == nil {
		return nil
	}
	return CheckOwner(ctx, g.be, g.id, *g.own)
}

func (g *guarded) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	if err := g.l.Check(); err != nil {
		return nil, err
	}
	c, err := g.be.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return &guardedChunk{c: c, l: g.l}, nil
}

func (g *guarded) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	if err := g.l.Check(); err != nil {
		return nil, err
	}
	return g.be.ReadMeta(ctx, key)
}

func (g *guarded) WriteMeta(ctx context.Context, key string, data []byte) error {
	if err := g.checkWrite(ctx); err != nil {
		return err
	}
	return g.be.WriteMeta(ctx, key, data)
}

func (g *guarded) ReadMetaVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	if err := g.l.Check(); err != nil {
		return nil, storage.NoVersion, err
	}
	return g.be.ReadMetaVersion(ctx, key)
}

func (g *guarded) WriteMetaIf(ctx context.Context, key string, data []byte, ifVersion storage.Version) (storage.Version, error) {
	if err := g.checkWrite(ctx); err != nil {
		return storage.NoVersion, err
	}
	return g.be.WriteMetaIf(ctx, key, data, ifVersion)
}

func (g *guarded) Delete(ctx context.Context, key string) error {
	if err := g.l.Check(); err != nil {
		return err
	}
	return g.be.Delete(ctx, key)
}

func (g *guarded) List(ctx context.Context, prefix string) ([]string, error) {
	if err := g.l.Check(); err != nil {
		return nil, err
	}
	return g.be.List(ctx, prefix)
}

func (g *guarded) Usage(ctx context.Context, prefix string) (int64, error) {
	if err := g.l.Check(); err != nil {
		return 0, err
	}
	return g.be.Usage(ctx, prefix)
}

// Close does nothing: the backend underneath is the caller's (a VM's
// connection, shared by its disks).
func (g *guarded) Close() error { return nil }

type guardedChunk struct {
	c storage.Chunk
	l *Lease
}

func (c *guardedChunk) ReadAt(p []byte, off int64) (int, error) {
	if err := c.l.Check(); err != nil {
		return 0, err
	}
	return c.c.ReadAt(p, off)
}

func (c *guardedChunk) WriteAt(p []byte, off int64) (int, error) {
	if err := c.l.Check(); err != nil {
		return 0, err
	}
	return c.c.WriteAt(p, off)
}

func (c *guardedChunk) PunchHole(off, n int64) error {
	if err := c.l.Check(); err != nil {
		return err
	}
	return c.c.PunchHole(off, n)
}

// Prefetch passes the hint down while the lease holds; it writes nothing.
func (c *guardedChunk) Prefetch(off, n int64) bool {
	return c.l.Check() == nil && storage.Prefetch(c.c, off, n)
}

func (c *guardedChunk) Sync() error {
	if err := c.l.Check(); err != nil {
		return err
	}
	return c.c.Sync()
}

func (c *guardedChunk) Close() error { return c.c.Close() }
