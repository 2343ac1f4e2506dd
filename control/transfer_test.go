package control

import (
	"bytes"
	"context"
	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/disk"
)

// sampleImage writes a raw image of 3 MiB + 512 B: a pattern at 0, a hole,
// a pattern at 2 MiB and a partial last block. It returns its path and
// bytes.
func sampleImage(t *testing.T) (string, []byte) {
	t.Helper()
	size := 3<<20 + 512
	want := make([]byte, size)
	for i := 0; i < 96<<10; i++ {
		want[i] = byte(i>>12) | 0x80
		want[2<<20+i] = byte(i>>12) | 0x40
	}
	for i := size - 512; i < size; i++ {
		want[i] = 0x11
	}
	path := filepath.Join(t.TempDir(), "src.raw")
	fh, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, fh.Truncate(int64(size)))
	for _, r := range [][2]int{{0, 96 << 10}, {2 << 20, 96 << 10}, {size - 512, 512}} {
		_, err := fh.WriteAt(want[r[0]:r[0]+r[1]], int64(r[0]))
		require.NoError(t, err)
	}
	require.NoError(t, fh.Close())
	return path, want
}

func (f *fixture) readDisk(t *testing.T, name string) []byte {
	t.Helper()
	d, err := f.h.ShowDisk(name)
	require.NoError(t, err)
	dd, err := disk.Open(context.Background(), f.cfg.Storage, d.StoragePrefix, f.keys)
	require.NoError(t, err)
	defer dd.Close()
	b := make([]byte, dd.Size())
	_, err = dd.ReadAt(b, 0)
	require.NoError(t, err)
	return b
}

func TestImportExportRoundTrip(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	src, want := sampleImage(t)
	var seen []api.Progress
	d, err := f.h.ImportDisk(ctx, api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: "imp", Sku: "StandardSSD_LRS"}, Source: src},
		func(p api.Progress) { seen = append(seen, p) })
	require.NoError(t, err)
	require.Equal(t, api.DiskUnattached, d.DiskState)
	require.Equal(t, "StandardSSD_LRS", d.Sku.Name)
	require.Equal(t, api.EncPlatformKey, d.Encryption.Type)
	require.EqualValues(t, len(want), d.DiskSizeBytes, "the size is the image's, rounded up to 512 bytes")
	require.NotEmpty(t, seen)
	require.Equal(t, api.Progress{Done: int64(len(want)), Total: int64(len(want)), Data: 2*96<<10 + 512}, seen[len(seen)-1])
	require.True(t, bytes.Equal(want, f.readDisk(t, "imp")))

	// Only the chunk objects holding data exist: the hole is not stored.
	dd, err := disk.Open(ctx, f.cfg.Storage, d.StoragePrefix, f.keys)
	require.NoError(t, err)
	off, err := dd.SeekHole(0)
	require.NoError(t, err)
	require.EqualValues(t, 96<<10, off)
	off, err = dd.SeekData(off)
	require.NoError(t, err)
	require.EqualValues(t, 2<<20, off)
	require.NoError(t, dd.Close())

	out := filepath.Join(t.TempDir(), "out.raw")
	_, err = f.h.ExportDisk(ctx, "imp", api.ExportDiskRequest{Target: out}, nil)
	require.NoError(t, err)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
	st, err := os.Stat(out)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "an export holds plaintext: owner only")
	require.Less(t, st.Sys().(*syscall.Stat_t).Blocks*512, int64(1<<20), "the export is sparse")

	// The target exists now: refused without --force, replaced with it.
	_, err = f.h.ExportDisk(ctx, "imp", api.ExportDiskRequest{Target: out}, nil)
	requireCode(t, err, http.StatusConflict)
	require.NoError(t, os.WriteFile(out, []byte("old"), 0o644))
	_, err = f.h.ExportDisk(ctx, "imp", api.ExportDiskRequest{Target: out, Force: true}, nil)
	require.NoError(t, err)
	got, err = os.ReadFile(out)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*"))
	require.Empty(t, left, "no temporary file stays behind")
	d, err = f.h.ShowDisk("imp")
	require.NoError(t, err)
	require.Equal(t, api.DiskUnattached, d.DiskState)
}

func TestImportQCOW2(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-utils not installed")
	}
	f := newFixture(t)
	src, want := sampleImage(t)
	q := filepath.Join(t.TempDir(), "src.qcow2")
	out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", src, q).CombinedOutput()
	require.NoError(t, err, "%s", out)
	d, err := f.h.ImportDisk(context.Background(), api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: "q", LogicalSectorSize: 4096}, Source: q}, nil)
	require.NoError(t, err)
	require.EqualValues(t, 3<<20+4096, d.DiskSizeBytes, "rounded up to the 4 KiB sector")
	got := f.readDisk(t, "q")
	require.True(t, bytes.Equal(want, got[:len(want)]))
	require.True(t, bytes.Equal(make([]byte, 4096-512), got[len(want):]))
}

func TestTransferBadInputChangesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	src, _ := sampleImage(t)
	_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20})
	require.NoError(t, err)
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "d1"}}})
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.raw")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	vmdk := filepath.Join(dir, "disk.vmdk")
	require.NoError(t, os.WriteFile(vmdk, append([]byte("KDMV"), make([]byte, 4092)...), 0o600))
	exists := filepath.Join(dir, "exists.raw")
	require.NoError(t, os.WriteFile(exists, []byte("keep"), 0o600))

	before, err := f.cfg.Storage.List(ctx, "")
	require.NoError(t, err)
	disks, vms := f.disks(t), f.vms(t)
	imp := func(name, source string) func() error {
		return func() error {
			_, err := f.h.ImportDisk(ctx, api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: name}, Source: source}, nil)
			return err
		}
	}
	exp := func(name, target string) func() error {
		return func() error {
			_, err := f.h.ExportDisk(ctx, name, api.ExportDiskRequest{Target: target}, nil)
			return err
		}
	}
	cases := []struct {
		name   string
		status int
		want   string
		call   func() error
	}{
		{"missing source", 400, "does not exist", imp("x", filepath.Join(dir, "nope.raw"))},
		{"relative source", 400, "absolute path", imp("x", "src.raw")},
		{"directory", 400, "not a regular file", imp("x", dir)},
		{"empty file", 400, "empty", imp("x", empty)},
		{"unknown format", 400, "VMDK", imp("x", vmdk)},
		{"name taken", 409, "already exists", imp("d1", src)},
		{"bad name", 400, "name", imp("../x", src)},
		{"bad sku", 400, "sku", func() error {
			_, err := f.h.ImportDisk(ctx, api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: "x", Sku: "Gold"}, Source: src}, nil)
			return err
		}},
		{"customer key without a set", 400, "disk encryption set", func() error {
			_, err := f.h.ImportDisk(ctx, api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: "x", EncryptionType: api.EncCustomerKey}, Source: src}, nil)
			return err
		}},
		{"size given", 400, "size", func() error {
			_, err := f.h.ImportDisk(ctx, api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: "x", SizeBytes: 8 << 20}, Source: src}, nil)
			return err
		}},
		{"target exists", 409, "--force", exp("d1", exists)},
		{"relative target", 400, "absolute path", exp("vm1_OsDisk", "out.raw")},
		{"target directory missing", 400, "does not exist", exp("vm1_OsDisk", filepath.Join(dir, "no", "out.raw"))},
		{"unknown disk", 404, "does not exist", exp("nope", filepath.Join(dir, "out.raw"))},
		{"disk of a running VM", 409, "vm stop --name vm1", exp("d1", filepath.Join(dir, "out.raw"))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			requireCode(t, err, c.status)
			require.ErrorContains(t, err, c.want)
		})
	}
	after, err := f.cfg.Storage.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, before, after, "a refused request changed storage")
	require.Equal(t, disks, f.disks(t))
	require.Equal(t, vms, f.vms(t))
	names, err := filepath.Glob(filepath.Join(dir, "*"))
	require.NoError(t, err)
	require.Len(t, names, 3, "a refused export wrote a file: %v", names)
	keep, _ := os.ReadFile(exists)
	require.Equal(t, "keep", string(keep))
}

func TestImportCancelledLeavesNoDisk(t *testing.T) {
	f := newFixture(t)
	src, _ := sampleImage(t)
	before, err := f.cfg.Storage.List(context.Background(), "")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var state string
	_, err = f.h.ImportDisk(ctx, api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: "half"}, Source: src}, func(p api.Progress) {
		if p.Done > 0 && state == "" {
			d, err := f.h.ShowDisk("half")
			require.NoError(t, err)
			state = d.DiskState
			// Nothing may use the disk while it is imported.
			requireCode(t, f.h.DeleteDisk(context.Background(), "half"), http.StatusConflict)
			_, err = f.h.CreateVM(context.Background(), api.CreateVMRequest{Name: "vm1", OsDisk: "half"})
			requireCode(t, err, http.StatusConflict)
			cancel()
		}
	})
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, api.DiskActiveUpload, state)
	_, err = f.h.ShowDisk("half")
	requireCode(t, err, http.StatusNotFound)
	after, err := f.cfg.Storage.List(context.Background(), "")
	require.NoError(t, err)
	require.Equal(t, before, after, "a cancelled import left storage behind")
	require.Empty(t, f.vms(t))
}

