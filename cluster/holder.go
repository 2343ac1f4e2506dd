package cluster

import (
	"context"
	"errors"
	"time"

	"hostcrypt/storage"
)

// HolderWait bounds how long Holder waits for the owner record of a disk
// whose lock was just taken.
const HolderWait = 2 * time.Second

// AcquireDisk takes disk id's writer lock as Acquire does. A writer that
// lets the disk go records that (Disown) before it unlocks, so a lock
// refused while the owner record says its last owner let the disk go is
// being given up at that moment, or was just taken by a writer that has
// not recorded itself yet: it is tried again every 20 ms, for up to wait,
// until it is taken or the record names a holder. What stays refused is
// an error wrapping storage.ErrConflict, as Acquire's; Holder tells whose.
func AcquireDisk(ctx context.Context, locks Locks, st storage.Backend, id, desc string, lease time.Duration, onLost func(error), wait time.Duration) (*Lease, error) {
	deadline := time.Now().Add(wait)
	for {
		l, err := Acquire(ctx, locks, []string{LockKey(id)}, desc, lease, onLost)
		if !errors.Is(err, storage.ErrConflict) || !time.Now().Before(deadline) {
			return l, err
		}
		if o, _, rerr := ReadOwner(ctx, st, id); rerr != nil || (o.Host != "" && !o.Released) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Holder returns the owner record of disk id, whose lock another writer
// holds, as its holder wrote it: a writer records itself right after it
// took the lock, so while the record still says its last owner let the
// disk go, Holder reads it again, for up to wait. ok is false when no
// record came by then. (A holder that took the lock from a writer that
// did not let it go is named only once it recorded itself: until then
// the record names the writer it is fencing.)
func Holder(ctx context.Context, st storage.Backend, id string, wait time.Duration) (o Owner, ok bool) {
	deadline := time.Now().Add(wait)
	for {
		o, _, err := ReadOwner(ctx, st, id)
		if err == nil && o.Host != "" && !o.Released {
			return o, true
		}
		if err != nil || !time.Now().Before(deadline) {
			return Owner{}, false
		}
		select {
		case <-ctx.Done():
			return Owner{}, false
		case <-time.After(20 * time.Millisecond):
		}
	}
}
