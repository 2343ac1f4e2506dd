package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/control/keys/keystest"
	"hostcrypt/control/store"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/disk"
	hfs "hostcrypt/fs"
	"hostcrypt/internal/leakscan"
	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// fakeTree records which images are visible.
type fakeTree struct {
	mu     sync.Mutex
	images map[string]hfs.Image
}

func (t *fakeTree) AddImage(vm, name string, img hfs.Image) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.images[vm+"/"+name]; ok {
		return fmt.Errorf("%s/%s exists", vm, name)
	}
	t.images[vm+"/"+name] = img
	return nil
}

func (t *fakeTree) RemoveImage(vm, name string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.images, vm+"/"+name)
	return nil
}

func (t *fakeTree) RemoveVM(string) error { return nil }

func (t *fakeTree) Resized(string, string) {}

func (t *fakeTree) list() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for k := range t.images {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (t *fakeTree) get(p string) hfs.Image {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.images[p]
}

type fixture struct {
	h    *Host
	tree *fakeTree
	keys *keystest.Service
	cfg  Config
}

func newFixture(t testing.TB) *fixture {
	dir := t.TempDir()
	sb, err := local.Open(filepath.Join(dir, "storage"))
	require.NoError(t, err)
	hb, err := local.Open(filepath.Join(dir, "host"))
	require.NoError(t, err)
	f := &fixture{tree: &fakeTree{images: map[string]hfs.Image{}}, keys: keystest.New()}
	f.cfg = Config{StateDir: filepath.Join(dir, "state"), Storage: sb, HostLocal: hb, Keys: f.keys, Tree: f.tree}
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { f.h.Shutdown() })
	return f
}

// restart simulates a daemon restart on the same directories.
func (f *fixture) restart(t *testing.T, clean bool) {
	if clean {
		require.NoError(t, f.h.Shutdown())
	}
	f.tree.images = map[string]hfs.Image{}
	var err error
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	f.h.Recover(context.Background())
}

// records returns the host's records as stored now.
func (f *fixture) records(t testing.TB) *store.Records {
	t.Helper()
	r, err := f.h.load(context.Background())
	require.NoError(t, err)
	return r
}

// setRecords changes the stored records, as an operator editing state.json
// (or another host) would.
func (f *fixture) setRecords(t testing.TB, change func(r *store.Records)) {
	t.Helper()
	_, err := f.h.update(context.Background(), func(r *store.Records) error {
		change(r)
		return nil
	})
	require.NoError(t, err)
}

// The lists, for tests that compare them whole.
func (f *fixture) disks(t testing.TB) []*api.Disk { return must[[]*api.Disk](t)(f.h.ListDisks()) }
func (f *fixture) vms(t testing.TB) []*api.VM     { return must[[]*api.VM](t)(f.h.ListVMs()) }
func (f *fixture) snapshots(t testing.TB) []*api.Snapshot {
	return must[[]*api.Snapshot](t)(f.h.ListSnapshots())
}
func (f *fixture) images(t testing.TB) []*api.Image { return must[[]*api.Image](t)(f.h.ListImages()) }
func (f *fixture) sets(t testing.TB) []*api.DiskEncryptionSet {
	return must[[]*api.DiskEncryptionSet](t)(f.h.ListDES(context.Background()))
}

// must returns a function that returns v after checking err.
func must[T any](t testing.TB) func(v T, err error) T {
	return func(v T, err error) T {
		t.Helper()
		require.NoError(t, err)
		return v
	}
}

// mustDisk, mustVM and mustDES make what a test needs, failing it if they
// cannot.
func (f *fixture) mustDisk(t testing.TB, r api.CreateDiskRequest) *api.Disk {
	t.Helper()
	return must[*api.Disk](t)(f.h.CreateDisk(context.Background(), r))
}

func (f *fixture) mustVM(t testing.TB, r api.CreateVMRequest) *api.VM {
	t.Helper()
	return must[*api.VM](t)(f.h.CreateVM(context.Background(), r))
}

func (f *fixture) mustDES(t testing.TB, r api.CreateDESRequest) *api.DiskEncryptionSet {
	t.Helper()
	return must[*api.DiskEncryptionSet](t)(f.h.CreateDES(context.Background(), r))
}

func requireCode(t *testing.T, err error, status int) {
	t.Helper()
	var e *api.Error
	require.True(t, errors.As(err, &e), "want a refusal, got %v", err)
	require.Equal(t, status, e.Status, e.Message)
}