// A crash in the middle of a transfer: at the next start the half-imported
// disk is destroyed and the exported one is usable again.
func TestTransferRecoveryAfterCrash(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "importing", SizeBytes: 8 << 20})
	require.NoError(t, err)
	f.mustDisk(t, api.CreateDiskRequest{Name: "exporting", SizeBytes: 8 << 20})
	target := filepath.Join(t.TempDir(), "y.raw")
	f.setRecords(t, func(r *store.Records) {
		r.Disks["importing"].DiskState = api.DiskActiveUpload
		r.Disks["importing"].Transfer = &store.Transfer{Kind: api.TransferImport, Path: "/x.raw"}
		r.Disks["exporting"].DiskState = api.DiskActiveSAS
		r.Disks["exporting"].Transfer = &store.Transfer{Kind: api.TransferExport, Path: target}
	})
	require.NoError(t, os.WriteFile(exportTemp(target)+"123", []byte("partial plaintext"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(filepath.Dir(target), "other"), nil, 0o600))
	_, err = f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDisk: "exporting"})
	requireCode(t, err, http.StatusConflict)

	f.restart(t, false)
	_, err = f.h.ShowDisk("importing")
	requireCode(t, err, http.StatusNotFound)
	left, err := f.cfg.Storage.List(ctx, a.StoragePrefix)
	require.NoError(t, err)
	require.Empty(t, left)
	d, err := f.h.ShowDisk("exporting")
	require.NoError(t, err)
	require.Equal(t, api.DiskUnattached, d.DiskState)
	require.Nil(t, d.Transfer)
	left, err = filepath.Glob(filepath.Join(filepath.Dir(target), "*"))
	require.NoError(t, err)
	require.Equal(t, []string{filepath.Join(filepath.Dir(target), "other")}, left, "the partial export is removed, nothing else")
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDisk: "exporting"})
}

func TestTransferOverTheAPI(t *testing.T) {
	f := newFixture(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := Listen(sock)
	require.NoError(t, err)
	srv := &http.Server{Handler: Handler(f.h)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	c := api.NewClient(sock)
	ctx := context.Background()
	src, want := sampleImage(t)

	var last api.Progress
	d, err := c.ImportDisk(ctx, api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: "api"}, Source: src},
		func(p api.Progress) { last = p })
	require.NoError(t, err)
	require.Equal(t, "api", d.Name)
	require.Equal(t, int64(len(want)), last.Done)

	_, err = c.ImportDisk(ctx, api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: "api"}, Source: src}, nil)
	requireCode(t, err, http.StatusConflict)
	_, err = c.Transfer(ctx, api.RouteImportDisk, map[string]any{"name": "x", "source": src, "sourceFormat": "raw"}, nil)
	requireCode(t, err, http.StatusBadRequest)

	out := filepath.Join(t.TempDir(), "out.raw")
	d, err = c.ExportDisk(ctx, "api", api.ExportDiskRequest{Target: out}, nil)
	require.NoError(t, err)
	require.Equal(t, api.DiskUnattached, d.DiskState)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
}

// The disk of a stopped VM can be exported; meanwhile the VM cannot start
// and the disk, even once detached, cannot go to another VM.
func TestExportOfStoppedVMDisk(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	src, want := sampleImage(t)
	_, err := f.h.ImportDisk(ctx, api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: "d1"}, Source: src}, nil)
	require.NoError(t, err)
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "d1"}}})
	_, err = f.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)

	out := filepath.Join(t.TempDir(), "out.raw")
	checked := false
	_, err = f.h.ExportDisk(ctx, "d1", api.ExportDiskRequest{Target: out}, func(api.Progress) {
		if checked {
			return
		}
		checked = true
		d, err := f.h.ShowDisk("d1")
		require.NoError(t, err)
		require.Equal(t, api.DiskActiveSAS, d.DiskState)
		_, err = f.h.StartVM(ctx, "vm1")
		requireCode(t, err, http.StatusConflict)
		_, err = f.h.DetachDisk(ctx, "vm1", "d1")
		require.NoError(t, err)
		_, err = f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm2", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "d1"}}})
		requireCode(t, err, http.StatusConflict)
		_, err = f.h.ExportDisk(ctx, "d1", api.ExportDiskRequest{Target: out + "2"}, nil)
		requireCode(t, err, http.StatusConflict)
	})
	require.NoError(t, err)
	require.True(t, checked)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
	d, err := f.h.ShowDisk("d1")
	require.NoError(t, err)
	require.Equal(t, api.DiskUnattached, d.DiskState, "detached during the export")
	require.Nil(t, d.Transfer)
	require.Equal(t, []string{"vm1"}, func() []string {
		var n []string
		for _, v := range f.vms(t) {
			n = append(n, v.Name)
		}
		return n
	}())
}
