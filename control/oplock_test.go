package control

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cluster"
	"hostcrypt/control/api"
	"hostcrypt/control/keys/keystest"
	"hostcrypt/control/store"
	"hostcrypt/disk"
)

// opHosts are hosts a and b on one shared store, with writers over one set
// of locks.
func opHosts(t *testing.T) (s *sharedHosts, a, b *fixture, wa, wb *memWriters) {
	s = newSharedHosts(t, "a", "b")
	a, b = s.hosts["a"], s.hosts["b"]
	locks := &memLocks{held: map[string]string{}}
	wa = &memWriters{be: a.cfg.Storage, locks: locks, lease: time.Hour, host: "a", holderWait: cluster.HolderWait}
	wb = &memWriters{be: b.cfg.Storage, locks: locks, lease: time.Hour, host: "b", holderWait: cluster.HolderWait}
	s.withWriters(t, a, wa)
	s.withWriters(t, b, wb)
	return s, a, b, wa, wb
}

// holdOps makes w's operations wait, once they hold their disk's lock,
// until the returned proceed is closed; entered says which began.
func holdOps(w *memWriters) (entered chan string, proceed chan struct{}) {
	entered, proceed = make(chan string, 4), make(chan struct{})
	w.taken = func(_, op string) {
		if op == "" {
			return
		}
		entered <- op
		<-proceed
	}
	return entered, proceed
}

// began waits for an operation holdOps holds, and fails when none takes a
// lock.
func began(t *testing.T, entered chan string) string {
	t.Helper()
	select {
	case op := <-entered:
		return op
	case <-time.After(20 * time.Second):
		t.Fatal("no operation took the disk's writer lock")
		return ""
	}
}

func ownerOf(t *testing.T, f *fixture, disk string) cluster.Owner {
	t.Helper()
	d := f.records(t).Disks[disk]
	require.NotNil(t, d)
	o, _, err := cluster.ReadOwner(context.Background(), f.cfg.Storage, d.UniqueID)
	require.NoError(t, err)
	return o
}

// An operation on a stopped disk holds the disk's writer lock while it
// runs, on a writer of its own: a VM start on another host is refused,
// naming the host and the operation, and so is that host's own operation
// on the disk, which changes nothing. The operation lets the disk go
// cleanly, under an ownership epoch bumped for its host, so that the
// other host's cache of the disk, filled before, is shredded at its next
// start instead of written back.
func TestOperationHoldsTheDisksLock(t *testing.T) {
	_, a, b, wa, wb := opHosts(t)
	ctx := context.Background()
	b.mustDisk(t, api.CreateDiskRequest{Name: "data1", SizeBytes: 16 << 20})
	b.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "data1"}}})
	_, err := b.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)
	require.Equal(t, cluster.Owner{Host: "b", VM: "vm1", Addr: "b/1", Epoch: 1, Released: true}, ownerOf(t, b, "data1"))
	// b keeps a cache of data1 filled under epoch 1 (a daemon that died
	// before writing it back).
	d1 := b.records(t).Disks["data1"]
	cache := b.h.cacheDir(d1)
	require.NoError(t, os.MkdirAll(cache, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(cache, "pages"), []byte("stale"), 0o600))
	require.NoError(t, os.WriteFile(cache+".epoch", []byte("1\n"), 0o600))

	entered, proceed := holdOps(wa)
	snapped := make(chan error, 1)
	go func() {
		_, err := a.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "data1"})
		snapped <- err
	}()
	require.Equal(t, "snapshot s1", began(t, entered))
	assert.Equal(t, cluster.Owner{Host: "a", Op: "snapshot s1", Addr: "a/1", Epoch: 2}, ownerOf(t, a, "data1"),
		"a owns the disk on the operation's own client, under an epoch bumped for a")

	_, err = b.h.StartVM(ctx, "vm1")
	requireCode(t, err, http.StatusConflict)
	assert.Contains(t, err.Error(), `disk "data1" is locked by host "a", which runs an operation on it (snapshot s1)`)
	assert.Empty(t, b.tree.list())

	_, err = b.h.UpdateDisk(ctx, "data1", api.UpdateDiskRequest{SizeBytes: 32 << 20})
	requireCode(t, err, http.StatusConflict)
	assert.Contains(t, err.Error(), `disk "data1" is locked by host "a", which runs an operation on it (snapshot s1)`)
	m, err := disk.ReadMetadata(ctx, b.cfg.Storage, d1.StoragePrefix)
	require.NoError(t, err)
	assert.Equal(t, int64(16<<20), m.Size, "the refused resize changed nothing")
	assert.Equal(t, int64(16<<20), b.records(t).Disks["data1"].DiskSizeBytes)

	close(proceed)
	require.NoError(t, <-snapped)
	assert.Equal(t, []string{"snapshot s1"}, wa.operations())
	assert.Equal(t, int32(0), wa.open.Load(), "the operation's connection is closed")
	assert.Equal(t, cluster.Owner{Host: "a", Op: "snapshot s1", Addr: "a/1", Epoch: 2, Released: true}, ownerOf(t, a, "data1"),
		"let go cleanly: nobody fences a's client")

	_, err = b.h.StartVM(ctx, "vm1")
	require.NoError(t, err)
	assert.Empty(t, wb.blocklisted())
	assert.Equal(t, uint64(3), ownerOf(t, b, "data1").Epoch, "another host than the operation's: the epoch grows")
	assert.NoFileExists(t, filepath.Join(cache, "pages"), "b's cache of epoch 1 is shredded, not written back")
}

