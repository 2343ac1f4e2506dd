package cli

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"512M": 512 << 20, "8G": 8 << 30, "1T": 1 << 40, "64K": 64 << 10, "1048576": 1 << 20,
		"2GiB": 2 << 30, "3Gi": 3 << 30, "0": 0, "16m": 16 << 20,
	} {
		got, err := parseSize(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "lots", "-1G", "1.5G", "1P", "G", "99999999999T", "1GB"} {
		_, err := parseSize(bad)
		assert.Error(t, err, bad)
	}
	assert.Equal(t, "512M", formatSize(512<<20))
	assert.Equal(t, "1536M", formatSize(1536<<20))
	assert.Equal(t, "1000", formatSize(1000))
}

// Sizes a host would refuse are refused by the CLI with the bound, and
// nothing is sent; sizes at the bounds are sent as they are.
func TestSizeFlags(t *testing.T) {
	h := newFakeHost(t)
	env := map[string]string{"HOSTCRYPT_SOCKET": h.socket}
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"disk", "create", "--name", "d", "--size", "1"}, "--size 1 (bytes): the smallest disk is 1M (1 MiB, 1048576 bytes)"},
		{[]string{"disk", "create", "--name", "d", "--size", "1GB"}, "GB is ambiguous; write 1G (or 1GiB)"},
		{[]string{"disk", "create", "--name", "d", "--size", "1gb"}, "ambiguous"},
		{[]string{"disk", "create", "--name", "d", "--size", "99999999999999999T"}, "too large"},
		{[]string{"disk", "create", "--name", "d", "--size", "99999999999999999999"}, "too large"},
		{[]string{"disk", "create", "--name", "d", "--size", "4194304T"}, "the largest Premium_LRS disk is 32767G (32767 GiB)"},
		{[]string{"disk", "create", "--name", "d", "--size", "32T"}, "the largest Premium_LRS disk is 32767G"},
		{[]string{"disk", "create", "--name", "d", "--size", "65T", "--sku", "UltraSSD_LRS"}, "the largest UltraSSD_LRS disk is 64T (65536 GiB)"},
		{[]string{"disk", "create", "--name", "d", "--size", "1048577"}, "multiple of 512 bytes"},
		{[]string{"disk", "create", "--name", "d", "--size", "1049088", "--logical-sector-size", "4096"}, "multiple of 4096 bytes"},
		{[]string{"disk", "create", "--name", "d", "--source", "s1", "--size", "100T"}, "the largest"},
		{[]string{"disk", "update", "--name", "d", "--size", "4194304T"}, "the largest disk is 64T"},
		{[]string{"disk", "update", "--name", "d", "--size", "512K"}, "the smallest disk is 1M"},
		{[]string{"vm", "create", "--name", "v", "--os-disk-size", "4194304T"}, "--os-disk-size 4194304T: the largest Premium_LRS disk is"},
		{[]string{"vm", "create", "--name", "v", "--os-disk-size", "1"}, "the smallest disk is 1M"},
		{[]string{"vm", "create", "--name", "v", "--os-disk-size", "0"}, "the smallest disk is 1M"},
		{[]string{"vm", "create", "--name", "v", "--os-disk-size", "1G", "--temp-disk-size", "99999T"}, "--temp-disk-size 99999T: the largest temp disk is"},
		{[]string{"vm", "create", "--name", "v", "--os-disk-size", "1G", "--temp-disk-size", "100K"}, "the smallest temp disk is 1M"},
	} {
		_, _, err := runCLI(t, env, c.args...)
		require.Error(t, err, "%v", c.args)
		assert.Contains(t, err.Error(), c.msg, "%v", c.args)
	}
	require.Empty(t, h.seen, "a refused size reached the host")

	for _, c := range []struct {
		args []string
		want int64
	}{
		{[]string{"disk", "create", "--name", "d", "--size", "32767G"}, 32767 << 30},
		{[]string{"disk", "create", "--name", "d", "--size", "64T", "--sku", "PremiumV2_LRS"}, 64 << 40},
		{[]string{"disk", "create", "--name", "d", "--size", "1M"}, 1 << 20},
		{[]string{"disk", "update", "--name", "d", "--size", "64TiB"}, 64 << 40},
	} {
		h.bodies = nil
		_, _, err := runCLI(t, env, c.args...)
		require.NoError(t, err, "%v", c.args)
		require.Len(t, h.bodies, 1)
		var req struct {
			SizeBytes int64 `json:"sizeBytes"`
		}
		require.NoError(t, json.Unmarshal(h.bodies[0], &req))
		assert.Equal(t, c.want, req.SizeBytes, "%v", c.args)
	}
}

// fakeHost serves the control API on a unix socket and records the requests.
type fakeHost struct {
	socket string
	mu     sync.Mutex
	seen   []string
	bodies []json.RawMessage
}

