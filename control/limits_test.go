package control

import (
	"bytes"
	"context"
	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/disk"
)

// apiCall sends one request to the control API's handler and returns the
// status and the body.
func apiCall(t testing.TB, h http.Handler, method, path, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, bytes.NewReader([]byte(body)))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// A size above the sku's maximum is refused with a 400 naming the field,
// before anything changes: no object in storage, no record, no change of
// meta.json, and an attached disk keeps serving. Before the bound, such
// requests panicked in the engine (makeslice) or ran the daemon out of
// memory, one of them after rewriting meta.json.
func TestSizeBounds(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20})
	require.NoError(t, err)
	f.mustDisk(t, api.CreateDiskRequest{Name: "u1", SizeBytes: 8 << 20, Sku: "UltraSSD_LRS", LogicalSectorSize: 4096})
	vm, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "d1"}}})
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)
	d1, err := f.h.ShowDisk("d1")
	require.NoError(t, err)
	metaBefore, err := f.cfg.Storage.ReadMeta(ctx, d1.StoragePrefix+"/meta.json")
	require.NoError(t, err)
	stateBefore, err := os.ReadFile(filepath.Join(f.cfg.StateDir, store.StateFile))
	require.NoError(t, err)
	objects, err := f.cfg.Storage.List(ctx, "")
	require.NoError(t, err)
	hostObjects, err := f.cfg.HostLocal.List(ctx, "")
	require.NoError(t, err)

	handler := Handler(f.h)
	for _, c := range []struct {
		name, method, path, body, field string
	}{
		{"create above 32767 GiB", "POST", "/disks", `{"name":"big","sizeBytes":35183298347520}`, "sizeBytes"},
		{"create 4194304T", "POST", "/disks", `{"name":"big","sizeBytes":4611686018427387904}`, "sizeBytes"},
		{"create near 2^63", "POST", "/disks", `{"name":"big","sizeBytes":9223372036854775296}`, "sizeBytes"},
		{"create negative", "POST", "/disks", `{"name":"big","sizeBytes":-512}`, "sizeBytes"},
		{"create ultra above 64 TiB", "POST", "/disks", `{"name":"big","sizeBytes":70368744181760,"sku":"UltraSSD_LRS","logicalSectorSize":4096}`, "sizeBytes"},
		{"create v2 above 64 TiB", "POST", "/disks", `{"name":"big","sizeBytes":70368744181760,"sku":"PremiumV2_LRS"}`, "sizeBytes"},
		{"grow attached near 2^63", "PATCH", "/disks/d1", `{"sizeBytes":9223372036854775296}`, "sizeBytes"},
		{"grow attached above max", "PATCH", "/disks/d1", `{"sizeBytes":35183298347520}`, "sizeBytes"},
		{"grow unattached above max", "PATCH", "/disks/u1", `{"sizeBytes":70368744181760}`, "sizeBytes"},
		{"grow negative", "PATCH", "/disks/u1", `{"sizeBytes":-4096}`, "sizeBytes"},
		{"VM OS disk above max", "POST", "/vms", `{"name":"vm2","osDiskSizeBytes":9223372036854775296}`, "osDiskSizeBytes"},
		{"VM OS disk negative", "POST", "/vms", `{"name":"vm2","osDiskSizeBytes":-1}`, "osDiskSizeBytes"},
		{"VM temp disk above max", "POST", "/vms", `{"name":"vm2","osDisk":"u1","tempDiskSizeBytes":9223372036854775296}`, "tempDiskSizeBytes"},
		{"VM temp disk negative", "POST", "/vms", `{"name":"vm2","osDisk":"u1","tempDiskSizeBytes":-1048576}`, "tempDiskSizeBytes"},
		{"size beyond int64", "POST", "/disks", `{"name":"big","sizeBytes":99999999999999999999}`, "sizeBytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := apiCall(t, handler, c.method, c.path, c.body)
			require.Equal(t, http.StatusBadRequest, code, body)
			require.Contains(t, body, c.field)
		})
	}

	after, err := f.cfg.Storage.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, objects, after, "a refused size changed storage")
	hostAfter, err := f.cfg.HostLocal.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, hostObjects, hostAfter, "a refused size changed the host directory")
	metaAfter, err := f.cfg.Storage.ReadMeta(ctx, d1.StoragePrefix+"/meta.json")
	require.NoError(t, err)
	require.Equal(t, metaBefore, metaAfter, "a refused resize rewrote meta.json")
	stateAfter, err := os.ReadFile(filepath.Join(f.cfg.StateDir, store.StateFile))
	require.NoError(t, err)
	require.Equal(t, stateBefore, stateAfter, "a refused size changed the state")

	// The attached disk still serves, at its old size.
	img := f.tree.get("vm1/data-0.img")
	require.NotNil(t, img)
	require.EqualValues(t, 8<<20, img.Size())
	_, err = img.WriteAt(bytes.Repeat([]byte{7}, 4096), 4096)
	require.NoError(t, err)

	// The bounds themselves are sizes a disk can have.
	d, err := f.h.UpdateDisk(ctx, "d1", api.UpdateDiskRequest{SizeBytes: api.MaxDiskBytes})
	require.NoError(t, err)
	require.Equal(t, api.MaxDiskBytes, d.DiskSizeBytes)
	require.Equal(t, api.MaxDiskBytes, img.Size())
	m, err := disk.ReadMetadata(ctx, f.cfg.Storage, d1.StoragePrefix)
	require.NoError(t, err)
	require.Equal(t, api.MaxDiskBytes, m.Size)
	_, err = f.h.UpdateDisk(ctx, "d1", api.UpdateDiskRequest{SizeBytes: api.MaxDiskBytes + 512})
	requireCode(t, err, http.StatusBadRequest)
}

// An image whose virtual size is above the maximum is refused before a disk
// is created.
func TestImportAboveMaximum(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-utils not installed")
	}
	f := newFixture(t)
	ctx := context.Background()
	q := filepath.Join(t.TempDir(), "huge.qcow2")
	out, err := exec.Command("qemu-img", "create", "-f", "qcow2", q, "40T").CombinedOutput()
	require.NoError(t, err, "%s", out)
	_, err = f.h.ImportDisk(ctx, api.ImportDiskRequest{CreateDiskRequest: api.CreateDiskRequest{Name: "huge"}, Source: q}, nil)
	requireCode(t, err, http.StatusBadRequest)
	require.ErrorContains(t, err, "virtual size")
	require.Empty(t, f.disks(t))
	left, err := f.cfg.Storage.List(ctx, "")
	require.NoError(t, err)
	require.Empty(t, left)

}

// The product limits must stay within what the engine can address, or a
// size the API accepts would be refused only when the disk opens.
func TestProductLimitsWithinEngine(t *testing.T) {
	for _, max := range []int64{api.MaxDiskBytes, api.MaxUltraDiskBytes, api.MaxTempDiskBytes} {
		require.NoError(t, disk.CheckSize(max, 4096), "a product limit of %d bytes is beyond the engine's", max)
		require.LessOrEqual(t, max, int64(disk.MaxSize))
	}
}
