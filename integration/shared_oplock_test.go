//go:build ceph

package integration

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cluster"
	"hostcrypt/storage/location"
)

// TestTwoHostsOperationHoldsTheDiskLock: a snapshot on host A of a stopped
// VM's disk holds the disk's writer lock while it runs (here: while the
// key store, frozen, keeps it from unwrapping the disk's key). Meanwhile
// host B's `vm start` and B's resize of the disk are refused with a
// Conflict naming host A and the snapshot, and the disk keeps its size.
// Once the snapshot is over, the disk is let go cleanly and B starts the
// VM.
func TestTwoHostsOperationHoldsTheDiskLock(t *testing.T) {
	ks := startKeystore(t)
	loc := sharedPool(t)
	a := newPoolHost(t, ks, loc, "host-a")
	b := newPoolHost(t, ks, loc, "host-b")
	a.ok("vm", "create", "--name", "vm1", "--os-disk-size", "64M")
	a.ok("vm", "deallocate", "--name", "vm1")
	var d struct {
		UniqueID      string `json:"uniqueId"`
		DiskSizeBytes int64  `json:"diskSizeBytes"`
	}
	a.json(&d, "disk", "show", "--name", "vm1_OsDisk")
	require.NotEmpty(t, d.UniqueID)

	l, err := location.Parse(loc)
	require.NoError(t, err)
	pool, err := l.Open(t.Context())
	require.NoError(t, err)
	defer pool.Close()

	require.NoError(t, ks.cmd.Process.Signal(syscall.SIGSTOP))
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			ks.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(thaw)
	snapped := make(chan string, 1)
	go func() {
		_, errOut, code := a.run("snapshot", "create", "--name", "s1", "--source", "vm1_OsDisk")
		if code != 0 {
			snapped <- errOut
		}
		close(snapped)
	}()
	waitFor(t, 30*time.Second, "host A's snapshot to hold the disk's lock", func() bool {
		o, _, err := cluster.ReadOwner(context.Background(), pool, d.UniqueID)
		return err == nil && o.Host == "host-a" && o.Op == "snapshot s1" && !o.Released
	})

	const want = `is locked by host "host-a", which runs an operation on it (snapshot s1)`
	_, errOut, code := b.run("vm", "start", "--name", "vm1")
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, want)
	_, errOut, code = b.run("disk", "update", "--name", "vm1_OsDisk", "--size", "128M")
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, want)

	thaw()
	select {
	case errOut, failed := <-snapped:
		require.False(t, failed, "the snapshot failed: %s", errOut)
	case <-time.After(2 * time.Minute):
		t.Fatal("the snapshot did not finish")
	}
	o, _, err := cluster.ReadOwner(t.Context(), pool, d.UniqueID)
	require.NoError(t, err)
	assert.True(t, o.Released, "the snapshot let the disk go cleanly")
	b.json(&d, "disk", "show", "--name", "vm1_OsDisk")
	assert.Equal(t, int64(64<<20), d.DiskSizeBytes, "the refused resize changed nothing")
	b.ok("vm", "start", "--name", "vm1")
	o, _, err = cluster.ReadOwner(t.Context(), pool, d.UniqueID)
	require.NoError(t, err)
	assert.Equal(t, "host-b", o.Host)
	assert.Equal(t, "vm1", o.VM)
}