// An operation on a disk whose lock another host holds (a VM starting
// there, or that host's own operation) is refused, naming it, and changes
// nothing of the disk; once the lock is given back it goes through.
func TestOperationRefusedWhileAnotherHostHoldsTheDisk(t *testing.T) {
	_, a, _, wa, wb := opHosts(t)
	ctx := context.Background()
	a.mustDisk(t, api.CreateDiskRequest{Name: "data1", SizeBytes: 16 << 20})
	d1 := a.records(t).Disks["data1"]
	target := filepath.Join(t.TempDir(), "data1.raw")

	for _, holder := range []struct {
		open func() (VMWriter, error)
		want string
	}{
		{func() (VMWriter, error) { return wb.Open(ctx, "vm9") }, `disk "data1" is locked by host "b" (VM vm9), which runs it`},
		{func() (VMWriter, error) { return wb.Operation(ctx, "resize") }, `disk "data1" is locked by host "b", which runs an operation on it (resize)`},
	} {
		w, err := holder.open()
		require.NoError(t, err)
		dw, err := w.Disk(ctx, d1.UniqueID, disk.MetaKey(d1.StoragePrefix), nil)
		require.NoError(t, err)
		before, err := a.cfg.Storage.List(ctx, "")
		require.NoError(t, err)

		refused := map[string]error{}
		_, refused["resize"] = a.h.UpdateDisk(ctx, "data1", api.UpdateDiskRequest{SizeBytes: 32 << 20})
		_, refused["snapshot"] = a.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "data1"})
		_, refused["image"] = a.h.CreateImage(ctx, api.CreateImageRequest{Name: "im1", Source: "data1"})
		_, refused["export"] = a.h.ExportDisk(ctx, "data1", api.ExportDiskRequest{Target: target}, nil)
		refused["delete"] = a.h.DeleteDisk(ctx, "data1")
		for op, err := range refused {
			requireCode(t, err, http.StatusConflict)
			assert.Contains(t, err.Error(), holder.want, op)
		}
		after, err := a.cfg.Storage.List(ctx, "")
		require.NoError(t, err)
		assert.Equal(t, before, after, "no object made or removed")
		r := a.records(t)
		require.NotNil(t, r.Disks["data1"], "not deleted")
		assert.Equal(t, int64(16<<20), r.Disks["data1"].DiskSizeBytes)
		assert.Nil(t, r.Disks["data1"].Transfer)
		assert.Empty(t, r.Snapshots)
		assert.Empty(t, r.Images)
		assert.NoFileExists(t, target)
		assert.Equal(t, int32(0), wa.open.Load(), "every refused operation closed its connection")
		dw.Release()
		w.Close()
	}

	_, err := a.h.UpdateDisk(ctx, "data1", api.UpdateDiskRequest{SizeBytes: 32 << 20})
	require.NoError(t, err)
	assert.Equal(t, "resize", ownerOf(t, a, "data1").Op)
	assert.True(t, ownerOf(t, a, "data1").Released)
	_, err = a.h.ExportDisk(ctx, "data1", api.ExportDiskRequest{Target: target}, nil)
	require.NoError(t, err)
	require.NoError(t, a.h.DeleteDisk(ctx, "data1"))
	each := []string{"resize", "snapshot s1", "copy into image im1", "export", "deletion"}
	assert.Equal(t, slices.Concat(each, each, []string{"resize", "export", "deletion"}), wa.operations(),
		"each operation on a writer of its own")
}

