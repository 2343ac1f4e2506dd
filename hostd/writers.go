package hostd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"hostcrypt/cluster"
	"hostcrypt/control"
	"hostcrypt/disk"
	"hostcrypt/storage"
	"hostcrypt/storage/location"
)

// writers opens, for each running VM on a RADOS pool, a connection of its
// own (a client instance of its own) and takes a leased writer lock per
// disk on it.
type writers struct {
	loc   location.Location
	lease time.Duration
	host  string
}

// Open connects the VM's own client. Its calls are bounded well below a
// third of the lease (the location's timeout, at most lease/4), so that a
// renewal that does not answer fails before the lease could run out
// unnoticed.
func (w writers) Open(ctx context.Context, vm string) (control.VMWriter, error) {
	return w.open(ctx, vm, "", fmt.Sprintf("host %s, VM %s", w.host, vm))
}

// Operation connects a client of the operation's own, as Open does for a
// VM: should its lock be taken over, fencing it fences nothing else.
func (w writers) Operation(ctx context.Context, op string) (control.VMWriter, error) {
	return w.open(ctx, "", op, fmt.Sprintf("host %s, %s", w.host, op))
}

func (w writers) open(ctx context.Context, vm, op, desc string) (control.VMWriter, error) {
	loc := w.loc
	cfg := *loc.RADOS
	if cfg.Timeout == 0 || cfg.Timeout > w.lease/4 {
		cfg.Timeout = max(w.lease/4, time.Second)
	}
	loc.RADOS = &cfg
	be, err := loc.Open(ctx)
	if err != nil {
		return nil, err
	}
	locks, ok := be.(cluster.Locks)
	fencer, ok2 := be.(cluster.Fencer)
	epochs, ok3 := be.(cluster.EpochGuarded)
	if !ok || !ok2 || !ok3 {
		be.Close()
		return nil, fmt.Errorf("the storage backend has no locks, fencing or epoch guard for writers")
	}
	return &vmWriter{be: be, locks: locks, fencer: fencer, epochs: epochs, lease: w.lease, host: w.host, vm: vm, op: op, desc: desc}, nil
}

type vmWriter struct {
	be     storage.Backend
	locks  cluster.Locks
	fencer cluster.Fencer
	epochs cluster.EpochGuarded
	lease  time.Duration
	host   string
	vm     string
	op     string
	desc   string
}

// Disk takes the disk's lock, then its ownership (cluster.Own: the last
// owner's client fenced unless it let the disk go, the epoch bumped), and
// after a takeover bumps the version of the disk's metadata, so that a
// conditional write the fenced owner prepared before cannot land. The
// disk's chunks are written under the epoch taken: once this writer wrote
// a chunk, the store refuses a write to it from any writer of an older
// epoch, fenced or not; and should another writer take the disk under a
// newer epoch, this one's writes fail with EIO on each chunk the other
// wrote. After a takeover from a writer that did not let the disk go,
// every chunk of the disk is stamped with the new epoch before the disk
// opens, so that writer is refused on all of them, and the epoch becomes
// the disk's floor: a chunk object that writer creates afterwards is
// found below it and removed, never read.
func (v *vmWriter) Disk(ctx context.Context, id, metaKey string, lost func(error)) (control.DiskWriter, error) {
	l, holder, err := cluster.AcquireDisk(ctx, v.locks, v.be, id, v.desc, v.lease, lost, cluster.HolderWait)
	if errors.Is(err, storage.ErrConflict) {
		held := &control.LockHeld{Host: holder.Host, VM: holder.VM, Op: holder.Op}
		return control.DiskWriter{}, fmt.Errorf("disk %s: %w (%v)", id, held, err)
	}
	if err != nil {
		return control.DiskWriter{}, err
	}
	own, err := cluster.OwnAs(ctx, v.be, v.fencer, id, cluster.Owner{Host: v.host, VM: v.vm, Op: v.op})
	if err == nil && own.Fenced != nil {
		err = touchMeta(ctx, v.be, metaKey)
	}
	if err != nil {
		_ = l.Release(context.WithoutCancel(ctx))
		return control.DiskWriter{}, err
	}
	guarded := v.epochs.WithEpoch(own.Epoch, own.Floor)
	if s, ok := guarded.(cluster.ChunkStamper); ok && own.Fenced != nil {
		// The last writer did not let the disk go: from now on it is
		// refused on every chunk, also those this writer will not write.
		// Then the floor: a chunk object below it, one that writer creates
		// from now on, is never read as the disk's. Nothing of the disk
		// is read before both are done.
		n, err := s.StampChunks(ctx, disk.ChunksPrefix(path.Dir(metaKey)))
		if err == nil {
			own.Owner, err = cluster.RaiseFloor(ctx, v.be, id, own.Owner)
		}
		if err != nil {
			_ = l.Release(context.WithoutCancel(ctx))
			return control.DiskWriter{}, fmt.Errorf("disk %s: stamping its chunks with ownership epoch %d after the takeover: %w", id, own.Epoch, err)
		}
		slog.Info("disk taken over: chunks stamped with the new ownership epoch", "disk", id, "epoch", own.Epoch, "chunks", n)
		guarded = v.epochs.WithEpoch(own.Epoch, own.Floor)
	}
	dw := control.DiskWriter{Storage: cluster.GuardOwned(guarded, l, id, own.Owner), Epoch: own.Epoch}
	if own.Fenced != nil && own.Fenced.Host != v.host {
		dw.Fenced = own.Fenced.Host
		if err := cluster.MarkFenced(ctx, v.be, own.Fenced.Host, v.host); err != nil {
			slog.Warn("recording a fenced host", "host", own.Fenced.Host, "err", err)
		}
	}
	dw.Release = func() {
		ctx := context.Background()
		if l.Check() == nil {
			_ = cluster.Disown(ctx, v.be, id, own.Owner)
		}
		_ = l.Release(ctx)
	}
	return dw, nil
}

// touchMeta rewrites the object at key as it is, which gives it a new
// version.
func touchMeta(ctx context.Context, be storage.Backend, key string) error {
	raw, ver, err := be.ReadMetaVersion(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	if err == nil {
		_, err = be.WriteMetaIf(ctx, key, raw, ver)
	}
	if err != nil {
		return fmt.Errorf("bumping the version of %s after a takeover: %w", key, err)
	}
	return nil
}

// Free fails, wrapping storage.ErrConflict, while someone holds the disk's
// writer lock with a lease that has not run out on the OSD.
func (v *vmWriter) Free(ctx context.Context, id string) error {
	hs, err := v.locks.Holders(ctx, cluster.LockKey(id), cluster.DiskLockName)
	if err != nil {
		return err
	}
	if len(hs) > 0 {
		return fmt.Errorf("its writer lock is still held (%s): %w", strings.Join(hs, ", "), storage.ErrConflict)
	}
	return nil
}

func (v *vmWriter) Close() error { return v.be.Close() }
