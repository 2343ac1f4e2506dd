package cluster

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// A writer lets a disk go by recording it (Disown), then unlocking. A
// writer that asks for the lock in between is not refused: AcquireDisk
// tries again while the record says released, and takes the lock once it
// is free. A lock whose record names a holder is refused at once, naming
// it, and one that stays held past the wait is refused then.
func TestAcquireDiskWhileTheLastOwnerLetsGo(t *testing.T) {
	st, err := local.Open(t.TempDir())
	require.NoError(t, err)
	locks := newServerLocks()

	// A owns d1 and holds its lock.
	la, _, err := AcquireDisk(bg, locks, st, "d1", "a", time.Hour, nil, 0)
	require.NoError(t, err)
	own, err := Own(bg, st, &fakeFencer{addr: "a/1"}, "d1", "host-a", "vm1")
	require.NoError(t, err)

	// While the record names A, B is refused without waiting, and told
	// that A holds it.
	start := time.Now()
	_, holder, err := AcquireDisk(bg, locks, st, "d1", "b", time.Hour, nil, 5*time.Second)
	require.ErrorIs(t, err, storage.ErrConflict)
	assert.Less(t, time.Since(start), 2*time.Second, "a record naming a live holder is not waited on")
	assert.Equal(t, own.Owner, holder)

	// A records that it lets the disk go; its unlock comes 150 ms later.
	require.NoError(t, Disown(bg, st, "d1", own.Owner))
	start = time.Now()
	go func() {
		time.Sleep(150 * time.Millisecond)
		_ = la.Release(bg)
	}()
	lb, _, err := AcquireDisk(bg, locks, st, "d1", "b", time.Hour, nil, 5*time.Second)
	require.NoError(t, err, "the lock of a disk being let go is waited for")
	assert.GreaterOrEqual(t, time.Since(start), 150*time.Millisecond, "B held the lock before A unlocked it")
	defer lb.Release(bg)

	// Without a wait, the same moment is a refusal, as Acquire's.
	require.NoError(t, Disown(bg, st, "d1", own.Owner))
	_, holder, err = AcquireDisk(bg, locks, st, "d1", "c", time.Hour, nil, 0)
	require.ErrorIs(t, err, storage.ErrConflict)
	assert.Zero(t, holder, "a released record names no holder")

	// A lock that stays held while the record says released (its holder
	// died between the two) is refused once the wait is over.
	start = time.Now()
	_, _, err = AcquireDisk(bg, locks, st, "d1", "c", time.Hour, nil, 100*time.Millisecond)
	require.ErrorIs(t, err, storage.ErrConflict)
	assert.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
}
