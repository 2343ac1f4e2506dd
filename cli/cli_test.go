package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control"
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
	for _, bad := range []string{"", "lots", "-1G", "1.5G", "1P", "G", "99999999999T"} {
		_, err := parseSize(bad)
		assert.Error(t, err, bad)
	}
	assert.Equal(t, "512M", formatSize(512<<20))
	assert.Equal(t, "1536M", formatSize(1536<<20))
	assert.Equal(t, "1000", formatSize(1000))
}

// fakeHost serves the control API paths the tests call and records requests.
func fakeHost(t *testing.T) (socket string, got *[]string) {
	dir := t.TempDir()
	socket = filepath.Join(dir, "s.sock")
	l, err := control.Listen(socket)
	require.NoError(t, err)
	var seen []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		raw, _ := json.Marshal(body)
		seen = append(seen, r.Method+" "+r.URL.Path+" "+string(raw))
		switch {
		case r.URL.Path == "/vms" && r.Method == "GET":
			w.Write([]byte(`[]`))
		case r.URL.Path == "/disks/nope":
			w.WriteHeader(404)
			w.Write([]byte(`{"error":{"code":"ResourceNotFound","message":"disk \"nope\" does not exist"}}`))
		default:
			w.Write([]byte(`{"name":"x","storageProfile":{"osDisk":{"name":"o"}}}`))
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return socket, &seen
}

func runCLI(args ...string) (string, string, int) {
	var out, errOut bytes.Buffer
	code := Main(context.Background(), args, &out, &errOut)
	return out.String(), errOut.String(), code
}

func TestCommandLine(t *testing.T) {
	sock, seen := fakeHost(t)
	t.Setenv("HOSTCRYPT_SOCKET", "")
	t.Setenv("HOSTCRYPT_CONFIG", "")

	_, errOut, code := runCLI("--host-socket", sock, "vm", "create", "--name", "vm1", "--os-disk-size=2G",
		"--data-disks", "d1,d2:ReadOnly", "--encryption-at-host", "true", "--temp-disk-size", "1G")
	require.Equal(t, 0, code, errOut)
	require.Len(t, *seen, 1)
	var req control.CreateVMRequest
	_, body, _ := cut3((*seen)[0])
	require.NoError(t, json.Unmarshal([]byte(body), &req))
	assert.EqualValues(t, 2<<30, req.OsDiskSizeBytes)
	assert.EqualValues(t, 1<<30, req.TempDiskSize)
	assert.Equal(t, []control.AttachedDisk{{Name: "d1"}, {Name: "d2", Caching: "ReadOnly"}}, req.DataDisks)
	require.NotNil(t, req.EncryptionAtHost)
	assert.True(t, *req.EncryptionAtHost)

	// Flags after the verb, -o json after the verb, a list prints an array.
	out, errOut, code := runCLI("vm", "list", "--host-socket="+sock, "-o", "json")
	require.Equal(t, 0, code, errOut)
	assert.JSONEq(t, `[]`, out)

	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--host-socket", sock, "disk", "list", "stray"}, 2, "unexpected argument"},
		{[]string{"--host-socket", sock, "vm", "create", "--name", "v", "--os-disk-size", "1G", "--encryption-at-host", "maybe"}, 2, "true or false"},
		{[]string{"--host-socket", sock, "vm", "create", "--name", "v", "--os-disk-size", "1G", "--encryption-at-host"}, 2, "needs an argument"},
		{[]string{"--host-socket", sock, "disk", "create", "--name", "v", "--size", "big"}, 2, "binary unit"},
		{[]string{"--host-socket", sock, "disk", "show", "--name", "nope"}, 1, "does not exist"},
		{[]string{"--host-socket", sock, "disk", "frobnicate"}, 2, "unknown command"},
		{[]string{"--host-socket", sock, "-o", "yaml", "disk", "list"}, 2, "table or json"},
		{[]string{"disk", "list"}, 2, "HOSTCRYPT_SOCKET"},
		{[]string{"--host-socket", sock, "vm", "create", "--name", "v", "--data-disks", "a,,b", "--os-disk", "o"}, 2, "empty item"},
	} {
		out, errOut, code := runCLI(c.args...)
		assert.Equal(t, c.code, code, "%v: %s %s", c.args, out, errOut)
		assert.Contains(t, errOut, c.msg, "%v", c.args)
	}
}

func TestEndpointsFromConfigFile(t *testing.T) {
	sock, _ := fakeHost(t)
	cfg := filepath.Join(t.TempDir(), "config")
	require.NoError(t, os.WriteFile(cfg, []byte("# hostcrypt\nexport HOSTCRYPT_SOCKET="+sock+"\n"), 0o600))
	t.Setenv("HOSTCRYPT_SOCKET", "")
	t.Setenv("HOSTCRYPT_CONFIG", cfg)
	_, errOut, code := runCLI("vm", "list")
	require.Equal(t, 0, code, errOut)
	// The environment wins over the file.
	t.Setenv("HOSTCRYPT_SOCKET", "/nonexistent.sock")
	_, errOut, code = runCLI("vm", "list")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "cannot reach hostcryptd")
}

func cut3(s string) (string, string, string) {
	var a, b string
	i := bytes.IndexByte([]byte(s), ' ')
	a, s = s[:i], s[i+1:]
	i = bytes.IndexByte([]byte(s), ' ')
	b, s = s[:i], s[i+1:]
	return a, s, b
}