func TestDiskLifecycle(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	d, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d1", SizeBytes: 64 << 20})
	require.NoError(t, err)
	require.Equal(t, api.DiskUnattached, d.DiskState)
	require.Equal(t, api.EncPlatformKey, d.Encryption.Type)
	require.Equal(t, keystest.PlatformKeyID, d.KeyID)
	require.Equal(t, 512, d.LogicalSectorSize)

	d, err = f.h.UpdateDisk(ctx, "d1", api.UpdateDiskRequest{SizeBytes: 128 << 20})
	require.NoError(t, err)
	require.EqualValues(t, 128<<20, d.DiskSizeBytes)
	m, err := disk.ReadMetadata(ctx, f.cfg.Storage, d.StoragePrefix)
	require.NoError(t, err)
	require.EqualValues(t, 128<<20, m.Size)

	require.NoError(t, f.h.DeleteDisk(ctx, "d1"))
	_, err = f.h.ShowDisk("d1")
	requireCode(t, err, http.StatusNotFound)
	left, err := f.cfg.Storage.List(ctx, d.StoragePrefix)
	require.NoError(t, err)
	require.Empty(t, left, "storage of a deleted disk remains")
}

func TestBadInputChangesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20})
	require.NoError(t, err)
	f.mustDisk(t, api.CreateDiskRequest{Name: "d2", SizeBytes: 8 << 20})
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "d1"}}})
	before, err := f.cfg.Storage.List(ctx, "")
	require.NoError(t, err)
	disks, vms := f.disks(t), f.vms(t)

	cases := []struct {
		name   string
		status int
		call   func() error
	}{
		{"duplicate disk", 409, func() error {
			_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20})
			return err
		}},
		{"size 0", 400, func() error {
			_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "x", SizeBytes: 0})
			return err
		}},
		{"size not sector multiple", 400, func() error {
			_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "x", SizeBytes: 8<<20 + 512, LogicalSectorSize: 4096})
			return err
		}},
		{"bad sector size", 400, func() error {
			_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "x", SizeBytes: 8 << 20, LogicalSectorSize: 1024})
			return err
		}},
		{"bad sku", 400, func() error {
			_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "x", SizeBytes: 8 << 20, Sku: "Gold"})
			return err
		}},
		{"bad name", 400, func() error {
			_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "../x", SizeBytes: 8 << 20})
			return err
		}},
		{"shrink", 400, func() error {
			_, err := f.h.UpdateDisk(ctx, "d2", api.UpdateDiskRequest{SizeBytes: 4 << 20})
			return err
		}},
		{"start running VM", 409, func() error { _, err := f.h.StartVM(ctx, "vm1"); return err }},
		{"delete attached disk", 409, func() error { return f.h.DeleteDisk(ctx, "d1") }},
		{"delete running VM", 409, func() error { return f.h.DeleteVM(ctx, "vm1") }},
		{"attach attached disk", 409, func() error { _, err := f.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: "d1"}); return err }},
		{"unknown VM", 404, func() error { _, err := f.h.ShowVM("nope"); return err }},
		{"unknown disk", 404, func() error { _, err := f.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: "nope"}); return err }},
		{"LUN in use", 409, func() error {
			lun := 0
			_, err := f.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: "d2", Lun: &lun})
			return err
		}},
		{"bad caching", 400, func() error {
			_, err := f.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: "d2", Caching: "Sometimes"})
			return err
		}},
		{"duplicate VM", 409, func() error { _, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDisk: "d2"}); return err }},
		{"VM with attached disk", 409, func() error { _, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm2", OsDisk: "d1"}); return err }},
		{"VM with two OS disks", 400, func() error {
			_, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm2", OsDisk: "d2", OsDiskSizeBytes: 8 << 20})
			return err
		}},
		{"detach OS disk", 409, func() error { _, err := f.h.DetachDisk(ctx, "vm1", "vm1_OsDisk"); return err }},
		{"65 data disks", 400, func() error {
			dds := make([]api.AttachedDisk, 65)
			for i := range dds {
				dds[i].Name = fmt.Sprintf("dd%d", i)
			}
			_, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm2", OsDisk: "d2", DataDisks: dds})
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			requireCode(t, c.call(), c.status)
		})
	}
	after, err := f.cfg.Storage.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, before, after, "a refused request changed storage")
	require.Equal(t, disks, f.disks(t))
	require.Equal(t, vms, f.vms(t))
}