// Two hosts racing one operation on one disk: exactly one proceeds, the
// other is refused with a Conflict naming it.
func TestOperationRaceOneProceeds(t *testing.T) {
	_, a, b, wa, wb := opHosts(t)
	ctx := context.Background()
	a.mustDisk(t, api.CreateDiskRequest{Name: "data1", SizeBytes: 16 << 20})
	enteredA, proceedA := holdOps(wa)
	enteredB, proceedB := holdOps(wb)
	sizes := map[string]int64{"a": 32 << 20, "b": 48 << 20}
	done := map[string]chan error{"a": make(chan error, 1), "b": make(chan error, 1)}
	for name, f := range map[string]*fixture{"a": a, "b": b} {
		go func() {
			_, err := f.h.UpdateDisk(ctx, "data1", api.UpdateDiskRequest{SizeBytes: sizes[name]})
			done[name] <- err
		}()
	}
	var winner, loser string
	select {
	case <-enteredA:
		winner, loser = "a", "b"
	case <-enteredB:
		winner, loser = "b", "a"
	case <-time.After(20 * time.Second):
		t.Fatal("no operation took the disk's writer lock")
	}
	err := <-done[loser]
	requireCode(t, err, http.StatusConflict)
	assert.Contains(t, err.Error(), `disk "data1" is locked by host "`+winner+`", which runs an operation on it (resize)`)
	close(proceedA)
	close(proceedB)
	require.NoError(t, <-done[winner])
	assert.Equal(t, sizes[winner], a.records(t).Disks["data1"].DiskSizeBytes)
	m, err := disk.ReadMetadata(ctx, a.cfg.Storage, a.records(t).Disks["data1"].StoragePrefix)
	require.NoError(t, err)
	assert.Equal(t, sizes[winner], m.Size)
}

// A rotation re-wraps a disk under its writer lock: a disk another host
// holds keeps its wrap (and the rotation stays unfinished, naming the
// host), the others are re-wrapped; the next pass finishes once the lock
// is given back.
func TestRotationLeavesALockedDisk(t *testing.T) {
	s := &sharedHosts{dir: t.TempDir(), peers: &fakePeers{alive: map[string]bool{}}, hosts: map[string]*fixture{}}
	s.keys = keystest.New().AutoGrant()
	a, _ := s.startIn(t, "a", "g1")
	b, _ := s.startIn(t, "b", "g1")
	locks := &memLocks{held: map[string]string{}}
	wb := &memWriters{be: b.cfg.Storage, locks: locks, lease: time.Hour, host: "b"}
	s.withWriters(t, a, &memWriters{be: a.cfg.Storage, locks: locks, lease: time.Hour, host: "a"})
	s.withWriters(t, b, wb)
	ctx := context.Background()
	k1 := kid("vault1", "k")
	a.mustDES(t, api.CreateDESRequest{Name: "des1", KeyURL: k1, EnableAutoKeyRotation: true})
	for _, n := range []string{"d1", "d2"} {
		a.mustDisk(t, api.CreateDiskRequest{Name: n, SizeBytes: 8 << 20, EncryptionType: api.EncCustomerKey, DiskEncryptionSet: "des1"})
	}
	d1 := a.records(t).Disks["d1"]
	w, err := wb.Operation(ctx, "snapshot x")
	require.NoError(t, err)
	dw, err := w.Disk(ctx, d1.UniqueID, disk.MetaKey(d1.StoragePrefix), nil)
	require.NoError(t, err)

	k2 := strings.TrimSuffix(k1, "0123abcd") + "4567cdef"
	s.keys.SetLatest(k2)
	a.h.RotateKeys(ctx)
	r := a.records(t)
	assert.Equal(t, k2, r.Disks["d2"].KeyID)
	assert.Equal(t, k1, r.Disks["d1"].KeyID, "the locked disk keeps its wrap")
	m, err := disk.ReadMetadata(ctx, a.cfg.Storage, d1.StoragePrefix)
	require.NoError(t, err)
	assert.Equal(t, k1, m.Layers[0].WrappedKeys[0].KeyID, "nothing of it was written")
	assert.NotEmpty(t, r.DES["des1"].PreviousKeys, "the rotation is not over")
	assert.Contains(t, r.DES["des1"].AutoKeyRotationError, `disk "d1" is locked by host "b", which runs an operation on it (snapshot x)`)

	dw.Release()
	w.Close()
	a.h.RotateKeys(ctx)
	r = a.records(t)
	assert.Equal(t, k2, r.Disks["d1"].KeyID)
	assert.Empty(t, r.DES["des1"].PreviousKeys)
}

