//go:build ceph

package cluster

import (
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/internal/testenv"
	"hostcrypt/storage"
	"hostcrypt/storage/rados"
)

// openRADOS opens n connections to the test cluster in a namespace of the
// test's own, each standing for a host.
func openRADOS(t *testing.T, n int) []*rados.Backend {
	cfg := *testenv.RADOS(t, "test-cluster-").RADOS
	var out []*rados.Backend
	for range n {
		b, err := rados.Open(t.Context(), cfg)
		require.NoError(t, err)
		out = append(out, b)
	}
	t.Cleanup(func() {
		keys, _ := out[0].List(bg, "")
		for _, k := range keys {
			out[0].Delete(bg, k)
		}
		for _, b := range out {
			b.Close()
		}
	})
	return out
}

// Two hosts on one pool: each sees the other alive; one that stops
// renewing (killed) is lost once its lease runs out on the OSD; the other,
// whose clock is a day behind, stays alive; the dead host's name is free
// again, and a live host's name is refused.
func TestHostsOnRADOS(t *testing.T) {
	bs := openRADOS(t, 3)
	lease := 3 * time.Second
	a, err := Join(t.Context(), Config{Name: "host-a", Store: bs[0], Locks: bs[0], Lease: lease})
	require.NoError(t, err)
	b, err := Join(t.Context(), Config{Name: "host-b", Store: bs[1], Locks: bs[1], Lease: lease,
		Now: func() time.Time { return time.Now().Add(-24 * time.Hour) }})
	require.NoError(t, err)
	defer b.Close(bg)
	_, err = Join(t.Context(), Config{Name: "host-b", Store: bs[2], Locks: bs[2], Lease: lease})
	require.ErrorContains(t, err, `host name "host-b" is in use`)

	assert.Equal(t, map[string]bool{"host-a": true, "host-b": true}, alive(t, bs[2], bs[2]))
	// host-a is killed: no renewal, no unlock.
	close(a.stop)
	a.wg.Wait()
	start := time.Now()
	require.Eventually(t, func() bool { return !alive(t, bs[1], bs[1])["host-a"] }, 4*lease, 100*time.Millisecond)
	assert.GreaterOrEqual(t, time.Since(start), lease/2, "host-a was alive until near its lease's end")
	// Several renewals of host-b later, it is still alive.
	time.Sleep(lease)
	assert.Equal(t, map[string]bool{"host-a": false, "host-b": true}, alive(t, bs[2], bs[2]))
	a2, err := Join(t.Context(), Config{Name: "host-a", Store: bs[2], Locks: bs[2], Lease: lease})
	require.NoError(t, err, "a dead host's name is free once its lease ran out")
	assert.True(t, alive(t, bs[1], bs[1])["host-a"])
	require.NoError(t, a2.Close(bg))
	assert.False(t, alive(t, bs[1], bs[1])["host-a"], "a clean stop is seen at once")
}

// A VM's writer lease on the OSD: held, a second writer is refused; with
// renewals stopped (a frozen host), this host's writes fail with EIO once
// the lease has run since the last renewal was sent, the OSD lets a second
// writer take the lock, and the first cannot renew it back.
func TestWriterLeaseOnRADOS(t *testing.T) {
	bs := openRADOS(t, 2)
	lease := 3 * time.Second
	keys := []string{LockKey("disk-1")}
	l, err := Acquire(t.Context(), bs[0], keys, "host-a", lease, nil)
	require.NoError(t, err)
	g := Guard(bs[0], l)
	c, err := g.OpenChunk(t.Context(), "disks/x/c0", true)
	require.NoError(t, err)
	_, err = c.WriteAt([]byte("a"), 0)
	require.NoError(t, err)
	_, err = Acquire(t.Context(), bs[1], keys, "host-b", lease, nil)
	require.ErrorIs(t, err, storage.ErrConflict)
	// Renewals keep it past several leases.
	time.Sleep(2 * lease)
	_, err = c.WriteAt([]byte("a"), 0)
	require.NoError(t, err, "renewed")

	// Frozen: no more renewals.
	close(l.stop)
	l.wg.Wait()
	stopped := time.Now()
	require.Eventually(t, func() bool { return l.Check() != nil }, 2*lease, 20*time.Millisecond)
	assert.Less(t, time.Since(stopped), lease+time.Second, "the deadline came from the last renewal sent")
	_, err = c.WriteAt([]byte("late"), 0)
	require.ErrorIs(t, err, syscall.EIO)
	var l2 *Lease
	require.Eventually(t, func() bool {
		l2, err = Acquire(t.Context(), bs[1], keys, "host-b", lease, nil)
		return err == nil
	}, 4*lease, 100*time.Millisecond, "the OSD expires the lease: %v", err)
	err = bs[0].Lock(t.Context(), keys[0], DiskLockName, l.cookie, "", lease, true)
	require.ErrorIs(t, err, storage.ErrNotFound, "must renew does not take it back")
	require.NoError(t, l2.Release(bg))
}
