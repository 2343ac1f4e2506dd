//go:build ceph

package rados

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"syscall"

	"hostcrypt/storage"
)

// Chunk writes guarded by the disk's ownership epoch. Taking a disk over
// fences the last writer's client by blocklisting it; a writer nobody
// fenced (a fence that did not happen, a client the owner record did not
// name) is stopped by the objects themselves: a guarded writer creates a
// chunk object stamped with its epoch (the xattr EpochXattr), its first
// write or zero of an existing one stamps it, and every write and zero it
// sends carries, in the same operation, a compare that fails when the
// object's epoch is newer than its own. The OSD applies the compare, the
// stamp and the write together or none of them. A chunk object such a
// writer creates after the takeover, which no stamping reached, is caught
// by the disk's epoch floor when the new owner opens it (WithEpoch).

// EpochXattr is the xattr of a chunk object that holds the newest
// ownership epoch it was written under, in 20 zero-padded decimal digits
// (shim.go's hc_guard writes it).
const EpochXattr = "hostcrypt.epoch"

// WithEpoch returns b for a writer of a disk owned under ownership epoch
// epoch (at least 1): each of its chunks stamps its object with the epoch
// in its first write or zero, and its writes and zeros are refused, with
// an error wrapping ErrStaleEpoch, once a writer of a newer epoch wrote the
// object. A chunk object it creates is stamped in the creating operation.
//
// floor (at most epoch; 0 for none) is the disk's epoch floor: the epoch
// of its last takeover from a writer that did not let it go, after which
// every chunk object of the disk carried that epoch or a newer one. An
// object found below it (a chunk object a writer of an older epoch created
// after that takeover) holds only writes made after the takeover, never
// the disk's: opening it removes it, by a removal conditional on its epoch,
// and goes on as if it were absent. An object without an epoch (written
// by an unguarded backend: an operation on the stopped disk) is taken as
// the disk's and stamped with epoch at its opening, so that no older
// writer's write can land in it afterwards.
//
// Opening a chunk costs what it costs on b (with a floor, a read of the
// xattr instead of a stat; creating one that exists, a call more), and
// reading it the same; a write costs a compare more, the first of each
// chunk not yet carrying the epoch a stamp too. Everything else is b's own; closing the result does not close b.
func (b *Backend) WithEpoch(epoch, floor uint64) storage.Backend {
	if epoch == 0 {
		panic("rados: WithEpoch(0): ownership epochs start at 1")
	}
	if floor > epoch {
		panic(fmt.Sprintf("rados: WithEpoch(%d, %d): the floor is above the epoch", epoch, floor))
	}
	return epochBackend{b, epoch, floor}
}

type epochBackend struct {
	*Backend
	epoch, floor uint64
}

func (e epochBackend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	if err := e.begin(ctx, key, false); err != nil {
		return nil, err
	}
	defer e.leave()
	stamped, err := e.open(key, create)
	if err != nil {
		return nil, err
	}
	c := &chunk{b: e.Backend, key: key, epoch: e.epoch}
	c.stamped.Store(stamped)
	return c, nil
}

// casTries bounds how often an opening of a chunk starts over when its
// object changes between the read of its epoch and the operation that
// depends on it (someone else stamps, removes or creates it meanwhile).
const casTries = 8

// open opens the object key for e (OpenChunk without the turn), creating
// it stamped when create is set and it is missing, and tells whether it
// carries e's epoch.
func (e epochBackend) open(key string, create bool) (bool, error) {
	for range casTries {
		if create {
			err := createStamped(e.ioctx, key, e.epoch)
			if err == nil {
				return true, nil
			}
			if !errors.Is(err, syscall.EEXIST) {
				return false, e.fail("open chunk", key, err)
			}
		}
		if e.floor == 0 {
			if create {
				return false, nil // it exists
			}
			if _, err := e.ioctx.Stat(key); err != nil {
				return false, e.fail("open chunk", key, err)
			}
			return false, nil
		}
		// Below the floor or not: what the object carries decides.
		was, err := readEpoch(e.ioctx, key)
		if errors.Is(err, syscall.ENOENT) && create {
			continue // removed since the create: create it again
		}
		if err != nil {
			return false, e.fail("open chunk", key, err)
		}
		ep, err := e.settle(key, was)
		switch {
		case err == nil:
			return ep == e.epoch, nil
		case errors.Is(err, syscall.ECANCELED):
			continue // stamped or removed meanwhile: look again
		case errors.Is(err, errRemoved), errors.Is(err, syscall.ENOENT):
			if create {
				continue // gone: create it anew
			}
			return false, e.fail("open chunk", key, syscall.ENOENT)
		default:
			return false, err
		}
	}
	return false, fmt.Errorf("rados open chunk %q: its object changed under each of %d tries "+
		"(another writer creates, stamps or removes it at the same time; retry once the disk has a single writer)", key, casTries)
}

