package control

import (
	"bytes"
	"context"
	"encoding/json"
	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/disk"
)

// editState changes the saved state.json as a text editor would: through
// its JSON, without the control package's types.
func editState(t *testing.T, dir string, edit func(st map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, store.StateFile)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var st map[string]any
	require.NoError(t, json.Unmarshal(raw, &st))
	edit(st)
	raw, err = json.MarshalIndent(st, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, raw, 0o600))
}

func record(st map[string]any, kind, name string) map[string]any {
	return st[kind].(map[string]any)[name].(map[string]any)
}

// One bad record never keeps the host down: a VM whose disk has a missing,
// corrupt or impossibly large meta.json, a VM naming a disk that does not
// exist and a disk record of an impossible size each fail with the reason,
// and the healthy VM comes back with its data. Before, these panicked in
// New/Recover (a nil disk, a makeslice of 2^62 bytes) and kept the host
// down on every start.
func TestStartSurvivesBadRecords(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	pattern := bytes.Repeat([]byte("good data "), 400)
	for _, vm := range []string{"ok", "nometa", "badmeta", "hugemeta", "ghost", "hugerecord", "nulldisk"} {
		_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: vm + "-data", SizeBytes: 8 << 20})
		require.NoError(t, err)
		f.mustVM(t, api.CreateVMRequest{Name: vm, OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: vm + "-data"}}})
		img := f.tree.get(vm + "/data-0.img")
		_, err = img.WriteAt(pattern, 4096)
		require.NoError(t, err)
		require.NoError(t, img.Sync())
	}
	prefix := func(name string) string {
		d, err := f.h.ShowDisk(name)
		require.NoError(t, err)
		return d.StoragePrefix
	}
	metaKey := func(name string) string { return prefix(name) + "/meta.json" }
	nometa, _ := f.cfg.Storage.ReadMeta(ctx, metaKey("nometa-data"))
	hugeKey := metaKey("hugemeta-data")
	require.NoError(t, f.h.Shutdown())

	require.NoError(t, f.cfg.Storage.Delete(ctx, metaKey("nometa-data")))
	require.NoError(t, f.cfg.Storage.WriteMeta(ctx, metaKey("badmeta-data"), []byte(`{"format":2,"size":`)))
	// What the unbounded resize left: a meta.json whose size the engine
	// would allocate a chunk table for.
	raw, err := f.cfg.Storage.ReadMeta(ctx, hugeKey)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m))
	m["size"] = int64(1) << 62
	raw, err = json.Marshal(m)
	require.NoError(t, err)
	require.NoError(t, f.cfg.Storage.WriteMeta(ctx, hugeKey, raw))
	editState(t, f.cfg.StateDir, func(st map[string]any) {
		delete(st["disks"].(map[string]any), "ghost-data")
		record(st, "disks", "hugerecord-data")["diskSizeBytes"] = int64(1) << 62
		st["disks"].(map[string]any)["nulldisk-data"] = nil
		// A disk that names a VM that does not exist.
		d := record(st, "disks", "ok-data")
		orphan := map[string]any{}
		for k, v := range d {
			orphan[k] = v
		}
		orphan["name"], orphan["managedBy"], orphan["storagePrefix"] = "stray", "nosuchvm", "disks/stray"
		st["disks"].(map[string]any)["stray"] = orphan
	})

	f.restart(t, false)
	vm, err := f.h.ShowVM("ok")
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)
	got := make([]byte, len(pattern))
	_, err = f.tree.get("ok/data-0.img").ReadAt(got, 4096)
	require.NoError(t, err)
	require.Equal(t, pattern, got)

	for vmName, want := range map[string]string{
		"nometa":     "meta.json is missing",
		"badmeta":    "meta.json cannot be used",
		"hugemeta":   "size 4611686018427387904 bytes",
		"ghost":      `names disk "ghost-data", which does not exist`,
		"hugerecord": "impossible size",
		"nulldisk":   `names disk "nulldisk-data", which does not exist`,
	} {
		vm, err := f.h.ShowVM(vmName)
		require.NoError(t, err)
		require.Equal(t, api.PowerFailed, vm.PowerState, vmName)
		require.Contains(t, vm.PowerStateReason, want, vmName)
		require.Empty(t, vm.Images, vmName)
	}
	for name, want := range map[string]string{
		"nometa-data": "meta.json is missing", "badmeta-data": "not valid JSON",
		"hugemeta-data": "size 4611686018427387904 bytes", "hugerecord-data": "impossible size",
	} {
		d, err := f.h.ShowDisk(name)
		require.NoError(t, err)
		require.Contains(t, d.FailureReason, want, name)
	}
	d, err := f.h.ShowDisk("stray")
	require.NoError(t, err)
	require.Empty(t, d.ManagedBy, "a disk claimed by a VM that does not exist is unattached")
	require.Equal(t, api.DiskUnattached, d.DiskState)

	// A failed disk refuses use with the reason; a fixed one is usable
	// again at once, and vm start brings its VM back.
	_, err = f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s", Source: "nometa-data"})
	requireCode(t, err, http.StatusConflict)
	require.ErrorContains(t, err, "meta.json is missing")
	require.NoError(t, f.cfg.Storage.WriteMeta(ctx, metaKey("nometa-data"), nometa))
	vm, err = f.h.StartVM(ctx, "nometa")
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)
	d, err = f.h.ShowDisk("nometa-data")
	require.NoError(t, err)
	require.Empty(t, d.FailureReason)
	_, err = f.tree.get("nometa/data-0.img").ReadAt(got, 4096)
	require.NoError(t, err)
	require.Equal(t, pattern, got)

	// A VM naming a missing disk is mended by detaching it.
	_, err = f.h.DetachDisk(ctx, "ghost", "ghost-data")
	require.NoError(t, err)
	vm, err = f.h.StartVM(ctx, "ghost")
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)

	// A failed VM can be deleted, and a failed disk too: what storage
	// holds of it goes.
	badPrefix := prefix("badmeta-data")
	require.NoError(t, f.h.DeleteVM(ctx, "badmeta"))
	require.NoError(t, f.h.DeleteDisk(ctx, "badmeta-data"))
	left, err := f.cfg.Storage.List(ctx, badPrefix)
	require.NoError(t, err)
	require.Empty(t, left)
}

// A failed VM is tried again at the next start, and comes back once its
// disk is fixed.
func TestFailedVMComesBackAtNextStart(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20})
	require.NoError(t, err)
	d, err := f.h.ShowDisk("vm1_OsDisk")
	require.NoError(t, err)
	key := d.StoragePrefix + "/meta.json"
	saved, err := f.cfg.Storage.ReadMeta(ctx, key)
	require.NoError(t, err)
	require.NoError(t, f.h.Shutdown())
	require.NoError(t, f.cfg.Storage.Delete(ctx, key))

	f.restart(t, false)
	vm, err := f.h.ShowVM("vm1")
	require.NoError(t, err)
	require.Equal(t, api.PowerFailed, vm.PowerState)

	require.NoError(t, f.cfg.Storage.WriteMeta(ctx, key, saved))
	f.restart(t, true)
	vm, err = f.h.ShowVM("vm1")
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)
	d, err = f.h.ShowDisk("vm1_OsDisk")
	require.NoError(t, err)
	require.Empty(t, d.FailureReason)
	_, err = disk.ReadMetadata(ctx, f.cfg.Storage, d.StoragePrefix)
	require.NoError(t, err)
}
