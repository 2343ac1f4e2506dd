package cluster

import (
	"context"
	"time"

	"hostcrypt/storage"
)

// HolderWait bounds how long Holder waits for the owner record of a disk
// whose lock was just taken.
const HolderWait = 2 * time.Second

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
