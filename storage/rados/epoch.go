//go:build ceph

package rados

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"syscall"

	"hostcrypt/storage"
)

// Chunk writes guarded by the disk's ownership epoch. Taking a disk over
// fences the last writer's client by blocklisting it; a writer nobody
// fenced (a fence that did not happen, a client the owner record did not
// name) is stopped by the objects themselves: a guarded writer's first
// write or zero of a chunk object stamps it with its epoch (the xattr
// EpochXattr), and every write and zero it sends carries, in the same
// operation, a compare that fails when the object's epoch is newer than
// its own. The OSD applies the compare, the stamp and the write together
// or none of them.

// EpochXattr is the xattr of a chunk object that holds the newest
// ownership epoch it was written under, in 20 zero-padded decimal digits
// (shim.go's hc_guard writes it).
const EpochXattr = "hostcrypt.epoch"

// WithEpoch returns b for a writer of a disk owned under ownership epoch
// epoch (at least 1): each of its chunks stamps its object with the epoch
// in its first write or zero, and its writes and zeros are refused, with
// an error wrapping ErrStaleEpoch, once a writer of a newer epoch wrote the
// object. Opening a chunk and reading it cost what they cost on b; a write
// costs a compare more, the first of each chunk a stamp too. Everything
// else is b's own; closing the result does not close b.
func (b *Backend) WithEpoch(epoch uint64) storage.Backend {
	if epoch == 0 {
		panic("rados: WithEpoch(0): ownership epochs start at 1")
	}
	return epochBackend{b, epoch}
}

type epochBackend struct {
	*Backend
	epoch uint64
}

func (e epochBackend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	return e.openChunk(ctx, key, create, e.epoch)
}

// Close leaves the backend open: it is the caller's of WithEpoch.
func (e epochBackend) Close() error { return nil }

// StampChunks stamps every object under prefix (a disk's chunks) with
// e's epoch, so that from then on a writer of an older epoch is refused on
// each of them, not only on those e writes; a taker runs it when it took
// the disk from a writer that did not let it go. It returns how many
// objects it stamped. An object deleted meanwhile is skipped; one that
// carries a newer epoch already fails it with an error wrapping
// ErrStaleEpoch (this writer is the stale one). Up to usageWorkers objects
// are stamped at once.
func (e epochBackend) StampChunks(ctx context.Context, prefix string) (int, error) {
	var stamped atomic.Int64
	err := e.eachUnder(ctx, prefix, func(key string) error {
		switch err := stamp(e.ioctx, key, e.epoch); {
		case errors.Is(err, syscall.ENOENT):
			return nil // deleted since the listing
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