func TestVMLifecycleAndPersistence(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "data1", SizeBytes: 16 << 20})
	require.NoError(t, err)
	vm, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20,
		DataDisks: []api.AttachedDisk{{Name: "data1"}}, TempDiskSize: 4 << 20})
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)
	require.Equal(t, []string{"vm1/data-0.img", "vm1/os.img", "vm1/temp.img"}, f.tree.list())
	d, err := f.h.ShowDisk("data1")
	require.NoError(t, err)
	require.Equal(t, api.DiskAttached, d.DiskState)
	require.Equal(t, "vm1", d.ManagedBy)

	pattern := make([]byte, 1<<20)
	rand.Read(pattern)
	for _, img := range []string{"vm1/os.img", "vm1/data-0.img", "vm1/temp.img"} {
		_, err := f.tree.get(img).WriteAt(pattern, 512)
		require.NoError(t, err)
		require.NoError(t, f.tree.get(img).Sync()) // the guest's fsync
	}

	// A crash (no Shutdown): the VM comes back running with its synced data.
	f.restart(t, false)
	vm, err = f.h.ShowVM("vm1")
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)
	check := func(img string, want []byte) {
		t.Helper()
		got := make([]byte, len(want))
		_, err := f.tree.get(img).ReadAt(got, 512)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), img)
	}
	for _, img := range []string{"vm1/os.img", "vm1/data-0.img", "vm1/temp.img"} {
		check(img, pattern)
	}

	// Stop keeps the temp disk; deallocate destroys it.
	_, err = f.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)
	require.Empty(t, f.tree.list())
	_, err = f.h.StartVM(ctx, "vm1")
	require.NoError(t, err)
	check("vm1/temp.img", pattern)
	_, err = f.h.DeallocateVM(ctx, "vm1")
	require.NoError(t, err)
	d, _ = f.h.ShowDisk("data1")
	require.Equal(t, api.DiskReserved, d.DiskState)
	left, err := f.cfg.HostLocal.List(ctx, "temp/vm1")
	require.NoError(t, err)
	require.Empty(t, left, "temp disk survived deallocation")
	_, err = f.h.StartVM(ctx, "vm1")
	require.NoError(t, err)
	check("vm1/temp.img", make([]byte, len(pattern)))
	check("vm1/data-0.img", pattern)

	// Hot-plug.
	f.mustDisk(t, api.CreateDiskRequest{Name: "data2", SizeBytes: 8 << 20})
	vm, err = f.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: "data2"})
	require.NoError(t, err)
	require.Contains(t, f.tree.list(), "vm1/data-1.img")
	require.Len(t, vm.StorageProfile.DataDisks, 2)
	_, err = f.tree.get("vm1/data-1.img").WriteAt(pattern, 0)
	require.NoError(t, err)
	_, err = f.h.DetachDisk(ctx, "vm1", "data2")
	require.NoError(t, err)
	require.NotContains(t, f.tree.list(), "vm1/data-1.img")
	// Detach flushed it: reopened elsewhere, the data is there.
	_, err = f.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: "data2", Lun: ptr(5)})
	require.NoError(t, err)
	got := make([]byte, len(pattern))
	_, err = f.tree.get("vm1/data-5.img").ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(pattern, got))

	// Growing a disk of a running VM shows at once.
	_, err = f.h.UpdateDisk(ctx, "data2", api.UpdateDiskRequest{SizeBytes: 32 << 20})
	require.NoError(t, err)
	require.EqualValues(t, 32<<20, f.tree.get("vm1/data-5.img").Size())

	// Clean shutdown and restart: running again.
	f.restart(t, true)
	vm, err = f.h.ShowVM("vm1")
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)
	require.Len(t, f.tree.list(), 4)

	_, err = f.h.DeallocateVM(ctx, "vm1")
	require.NoError(t, err)
	require.NoError(t, f.h.DeleteVM(ctx, "vm1"))
	d, _ = f.h.ShowDisk("data1")
	require.Equal(t, api.DiskUnattached, d.DiskState)
	require.Empty(t, d.ManagedBy)
}

func ptr[T any](v T) *T { return &v }