func newFakeHost(t *testing.T) *fakeHost {
	h := &fakeHost{socket: filepath.Join(t.TempDir(), "s.sock")}
	l, err := net.Listen("unix", h.socket)
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body json.RawMessage
		json.NewDecoder(r.Body).Decode(&body)
		h.mu.Lock()
		h.seen = append(h.seen, r.Method+" "+r.URL.Path)
		h.bodies = append(h.bodies, body)
		h.mu.Unlock()
		switch {
		case r.URL.Path == "/vms" && r.Method == "GET":
			w.Write([]byte(`[]`))
		case r.URL.Path == "/host/gc":
			var req api.GCRequest
			json.Unmarshal(body, &req)
			rep := api.GCReport{DryRun: req.DryRun, Leftovers: []api.Leftover{
				{Where: "storage", Path: "disks/abc", Reason: "creation of disk d cut short (started 2030-01-01T00:00:00Z)", UsedBytes: 8 << 20, Removed: !req.DryRun},
				{Where: "host-cache", Path: "abc.plain", Reason: "host cache of a disk that does not exist", Error: map[bool]string{true: "", false: "permission denied"}[req.DryRun]},
			}}
			json.NewEncoder(w).Encode(rep)
		case r.URL.Path == "/disks/nope":
			w.WriteHeader(404)
			w.Write([]byte(`{"error":{"code":"ResourceNotFound","message":"disk \"nope\" does not exist"}}`))
		default:
			w.Write([]byte(`{"name":"x","storageProfile":{"osDisk":{"name":"o"}}}`))
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return h
}

func TestHostCommands(t *testing.T) {
	h := newFakeHost(t)
	env := map[string]string{"HOSTCRYPT_SOCKET": h.socket}

	_, _, err := runCLI(t, env, "vm", "create", "--name", "vm1", "--os-disk-size=2G",
		"--data-disks", "d1,d2:ReadOnly", "--encryption-at-host", "true", "--temp-disk-size", "1G")
	require.NoError(t, err)
	require.Equal(t, []string{"POST /vms"}, h.seen)
	var req api.CreateVMRequest
	require.NoError(t, json.Unmarshal(h.bodies[0], &req))
	assert.EqualValues(t, 2<<30, req.OsDiskSizeBytes)
	assert.EqualValues(t, 1<<30, req.TempDiskSize)
	assert.Equal(t, []api.AttachedDisk{{Name: "d1"}, {Name: "d2", Caching: "ReadOnly"}}, req.DataDisks)
	require.NotNil(t, req.EncryptionAtHost)
	assert.True(t, *req.EncryptionAtHost)

	_, _, err = runCLI(t, env, "vm", "disk", "attach", "--vm-name", "vm1", "--name", "d3", "--lun", "0", "--caching=ReadWrite")
	require.NoError(t, err)
	var att api.AttachRequest
	require.NoError(t, json.Unmarshal(h.bodies[1], &att))
	require.NotNil(t, att.Lun)
	assert.Equal(t, api.AttachRequest{Disk: "d3", Lun: att.Lun, Caching: "ReadWrite"}, att)
	assert.Equal(t, 0, *att.Lun)
	assert.Equal(t, "POST /vms/vm1/disks", h.seen[1])

	// A list prints a JSON array; flags after the verb work.
	out, _, err := runCLI(t, nil, "vm", "list", "--host-socket", h.socket, "-o", "json")
	require.NoError(t, err)
	assert.JSONEq(t, `[]`, out)

	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"disk", "list", "stray"}, "unexpected argument"},
		{[]string{"vm", "create", "--name", "v", "--os-disk-size", "1G", "--encryption-at-host", "maybe"}, "true or false"},
		{[]string{"vm", "create", "--name", "v", "--os-disk-size", "1G", "--encryption-at-host"}, "needs an argument"},
		{[]string{"vm", "create", "--name", "v"}, "exactly one of --os-disk or --os-disk-size"},
		{[]string{"disk", "create", "--name", "v", "--size", "big"}, "binary unit"},
		{[]string{"disk", "create", "--name", "v"}, "--size is required"},
		{[]string{"disk", "show", "--name", "nope"}, "does not exist"},
		{[]string{"vm", "create", "--name", "v", "--data-disks", "a,,b", "--os-disk", "o"}, "empty item"},
	} {
		_, _, err := runCLI(t, env, c.args...)
		require.Error(t, err, "%v", c.args)
		assert.Contains(t, err.Error(), c.msg, "%v", c.args)
	}
	_, _, err = runCLI(t, nil, "disk", "list")
	require.ErrorContains(t, err, "HOSTCRYPT_SOCKET")
	_, _, err = runCLI(t, map[string]string{"HOSTCRYPT_SOCKET": filepath.Join(os.TempDir(), "nonexistent.sock")}, "disk", "list")
	require.ErrorContains(t, err, "cannot reach hostcryptd")
}

func TestGroupHelp(t *testing.T) {
	out, _, err := runCLI(t, nil, "des", "--help")
	require.NoError(t, err)
	require.Contains(t, out, "des create")
	require.NotContains(t, out, "vm create")
}

func TestHostGC(t *testing.T) {
	h := newFakeHost(t)
	env := map[string]string{"HOSTCRYPT_SOCKET": h.socket}
	out, errOut, err := runCLI(t, env, "host", "gc", "--dry-run", "true")
	require.NoError(t, err)
	require.Equal(t, []string{"POST /host/gc"}, h.seen)
	assert.JSONEq(t, `{"dryRun":true}`, string(h.bodies[0]))
	assert.Contains(t, errOut, "would remove 2 leftover(s)")
	assert.Regexp(t, `storage\s+disks/abc\s+8M\s+creation of disk d cut short .*would remove`, out)
	assert.Regexp(t, `host-cache\s+abc.plain\s+0\s+host cache of a disk that does not exist\s+would remove`, out)

	out, errOut, err = runCLI(t, env, "host", "gc")
	require.ErrorContains(t, err, "1 leftover(s) could not be removed")
	assert.JSONEq(t, `{}`, string(h.bodies[1]))
	assert.Contains(t, errOut, "removed 1 leftover(s)")
	assert.Regexp(t, `disks/abc.*removed`, out)
	assert.Contains(t, out, "not removed: permission denied")

	_, _, err = runCLI(t, env, "host", "gc", "--dry-run")
	require.ErrorContains(t, err, "needs an argument")
}
