package cluster

import (
	"context"
	"errors"
	"time"

	"hostcrypt/storage"
)

// HolderWait bounds how long AcquireDisk waits, on a refused lock, for
// its owner record to name who holds it.
const HolderWait = 2 * time.Second

// AcquireDisk takes disk id's writer lock as Acquire does. A refusal
// returns, with Acquire's error (wrapping storage.ErrConflict), the holder
// the disk's owner record names. A writer records itself right after it
// took the lock, and records that it let the disk go right before it
// unlocks: while a refused lock's record says its last owner let the disk
// go, the lock is being given up at that moment, or was just taken by a
// writer that has not recorded itself yet. So it is tried again every
// 20 ms, for up to wait, until it is taken or the record names a holder.
// A refusal whose record named none by then returns the zero Owner. (A
// holder that took the lock from a writer that did not let it go is named
// only once it recorded itself: until then the record names the writer it
// is fencing.)
func AcquireDisk(ctx context.Context, locks Locks, st storage.Backend, id, desc string, lease time.Duration, onLost func(error), wait time.Duration) (*Lease, Owner, error) {
	deadline := time.Now().Add(wait)
	for {
		l, err := Acquire(ctx, locks, []string{LockKey(id)}, desc, lease, onLost)
		if !errors.Is(err, storage.ErrConflict) {
			return l, Owner{}, err
		}
		o, _, rerr := ReadOwner(ctx, st, id)
		if rerr == nil && o.Host != "" && !o.Released {
			return nil, o, err
		}
		if rerr != nil || !time.Now().Before(deadline) {
			return nil, Owner{}, err
		}
		select {
		case <-ctx.Done():
			return nil, Owner{}, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}