func TestDiskEncryptionSets(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	kid := "https://127.0.0.1:8443/vaults/vault1/keys/k1/0123abcd"

	for _, bad := range []string{"", "http://x/vaults/v/keys/k/1", "https://x/vaults/v/keys/k", "https://x/keys/k/1"} {
		_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "d", KeyURL: bad})
		requireCode(t, err, http.StatusBadRequest)
	}
	des, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid})
	require.NoError(t, err)
	require.Equal(t, "p-des/des1", des.Identity.PrincipalID)
	require.NotEqual(t, "ok", des.KeyAccess)
	require.Contains(t, des.KeyAccess, "set-policy")

	_, err = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})
	require.ErrorContains(t, err, "p-des/des1")
	_, err = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, EncryptionType: api.EncCustomerKey})
	requireCode(t, err, http.StatusBadRequest)
	_, err = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "nope"})
	requireCode(t, err, http.StatusNotFound)

	f.keys.Grant("p-des/des1", true)
	des, err = f.h.ShowDES(ctx, "des1")
	require.NoError(t, err)
	require.Equal(t, "ok", des.KeyAccess)
	_, err = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "u1", SizeBytes: 8 << 20, Sku: "UltraSSD_LRS", DiskEncryptionSet: "des1", EncryptionType: api.EncPlatformAndCustomerKey})
	requireCode(t, err, http.StatusBadRequest)
	d, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "des1", EncryptionType: api.EncPlatformAndCustomerKey})
	require.NoError(t, err)
	require.Equal(t, kid, d.KeyID)
	require.Equal(t, des.ID, d.Encryption.DiskEncryptionSetID)

	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDisk: "c1"})
	_, err = f.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)
	// Access revoked: the VM cannot start, and the error names the identity.
	f.keys.Grant("p-des/des1", false)
	_, err = f.h.StartVM(ctx, "vm1")
	require.ErrorContains(t, err, "p-des/des1")
	require.Empty(t, f.tree.list())

	requireCode(t, f.h.DeleteDES(ctx, "des1"), http.StatusConflict)
}

func TestCheckKeysStopsVMAndLeases(t *testing.T) {
	f := newFixture(t)
	f.keys.AutoGrant()
	ctx := context.Background()
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: "https://h/vaults/v/keys/k/1"})
	require.NoError(t, err)
	f.mustDisk(t, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "c1"}}})
	f.h.CheckKeys(ctx)
	vm, err := f.h.ShowVM("vm1")
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)

	// A lease in the past fails I/O with EIO until a check renews it.
	img := f.tree.get("vm1/data-0.img")
	img.(interface{ SetLease(time.Time) }).SetLease(time.Now().Add(-time.Second))
	_, err = img.ReadAt(make([]byte, 512), 0)
	require.ErrorIs(t, err, disk.ErrLeaseExpired)
	f.h.CheckKeys(ctx)
	_, err = img.ReadAt(make([]byte, 512), 0)
	require.NoError(t, err)

	f.keys.Grant("p-des/des1", false)
	f.h.CheckKeys(ctx)
	vm, err = f.h.ShowVM("vm1")
	require.NoError(t, err)
	require.Equal(t, api.PowerStopped, vm.PowerState)
	require.Contains(t, vm.PowerStateReason, "https://h/vaults/v/keys/k/1")
	require.Empty(t, f.tree.list())
	_, err = f.h.StartVM(ctx, "vm1")
	require.Error(t, err)
}

// newCachedFixture is newFixture with host caches under the host directory.
func newCachedFixture(t *testing.T) (*fixture, string) {
	f := newFixture(t)
	require.NoError(t, f.h.Shutdown())
	root := filepath.Dir(f.cfg.StateDir)
	f.cfg.CacheDir = filepath.Join(root, "host", "cache")
	f.cfg.CacheSize = 8 << 20
	// Take everything into the caches: on this fast local storage the
	// default policy would send the tests' I/O around them.
	f.cfg.CacheSequentialCutoff, f.cfg.CacheSlowStorage = -1, -1
	var err error
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { f.h.Shutdown() })
	return f, root
}

func leaks(t *testing.T, dir string, pattern []byte) int {
	t.Helper()
	hits, err := leakscan.Scan(dir, pattern, 16)
	require.NoError(t, err)
	return len(hits)
}