// A conversion to double encryption keeps the writer lock its request took
// until its background copy is done (one writer, not a second one that
// the first would refuse), and then lets the disk go; another host's
// resize is refused meanwhile, naming the conversion.
func TestConversionHoldsTheDisksLock(t *testing.T) {
	s := &sharedHosts{dir: t.TempDir(), peers: &fakePeers{alive: map[string]bool{}}, hosts: map[string]*fixture{}}
	s.keys = keystest.New().AutoGrant()
	a, _ := s.startIn(t, "a", "g1")
	b, _ := s.startIn(t, "b", "g1")
	locks := &memLocks{held: map[string]string{}}
	wa := &memWriters{be: a.cfg.Storage, locks: locks, lease: time.Hour, host: "a", holderWait: cluster.HolderWait}
	s.withWriters(t, a, wa)
	s.withWriters(t, b, &memWriters{be: b.cfg.Storage, locks: locks, lease: time.Hour, host: "b", holderWait: cluster.HolderWait})
	ctx := context.Background()
	a.mustDES(t, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k")})
	a.mustDisk(t, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20, EncryptionType: api.EncCustomerKey, DiskEncryptionSet: "des1"})

	entered, proceed := holdOps(wa)
	requested := make(chan error, 1)
	go func() {
		_, err := a.h.UpdateDisk(ctx, "d1", api.UpdateDiskRequest{EncryptionType: api.EncPlatformAndCustomerKey, DiskEncryptionSet: "des1"})
		requested <- err
	}()
	require.Equal(t, "conversion to double encryption", began(t, entered))
	_, err := b.h.UpdateDisk(ctx, "d1", api.UpdateDiskRequest{SizeBytes: 16 << 20})
	requireCode(t, err, http.StatusConflict)
	assert.Contains(t, err.Error(), `disk "d1" is locked by host "a", which runs an operation on it (conversion to double encryption)`)
	close(proceed)
	require.NoError(t, <-requested)

	require.Eventually(t, func() bool {
		d, err := a.h.ShowDisk("d1")
		return err == nil && d.Conversion == nil
	}, 30*time.Second, 10*time.Millisecond)
	d, err := a.h.ShowDisk("d1")
	require.NoError(t, err)
	assert.Equal(t, api.EncPlatformAndCustomerKey, d.Encryption.Type)
	assert.Empty(t, d.Conversion)
	require.Eventually(t, func() bool { return ownerOf(t, a, "d1").Released }, 30*time.Second, 10*time.Millisecond)
	assert.Equal(t, "conversion to double encryption", ownerOf(t, a, "d1").Op)
	assert.Equal(t, []string{"conversion to double encryption"}, wa.operations(), "one writer from the request to the end of the copy")
	_, err = b.h.UpdateDisk(ctx, "d1", api.UpdateDiskRequest{SizeBytes: 16 << 20})
	require.NoError(t, err, "free once the conversion is over")
}

// An operation that began while a VM of its host had the disk open took
// no lock of its own; should the VM be gone by the time it opens the
// disk, it refuses rather than go on unlocked.
func TestOperationRefusedWhenItsVMStoppedMeanwhile(t *testing.T) {
	_, a, _, _, _ := opHosts(t)
	ctx := context.Background()
	a.mustDisk(t, api.CreateDiskRequest{Name: "data1", SizeBytes: 16 << 20})
	r := a.records(t)
	d := r.Disks["data1"]
	inVM := &opLock{Storage: a.cfg.Storage, InVM: true, release: func() {}}
	err := a.h.resize(ctx, r, d, inVM, 32<<20)
	requireCode(t, err, http.StatusConflict)
	assert.Contains(t, err.Error(), "its VM stopped while the operation began")
	snap := &store.Snapshot{Name: "s1", StoragePrefix: "snapshots/x"}
	err = a.h.copySnapshot(ctx, r, d, inVM, snap, nil)
	requireCode(t, err, http.StatusConflict)
	m, err := disk.ReadMetadata(ctx, a.cfg.Storage, d.StoragePrefix)
	require.NoError(t, err)
	assert.Equal(t, int64(16<<20), m.Size)
	keys, err := a.cfg.Storage.List(ctx, "snapshots")
	require.NoError(t, err)
	assert.Empty(t, keys)
}
