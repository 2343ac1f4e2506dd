package cluster

import (
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

func openGuarded(t *testing.T, locks Locks, lease time.Duration, onLost func(error)) (*Lease, storage.Chunk) {
	t.Helper()
	st, err := local.Open(t.TempDir())
	require.NoError(t, err)
	l, err := Acquire(bg, locks, []string{LockKey("d1"), LockKey("d2")}, "test", lease, onLost)
	require.NoError(t, err)
	t.Cleanup(func() { l.Release(bg) })
	g := Guard(st, l)
	c, err := g.OpenChunk(bg, "disks/d1/c0", true)
	require.NoError(t, err)
	_, err = c.WriteAt([]byte("before"), 0)
	require.NoError(t, err)
	return l, c
}

// A renewal that hangs does not extend the deadline: once the lease has
// run since the last renewal that succeeded was sent, every call fails
// with EIO, the renewal still hanging; and a second writer is refused
// the locks meanwhile.
func TestLeaseDeadlineWhileRenewalHangs(t *testing.T) {
	locks := newServerLocks()
	lease := 300 * time.Millisecond
	l, c := openGuarded(t, locks, lease, nil)
	_, err := Acquire(bg, locks, []string{LockKey("d2")}, "other", lease, nil)
	require.ErrorIs(t, err, storage.ErrConflict)

	// Renewals keep it alive well past one lease.
	require.Eventually(t, func() bool { return locks.renewed() >= 4 }, 10*time.Second, 10*time.Millisecond)
	_, err = c.WriteAt([]byte("renewed"), 0)
	require.NoError(t, err)

	locks.mu.Lock()
	locks.hang = make(chan struct{})
	hang := locks.hang
	locks.mu.Unlock()
	defer close(hang)
	require.True(t, storage.Prefetch(c, 0, 4096), "a prefetch hint passes to local storage while the lease holds")
	require.Eventually(t, func() bool { return l.Check() != nil }, 10*time.Second, 5*time.Millisecond)
	require.False(t, storage.Prefetch(c, 0, 4096), "no hint passes once the lease is lost")
	_, err = c.WriteAt([]byte("late"), 0)
	require.ErrorIs(t, err, syscall.EIO)
	require.ErrorIs(t, err, ErrLeaseLost)
	_, err = c.ReadAt(make([]byte, 4), 0)
	require.ErrorIs(t, err, syscall.EIO)
	require.ErrorIs(t, c.Sync(), syscall.EIO)
}

// A renewal that finds its lock expired on the server is lost for good:
// the writer is told once, every call fails, and the lock is not taken
// back.
func TestLeaseLostIsNotTakenBack(t *testing.T) {
	locks := newServerLocks()
	lease := 300 * time.Millisecond
	var lost atomic.Int32
	l, c := openGuarded(t, locks, lease, func(err error) {
		if errors.Is(err, storage.ErrNotFound) {
			lost.Add(1)
		}
	})
	locks.advance(time.Hour) // the server saw the lease run out
	require.Eventually(t, func() bool { return lost.Load() == 1 }, 10*time.Second, 5*time.Millisecond)
	_, err := c.WriteAt([]byte("late"), 0)
	require.ErrorIs(t, err, syscall.EIO)
	hs, err := locks.Holders(bg, LockKey("d1"), DiskLockName)
	require.NoError(t, err)
	assert.Empty(t, hs, "the lost lease took nothing back")
	// Another writer may take them now.
	l2, err := Acquire(bg, locks, []string{LockKey("d1"), LockKey("d2")}, "other", lease, nil)
	require.NoError(t, err)
	require.NoError(t, l2.Release(bg))
	require.NoError(t, l.Release(bg))
	assert.Equal(t, int32(1), lost.Load())
}

// Renewals that fail with anything (a fenced client's are refused) past
// the deadline lose the lease for good: the writer is told, so that its VM
// stops, and nothing is taken back.
func TestLeaseLostWhenRenewalsFailPastTheDeadline(t *testing.T) {
	locks := newServerLocks()
	lease := 300 * time.Millisecond
	lostErr := make(chan error, 1)
	l, c := openGuarded(t, locks, lease, func(err error) { lostErr <- err })
	locks.mu.Lock()
	locks.fail = syscall.ESHUTDOWN
	locks.mu.Unlock()
	select {
	case err := <-lostErr:
		require.ErrorIs(t, err, syscall.ESHUTDOWN)
		assert.Contains(t, err.Error(), "no renewal reached the store within the lease")
	case <-time.After(10 * time.Second):
		t.Fatal("the lease was never given up")
	}
	require.ErrorIs(t, l.Check(), ErrLeaseLost)
	_, err := c.WriteAt([]byte("late"), 0)
	require.ErrorIs(t, err, syscall.EIO)
	locks.mu.Lock()
	locks.fail = nil
	locks.mu.Unlock()
	time.Sleep(2 * lease)
	require.ErrorIs(t, l.Check(), ErrLeaseLost, "never taken back")
}
