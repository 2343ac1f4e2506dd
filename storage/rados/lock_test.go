//go:build ceph

package rados_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
)

// TestLeasedLock checks the lock semantics hosts rely on, on the OSD: one
// holder at a time, "must renew" fails once the lease ran out (where "may
// renew" would take the lock again silently), and the OSD lists only
// holders whose lease it has not seen expire.
func TestLeasedLock(t *testing.T) {
	cfg := cluster(t)
	a, b := open(t, cfg), open(t, cfg)
	const key, name = "locks/l1", "test.lock"
	lease := 2 * time.Second

	require.NoError(t, a.Lock(t.Context(), key, name, "ca", "a", lease, false))
	assert.NotEqual(t, a.Instance(), b.Instance())
	hs, err := b.Holders(t.Context(), key, name)
	require.NoError(t, err)
	assert.Equal(t, []string{a.Instance()}, hs)

	err = b.Lock(t.Context(), key, name, "cb", "b", lease, false)
	assert.ErrorIs(t, err, storage.ErrConflict, "a second client is refused while the lease runs")
	err = a.Lock(t.Context(), key, name, "ca", "a", lease, false)
	assert.ErrorIs(t, err, storage.ErrConflict, "taking a held lock again is refused: renew it")
	require.NoError(t, a.Lock(t.Context(), key, name, "ca", "a", lease, true), "renewing a held lock")
	err = a.Lock(t.Context(), key, name, "other", "a", lease, true)
	assert.ErrorIs(t, err, storage.ErrNotFound, "renewing under another cookie")

	// a stops renewing: once the OSD sees the lease run out, nobody
	// holds the lock, a's renewal fails, and b takes it.
	require.Eventually(t, func() bool {
		hs, err := b.Holders(t.Context(), key, name)
		return err == nil && len(hs) == 0
	}, 4*lease, 100*time.Millisecond)
	err = a.Lock(t.Context(), key, name, "ca", "a", lease, true)
	assert.ErrorIs(t, err, storage.ErrNotFound, "must renew does not take back an expired lock")
	require.NoError(t, b.Lock(t.Context(), key, name, "cb", "b", lease, false))
	hs, err = a.Holders(t.Context(), key, name)
	require.NoError(t, err)
	assert.Equal(t, []string{b.Instance()}, hs)

	require.NoError(t, b.Unlock(t.Context(), key, name, "cb"))
	require.NoError(t, b.Unlock(t.Context(), key, name, "cb"), "unlocking a lock not held is no error")
	hs, err = a.Holders(t.Context(), key, name)
	require.NoError(t, err)
	assert.Empty(t, hs)
	hs, err = a.Holders(t.Context(), "locks/none", name)
	require.NoError(t, err)
	assert.Empty(t, hs, "no object, no holder")
}

// TestBlocklist: once b has blocklisted a's instance and has the OSD map
// that says so, a's writes are refused and what b writes stays.
func TestBlocklist(t *testing.T) {
	cfg := cluster(t)
	a, b := open(t, cfg), open(t, cfg)
	ca, err := a.OpenChunk(t.Context(), "fence/c0", true)
	require.NoError(t, err)
	_, err = ca.WriteAt([]byte("from-a"), 0)
	require.NoError(t, err)
	addr, err := a.Addr()
	require.NoError(t, err)
	require.Contains(t, addr, "/")
	require.NoError(t, b.Blocklist(t.Context(), addr, time.Hour))
	cb, err := b.OpenChunk(t.Context(), "fence/c0", false)
	require.NoError(t, err)
	_, err = cb.WriteAt([]byte("from-b"), 0)
	require.NoError(t, err)
	_, err = ca.WriteAt([]byte("late-a"), 0)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "blocklisted")
	got := make([]byte, 6)
	_, err = cb.ReadAt(got, 0)
	require.NoError(t, err)
	assert.Equal(t, "from-b", string(got))
}
