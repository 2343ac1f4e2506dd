package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"hostcrypt/control/api"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func fill(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// content reads a whole disk resource through a fresh disk made from src.
func (f *fixture) restore(t *testing.T, src, as string) []byte {
	t.Helper()
	ctx := context.Background()
	_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: as, Source: src})
	require.NoError(t, err)
	_, err = f.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: as})
	require.NoError(t, err)
	vm, err := f.h.ShowVM("vm1")
	require.NoError(t, err)
	img := f.tree.get("vm1/" + imageName(vm.StorageProfile.DataDisks[len(vm.StorageProfile.DataDisks)-1].Lun))
	got := make([]byte, img.Size())
	_, err = img.ReadAt(got, 0)
	require.NoError(t, err)
	return got
}

func TestSnapshotsAndImages(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const size = 16 << 20 // four 4 MiB chunks
	_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d1", SizeBytes: size})
	require.NoError(t, err)
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 4 << 20, DataDisks: []api.AttachedDisk{{Name: "d1"}}})
	img := f.tree.get("vm1/data-0.img")
	a := fill(size)
	_, err = img.WriteAt(a, 0)
	require.NoError(t, err)
	// Not synced by the guest: a snapshot still holds every completed write.

	// A writer keeps changing the second half while the snapshot is taken.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	b := fill(4096)
	wg.Go(func() {
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, err := img.WriteAt(b, size/2+(i*4096)%(size/2))
			assert.NoError(t, err)
		}
	})
	s1, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "d1"})
	close(stop)
	wg.Wait()
	require.NoError(t, err)
	assert.False(t, s1.Incremental)
	assert.Equal(t, int64(4), s1.ChunksCopied)
	t.Logf("freeze pause %d µs", s1.FreezePauseMicros)

	// Later writes change the disk, not the snapshot.
	c := fill(size / 2)
	_, err = img.WriteAt(c, 0)
	require.NoError(t, err)

	got := f.restore(t, "s1", "r1")
	require.True(t, bytes.Equal(a[:size/2], got[:size/2]), "the snapshot is not the first half as of its time")
	for off := size / 2; off < size; off += 4096 {
		blk := got[off : off+4096]
		require.True(t, bytes.Equal(blk, a[off:off+4096]) || bytes.Equal(blk, b), "block at %d is neither old nor new", off)
	}
	// The restored disk is independent both ways.
	r1 := f.tree.get("vm1/data-1.img")
	_, err = r1.WriteAt(fill(4096), 0)
	require.NoError(t, err)
	now := make([]byte, size/2)
	_, err = img.ReadAt(now, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(c, now))

	// Incremental chain: the first copies everything, the next only the
	// chunk a small write changed.
	i1, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "i1", Source: "d1", Incremental: true})
	require.NoError(t, err)
	assert.Equal(t, int64(4), i1.ChunksCopied)
	x := fill(4096)
	_, err = img.WriteAt(x, 4096)
	require.NoError(t, err)
	i2, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "i2", Source: "d1", Incremental: true})
	require.NoError(t, err)
	assert.Equal(t, int64(1), i2.ChunksCopied)
	assert.Equal(t, int64(3), i2.ChunksShared)
	assert.Less(t, i2.UsedBytes, i1.UsedBytes/2, "an incremental snapshot stores what changed")
	y := fill(4096)
	_, err = img.WriteAt(y, 9<<20) // chunk 2
	require.NoError(t, err)
	i3, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "i3", Source: "d1", Incremental: true})
	require.NoError(t, err)
	assert.Equal(t, int64(1), i3.ChunksCopied)
	t.Logf("used bytes: i1 %d, i2 %d, i3 %d", i1.UsedBytes, i2.UsedBytes, i3.UsedBytes)

	want2 := f.restore(t, "i2", "r2")
	require.True(t, bytes.Equal(x, want2[4096:8192]))
	want3 := f.restore(t, "i3", "r3")
	require.True(t, bytes.Equal(y, want3[9<<20:9<<20+4096]))

	// Deleting the middle of the chain keeps the others whole.
	require.NoError(t, f.h.DeleteSnapshot(ctx, "i2"))
	got = f.restore(t, "i3", "r3b")
	require.True(t, bytes.Equal(want3, got), "i3 changed when i2 was deleted")
	got = f.restore(t, "i1", "r1b")
	require.True(t, bytes.Equal(c, got[:size/2]))
	left, err := f.cfg.Storage.List(ctx, i2.StoragePrefix)
	require.NoError(t, err)
	require.Empty(t, left)

	// Images: an independent copy of a snapshot; disks from it.
	im, err := f.h.CreateImage(ctx, api.CreateImageRequest{Name: "im1", Source: "i3"})
	require.NoError(t, err)
	got = f.restore(t, "im1", "r4")
	require.True(t, bytes.Equal(want3, got))
	_, err = f.h.CreateImage(ctx, api.CreateImageRequest{Name: "im2", Source: "d1"})
	requireCode(t, err, 409) // in use by vm1
	require.NoError(t, f.h.DeleteImage(ctx, "im1"))
	left, err = f.cfg.Storage.List(ctx, im.StoragePrefix)
	require.NoError(t, err)
	require.Empty(t, left)

	// Bad input changes nothing.
	_, err = f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "i3", Source: "d1"})
	requireCode(t, err, 409)
	_, err = f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s9", Source: "nope"})
	requireCode(t, err, 404)
	_, err = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "r9", Source: "i3", SizeBytes: 4 << 20})
	requireCode(t, err, 400)
	_, err = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "r9", Source: "d1"})
	requireCode(t, err, 404)
	_, err = f.h.ShowDisk("r9")
	requireCode(t, err, 404)
	require.Len(t, f.snapshots(t), 3)

	// A restart keeps them, and lists (but keeps) what a crash in the
	// middle of a copy left behind; host gc removes it, and only it.
	orphan := "snapshots/0123abcd-0000-0000-0000-000000000000"
	require.NoError(t, f.cfg.Storage.WriteMeta(ctx, orphan+"/meta.json", []byte(`{"format":1}`)))
	require.NoError(t, writeSparse(ctx, f.cfg.Storage, orphan+"/chunks/00000000", fill(8192)))
	f.restart(t, true)
	got = f.restore(t, "i3", "r5")
	require.True(t, bytes.Equal(want3, got))
	left, err = f.cfg.Storage.List(ctx, orphan)
	require.NoError(t, err)
	assert.NotEmpty(t, left, "start-up removed what no record owns")
	rep, err := f.h.GC(ctx, api.GCRequest{})
	require.NoError(t, err)
	require.Len(t, rep.Leftovers, 1)
	require.Equal(t, orphan, rep.Leftovers[0].Path)
	require.True(t, rep.Leftovers[0].Removed)
	left, err = f.cfg.Storage.List(ctx, orphan)
	require.NoError(t, err)
	assert.Empty(t, left, "host gc left an orphaned copy")
	left, err = f.cfg.Storage.List(ctx, i3.StoragePrefix)
	require.NoError(t, err)
	assert.NotEmpty(t, left)
	got = f.restore(t, "i3", "r6")
	require.True(t, bytes.Equal(want3, got))
}