// settle brings the object key, whose epoch xattr holds was, to e's
// terms and returns the epoch it carries then. One without an epoch (an
// unguarded writer's object: the disk's) takes e's epoch, so that no older
// writer's write lands in it from now on; one below the floor is removed
// (errRemoved). An error wrapping ECANCELED says the object changed since
// was was read, one wrapping ENOENT that it is gone.
func (e epochBackend) settle(key, was string) (uint64, error) {
	ep, err := e.classify(key, was)
	switch {
	case err != nil:
		return 0, err
	case ep == 0:
		if err := epochCAS(e.ioctx, key, "", e.epoch); err != nil {
			if errors.Is(err, syscall.ECANCELED) || errors.Is(err, syscall.ENOENT) {
				return 0, err
			}
			return 0, e.fail("stamp chunk", key, err)
		}
		return e.epoch, nil
	case ep < e.floor:
		if err := e.removeStale(key, was, ep); err != nil {
			return 0, err
		}
		return 0, errRemoved
	}
	return ep, nil
}

// classify reads the epoch xattr value was of key: 0 for none.
func (e epochBackend) classify(key, was string) (uint64, error) {
	if was == "" {
		return 0, nil
	}
	ep, err := strconv.ParseUint(was, 10, 64)
	if err != nil || ep == 0 || len(was) != 20 {
		return 0, fmt.Errorf("rados open chunk %q: its %s xattr %q is not an ownership epoch "+
			"(20 decimal digits); the object was edited outside hostcrypt: set it to the disk's epoch "+
			"(rados setxattr) or remove the object if its data is not the disk's", key, EpochXattr, was)
	}
	return ep, nil
}

// removeStale removes the object key, whose epoch xattr holds was (epoch
// ep, below e's floor), unless it changed meanwhile (an error wrapping
// ECANCELED). An object already gone is no error.
func (e epochBackend) removeStale(key, was string, ep uint64) error {
	err := epochCAS(e.ioctx, key, was, 0)
	if errors.Is(err, syscall.ECANCELED) {
		return err
	}
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		return e.fail("remove stale chunk", key, err)
	}
	slog.Warn("rados: removed a chunk object created under an older ownership epoch after the disk's takeover; "+
		"its content was written after the takeover and is not the disk's",
		"chunk", key, "epoch", ep, "floor", e.floor)
	return nil
}

// Close leaves the backend open: it is the caller's of WithEpoch.
func (e epochBackend) Close() error { return nil }

// StampChunks stamps every object under prefix (a disk's chunks) with
// e's epoch, so that from then on a writer of an older epoch is refused on
// each of them, not only on those e writes; a taker runs it when it took
// the disk from a writer that did not let it go, and raises the disk's
// floor to its epoch once it succeeded. It returns how many objects it
// stamped. An object deleted meanwhile is skipped; one that carries a newer
// epoch already fails it with an error wrapping ErrStaleEpoch (this writer
// is the stale one). With a floor, an object below it is removed instead,
// as an opening would (WithEpoch), and one without an epoch is stamped
// only while it has none: a writer of an older epoch that stamps it
// meanwhile makes it one below the floor. Up to usageWorkers objects are
// stamped at once.
func (e epochBackend) StampChunks(ctx context.Context, prefix string) (int, error) {
	var stamped atomic.Int64
	err := e.eachUnder(ctx, prefix, func(key string) error {
		err := e.stampOne(key)
		switch {
		case errors.Is(err, errRemoved), errors.Is(err, syscall.ENOENT):
			return nil // stale, or deleted since the listing
		case errors.Is(err, syscall.ECANCELED):
			return e.staleEpoch("stamp", key, e.epoch)
		case err != nil:
			return e.fail("stamp", key, err)
		}
		stamped.Add(1)
		return nil
	})
	return int(stamped.Load()), err
}

var errRemoved = errors.New("removed")

// stampOne is StampChunks on one object: nil once stamped, errRemoved when
// it was below the floor and is removed, or the librados error. An object
// at or above the floor (and not above e's epoch) takes one operation,
// the others a read of the epoch and one more.
func (e epochBackend) stampOne(key string) error {
	err := stamp(e.ioctx, key, e.epoch, e.floor)
	if e.floor == 0 || !errors.Is(err, syscall.ECANCELED) {
		return err
	}
	for range casTries {
		was, err := readEpoch(e.ioctx, key)
		if err != nil {
			return err
		}
		ep, err := e.settle(key, was)
		switch {
		case errors.Is(err, syscall.ECANCELED):
			continue // changed meanwhile: look again
		case err != nil, ep == e.epoch:
			return err
		}
		return stamp(e.ioctx, key, e.epoch, 0)
	}
	return fmt.Errorf("its object changed under each of %d tries", casTries)
}

// staleEpoch is the error of a guarded operation op on key, of a writer
// under epoch mine, that the epoch compare refused. It names the object's
// epoch when it can read it.
func (b *Backend) staleEpoch(op, key string, mine uint64) error {
	newer := "a newer ownership epoch"
	buf := make([]byte, 32)
	if n, err := b.ioctx.GetXattr(key, EpochXattr, buf); err == nil {
		if e, err := strconv.ParseUint(string(buf[:n]), 10, 64); err == nil {
			newer = fmt.Sprintf("ownership epoch %d", e)
		}
	}
	return fmt.Errorf("rados %s %q: refused: the object was written under %s, this writer's is %d "+
		"(another host took the disk over; stop this writer): %w", op, key, newer, mine, ErrStaleEpoch)
}