// Without encryption at host the host keeps plaintext (caches, temp disk)
// and storage still holds only ciphertext; switching it on while
// deallocated makes the host hold ciphertext only, and keeps the data.
func TestEncryptionAtHostOff(t *testing.T) {
	f, root := newCachedFixture(t)
	ctx := context.Background()
	for _, n := range []string{"ro", "none"} {
		_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: n, SizeBytes: 8 << 20})
		require.NoError(t, err)
	}
	vm, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, EncryptionAtHost: ptr(false),
		DataDisks: []api.AttachedDisk{{Name: "ro", Caching: api.CacheReadOnly}, {Name: "none"}}, TempDiskSize: 4 << 20})
	require.NoError(t, err)
	require.False(t, vm.SecurityProfile.EncryptionAtHost)

	images := []string{"vm1/os.img", "vm1/data-0.img", "vm1/data-1.img", "vm1/temp.img"}
	pattern := make([]byte, 1<<20)
	rand.Read(pattern)
	got := make([]byte, len(pattern))
	for _, img := range images {
		_, err := f.tree.get(img).WriteAt(pattern, 4096)
		require.NoError(t, err)
		require.NoError(t, f.tree.get(img).Sync())
		_, err = f.tree.get(img).ReadAt(got, 4096) // fills the ReadOnly cache
		require.NoError(t, err)
		require.Equal(t, pattern, got, img)
	}
	assert.Positive(t, leaks(t, filepath.Join(root, "host", "cache"), pattern), "plaintext host cache")
	assert.Positive(t, leaks(t, filepath.Join(root, "host", "temp-plain"), pattern), "plaintext temp disk")
	assert.Zero(t, leaks(t, filepath.Join(root, "storage"), pattern), "storage holds plaintext")

	rep, err := f.h.VMEncryptionReport(ctx, "vm1")
	require.NoError(t, err)
	assert.NotEmpty(t, rep.Warning)
	byLayer := map[string]api.ReportEntry{}
	for _, e := range rep.Entries {
		byLayer[e.Disk+"/"+e.Layer] = e
	}
	assert.True(t, byLayer["vm1_OsDisk/storage layer 1"].Encrypted)
	assert.Equal(t, "storage", byLayer["vm1_OsDisk/storage layer 1"].EncryptedBy)
	assert.Equal(t, "platform", byLayer["vm1_OsDisk/storage layer 1"].Key)
	assert.False(t, byLayer["vm1_OsDisk/host cache"].Encrypted)
	assert.Equal(t, api.CacheReadWrite, byLayer["vm1_OsDisk/host cache"].Caching)
	assert.True(t, byLayer["vm1_OsDisk/host cache"].Open)
	assert.False(t, byLayer["ro/host cache"].Encrypted)
	assert.Equal(t, api.CacheNone, byLayer["none/host cache"].Caching)
	assert.False(t, byLayer["(temp)/temp disk"].Encrypted)

	// A crash: the OS disk's plaintext write-back cache is written back
	// into the encrypted disk when the VM comes back.
	f.restart(t, false)
	for _, img := range images {
		_, err = f.tree.get(img).ReadAt(got, 4096)
		require.NoError(t, err)
		require.Equal(t, pattern, got, img)
	}

	// Encryption at host changes only while deallocated; nothing changes.
	_, err = f.h.UpdateVM(ctx, "vm1", api.UpdateVMRequest{EncryptionAtHost: ptr(true)})
	requireCode(t, err, 409)
	assert.Contains(t, err.Error(), "vm deallocate --name vm1")
	_, err = f.h.UpdateVM(ctx, "vm1", api.UpdateVMRequest{OsDiskCaching: "Sometimes"})
	requireCode(t, err, 400)
	_, err = f.h.UpdateVM(ctx, "vm1", api.UpdateVMRequest{DataDiskCaching: map[string]string{"nope": api.CacheNone}})
	requireCode(t, err, 404)
	vm, err = f.h.ShowVM("vm1")
	require.NoError(t, err)
	require.False(t, vm.SecurityProfile.EncryptionAtHost)
	require.Equal(t, api.PowerRunning, vm.PowerState)

	_, err = f.h.DeallocateVM(ctx, "vm1")
	require.NoError(t, err)
	assert.Zero(t, leaks(t, filepath.Join(root, "host"), pattern), "plaintext left on the host after deallocation")
	vm, err = f.h.UpdateVM(ctx, "vm1", api.UpdateVMRequest{EncryptionAtHost: ptr(true), DataDiskCaching: map[string]string{"none": api.CacheReadWrite}})
	require.NoError(t, err)
	require.True(t, vm.SecurityProfile.EncryptionAtHost)
	require.Equal(t, api.CacheReadWrite, vm.StorageProfile.DataDisks[1].Caching)
	_, err = f.h.StartVM(ctx, "vm1")
	require.NoError(t, err)
	for _, img := range images[:3] {
		_, err = f.tree.get(img).ReadAt(got, 4096)
		require.NoError(t, err)
		require.Equal(t, pattern, got, img)
	}
	fresh := make([]byte, 1<<20)
	rand.Read(fresh)
	for _, img := range images {
		_, err := f.tree.get(img).WriteAt(fresh, 8192)
		require.NoError(t, err)
		require.NoError(t, f.tree.get(img).Sync())
		_, err = f.tree.get(img).ReadAt(got, 8192)
		require.NoError(t, err)
	}
	assert.Zero(t, leaks(t, root, fresh), "plaintext anywhere with encryption at host")
	rep, err = f.h.VMEncryptionReport(ctx, "vm1")
	require.NoError(t, err)
	assert.Empty(t, rep.Warning)
	for _, e := range rep.Entries {
		if e.Caching != api.CacheNone {
			assert.True(t, e.Encrypted, "%s %s", e.Disk, e.Layer)
		}
	}
}