// The restrictions that concern snapshots: each refusal states the rule and
// changes nothing.
func TestSnapshotRestrictions(t *testing.T) {
	f := newRestrictFixture(t)
	ctx := context.Background()
	for _, n := range []string{"des1", "des2"} {
		_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: n, KeyURL: kid("vault1", n)})
		require.NoError(t, err)
	}

	// A snapshot of an UltraSSD disk with a customer key keeps that key.
	_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "u1", SizeBytes: 8 << 20, Sku: "UltraSSD_LRS", LogicalSectorSize: 4096, DiskEncryptionSet: "des1"})
	require.NoError(t, err)
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "us", Source: "u1", DiskEncryptionSet: "des2"})
		return err
	}, "UltraSSD_LRS", "disk's own key", "leave out --disk-encryption-set")
	us, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "us", Source: "u1", DiskEncryptionSet: "des1"})
	require.NoError(t, err)
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.UpdateSnapshot(ctx, "us", api.UpdateSnapshotRequest{DiskEncryptionSet: "des2"})
		return err
	}, "disk's own key")
	assert.Equal(t, kid("vault1", "des1"), us.KeyID)

	// Customer keys stay on a disk with incremental snapshots, and on the
	// incremental snapshots themselves; a full snapshot may switch.
	f.mustDisk(t, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})
	_, err = f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "inc1", Source: "c1", Incremental: true})
	require.NoError(t, err)
	_, err = f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "full1", Source: "c1"})
	require.NoError(t, err)
	f.refused(t, http.StatusConflict, func() error {
		_, err := f.h.UpdateDisk(ctx, "c1", api.UpdateDiskRequest{EncryptionType: api.EncPlatformKey})
		return err
	}, "incremental snapshots (inc1)", "delete its incremental snapshots first")
	f.refused(t, http.StatusConflict, func() error {
		_, err := f.h.UpdateSnapshot(ctx, "inc1", api.UpdateSnapshotRequest{EncryptionType: api.EncPlatformKey})
		return err
	}, "incremental", "take a full snapshot")
	full, err := f.h.UpdateSnapshot(ctx, "full1", api.UpdateSnapshotRequest{EncryptionType: api.EncPlatformKey})
	require.NoError(t, err)
	assert.Equal(t, api.EncPlatformKey, full.Encryption.Type)
	assert.NotContains(t, full.KeyID, "/vaults/")
	// Still restorable under the platform key.
	f.mustDisk(t, api.CreateDiskRequest{Name: "fromfull", Source: "full1"})
	require.NoError(t, f.h.DeleteSnapshot(ctx, "inc1"))
	_, err = f.h.UpdateDisk(ctx, "c1", api.UpdateDiskRequest{EncryptionType: api.EncPlatformKey})
	require.NoError(t, err, "with its incremental snapshots gone the disk may switch")

	// Customer-key snapshots and images never change subscription.
	other := "11111111-2222-3333-4444-555555555555"
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.MoveSnapshot(ctx, "us", api.MoveRequest{ResourceGroup: "rg2", Subscription: other})
		return err
	}, "cannot move to another subscription")
	moved, err := f.h.MoveSnapshot(ctx, "us", api.MoveRequest{ResourceGroup: "rg2"})
	require.NoError(t, err)
	assert.Contains(t, moved.ID, "/resourceGroups/rg2/providers/Microsoft.Compute/snapshots/us")
	_, err = f.h.CreateImage(ctx, api.CreateImageRequest{Name: "im1", Source: "us", DiskEncryptionSet: "des1"})
	require.NoError(t, err)
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.MoveImage(ctx, "im1", api.MoveRequest{ResourceGroup: "rg2", Subscription: other})
		return err
	}, "cannot move to another subscription")
	_, err = f.h.MoveSnapshot(ctx, "full1", api.MoveRequest{ResourceGroup: "rg3", Subscription: other})
	require.NoError(t, err, "a platform-key snapshot moves freely")

	// Guest-encrypted content never gets customer keys, also as a copy.
	f.mustDisk(t, api.CreateDiskRequest{Name: "a1", SizeBytes: 8 << 20, ADE: true})
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "as", Source: "a1", DiskEncryptionSet: "des1"})
		return err
	}, "guest-level disk encryption")
	_, err = f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "as", Source: "a1"})
	require.NoError(t, err)
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "a2", Source: "as", DiskEncryptionSet: "des1"})
		return err
	}, "guest-level disk encryption")
	a2, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "a2", Source: "as"})
	require.NoError(t, err)
	assert.True(t, a2.ADE, "a copy of guest-encrypted content is flagged too")
}

// A refused copy gives its claim on the source back: the snapshot that the
// refusal of an image of a running VM's disk asks for is taken at once.
func TestRefusedImageReleasesItsSource(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.mustDisk(t, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20})
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "d1"}}})
	_, err := f.h.CreateImage(ctx, api.CreateImageRequest{Name: "i1", Source: "d1"})
	require.ErrorContains(t, err, "take a snapshot of it")
	_, err = f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "d1"})
	require.NoError(t, err)
}