// Deallocation destroys the temp disk's own key before its files: a copy of
// the files taken before cannot be opened with any key left, and put back
// in place it gives a new, empty temp disk.
func TestDeallocateShredsTempDisk(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 4 << 20, TempDiskSize: 4 << 20})
	require.NoError(t, err)
	pattern := make([]byte, 64<<10)
	rand.Read(pattern)
	_, err = f.tree.get("vm1/temp.img").WriteAt(pattern, 0)
	require.NoError(t, err)
	_, err = f.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)

	root := filepath.Join(filepath.Dir(f.cfg.StateDir), "host")
	copied := t.TempDir()
	require.NoError(t, os.CopyFS(copied, os.DirFS(filepath.Join(root, "temp", "vm1"))))
	m, err := disk.ReadMetadata(ctx, f.cfg.HostLocal, tempPrefix("vm1"))
	require.NoError(t, err)
	kid := m.Layers[0].WrappedKeys[0].KeyID
	assert.Contains(t, kid, "platform/temp-", "the temp disk has a key of its own")
	assert.NotEqual(t, keystest.PlatformKeyID, kid)

	_, err = f.h.DeallocateVM(ctx, "vm1")
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(root, "temp", "vm1"))
	require.ErrorIs(t, err, os.ErrNotExist)

	// The copy, opened with every key the system holds, is unreadable.
	cb, err := local.Open(copied)
	require.NoError(t, err)
	_, err = disk.Open(ctx, &prefixed{cb, "temp/vm1"}, "temp/vm1", f.keys)
	require.ErrorIs(t, err, keys.ErrKeyGone)

	// Put back in place, the next start replaces it with an empty one.
	require.NoError(t, os.CopyFS(filepath.Join(root, "temp", "vm1"), os.DirFS(copied)))
	_, err = f.h.StartVM(ctx, "vm1")
	require.NoError(t, err)
	got := make([]byte, len(pattern))
	_, err = f.tree.get("vm1/temp.img").ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, make([]byte, len(pattern)), got)
}

// prefixed shows a directory's objects under a key prefix.
type prefixed struct {
	storage.Backend
	prefix string
}

func (p *prefixed) strip(key string) string { return strings.TrimPrefix(key, p.prefix+"/") }

func (p *prefixed) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	return p.Backend.OpenChunk(ctx, p.strip(key), create)
}

func (p *prefixed) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	return p.Backend.ReadMeta(ctx, p.strip(key))
}

func (p *prefixed) ReadMetaVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	return p.Backend.ReadMetaVersion(ctx, p.strip(key))
}

// TestFlushIntervalReachesVMDisks: the disks a VM serves sync by themselves
// at the host's FlushInterval, not at the engine's default (5 s).
func TestFlushIntervalReachesVMDisks(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, f.h.Shutdown())
	f.cfg.FlushInterval = time.Second
	var err error
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	f.mustDisk(t, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20})
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "d1"}}})
	pattern := bytes.Repeat([]byte("flushed by itself "), 1000)[:16384]
	_, err = f.tree.get("vm1/data-0.img").WriteAt(pattern, 0)
	require.NoError(t, err)
	// No Sync from the guest: another reader of the storage sees the
	// data once the background Sync ran, well before the default 5 s.
	require.Eventually(t, func() bool {
		return bytes.Equal(f.readDisk(t, "d1")[:len(pattern)], pattern)
	}, 3500*time.Millisecond, 100*time.Millisecond, "the write was not persisted within 3.5 s")
}
