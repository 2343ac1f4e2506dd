package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
)

// streamHost answers imports and exports as hostcryptd does: progress
// lines, then the disk; an export of "busy" is refused before it starts.
func streamHost(t *testing.T) (string, *[]string, *[]json.RawMessage) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	var seen []string
	var bodies []json.RawMessage
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body json.RawMessage
		json.NewDecoder(r.Body).Decode(&body)
		seen = append(seen, r.Method+" "+r.URL.Path)
		bodies = append(bodies, body)
		if r.URL.Path == "/disks/busy/export" {
			w.WriteHeader(409)
			w.Write([]byte("{\n  \"error\": {\"code\": \"Conflict\", \"message\": \"disk \\\"busy\\\" is attached to VM \\\"vm1\\\", which is running; stop it first\"}\n}\n"))
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i := 0; i <= 4; i++ {
			fmt.Fprintf(w, `{"progress":{"done":%d,"total":4194304,"data":0}}`+"\n", i<<20)
		}
		if r.URL.Path == "/disks/fail/export" {
			w.Write([]byte(`{"error":{"code":"InternalError","message":"exporting disk \"fail\": disk full"}}` + "\n"))
			return
		}
		w.Write([]byte(`{"disk":{"name":"d1","diskSizeBytes":4194304,"diskState":"Unattached","sku":{"name":"Premium_LRS"}}}` + "\n"))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock, &seen, &bodies
}

func TestDiskImportExport(t *testing.T) {
	sock, seen, bodies := streamHost(t)
	env := map[string]string{"HOSTCRYPT_SOCKET": sock}
	wd, err := os.Getwd()
	require.NoError(t, err)

	out, errOut, err := runCLI(t, env, "disk", "import", "--name", "d1", "--source", "img/disk.qcow2", "--sku=StandardSSD_LRS",
		"--disk-encryption-set", "des1")
	require.NoError(t, err)
	assert.Contains(t, out, "d1")
	assert.Empty(t, errOut, "no bar and no lines when stderr is not a terminal and the transfer is short")
	require.Equal(t, []string{"POST /disks/import"}, *seen)
	var imp api.ImportDiskRequest
	require.NoError(t, json.Unmarshal((*bodies)[0], &imp))
	assert.Equal(t, api.ImportDiskRequest{Source: filepath.Join(wd, "img/disk.qcow2"), CreateDiskRequest: api.CreateDiskRequest{
		Name: "d1", Sku: "StandardSSD_LRS", LogicalSectorSize: 512, DiskEncryptionSet: "des1"}}, imp)

	_, _, err = runCLI(t, env, "-o", "json", "disk", "export", "--name", "d1", "--target", "/tmp/out.raw", "--force", "true")
	require.NoError(t, err)
	var exp api.ExportDiskRequest
	require.NoError(t, json.Unmarshal((*bodies)[1], &exp))
	assert.Equal(t, api.ExportDiskRequest{Target: "/tmp/out.raw", Force: true}, exp)
	assert.Equal(t, "POST /disks/d1/export", (*seen)[1])

	_, _, err = runCLI(t, env, "disk", "export", "--name", "busy", "--target", "/tmp/out.raw")
	require.ErrorContains(t, err, "stop it first")
	_, _, err = runCLI(t, env, "disk", "export", "--name", "fail", "--target", "/tmp/out.raw")
	require.ErrorContains(t, err, "disk full")
	_, _, err = runCLI(t, env, "disk", "import", "--name", "d1")
	require.ErrorContains(t, err, "--source is required")
	_, _, err = runCLI(t, env, "disk", "export", "--name", "d1", "--target", "/tmp/x", "--force")
	require.ErrorContains(t, err, "needs an argument")

	out, _, err = runCLI(t, nil, "disk", "--help")
	require.NoError(t, err)
	assert.Contains(t, out, "disk import")
	assert.Contains(t, out, "unencrypted")
}

func TestProgressBarWithoutTerminal(t *testing.T) {
	var buf bytes.Buffer
	p := newProgressBar(&buf, "importing d1")
	require.False(t, p.tty)
	p.update(1, 10)
	p.update(10, 10)
	p.finish()
	assert.Empty(t, buf.String(), "a short transfer prints nothing")

	p = newProgressBar(&buf, "importing d1")
	p.start = time.Now().Add(-time.Minute)
	p.update(5<<20, 10<<20)
	p.update(6<<20, 10<<20) // too soon after the last line
	p.finish()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 1)
	assert.Contains(t, lines[0], "importing d1: 50% (5.0 MiB of 10.0 MiB")
	assert.NotContains(t, buf.String(), "\r")
}

func TestProgressBarOnTerminal(t *testing.T) {
	var buf bytes.Buffer
	p := newProgressBar(&buf, "exporting d1")
	p.tty, p.every = true, 0
	p.update(0, 8<<20)
	p.update(2<<20, 8<<20)
	p.update(8<<20, 8<<20)
	p.finish()
	out := buf.String()
	assert.Equal(t, 3, strings.Count(out, "\r"), "the bar is redrawn in place")
	assert.Contains(t, out, "exporting d1 [#####...............]  25% 2.0 MiB of 8.0 MiB")
	assert.Contains(t, out, "[####################] 100% 8.0 MiB of 8.0 MiB")
	assert.True(t, strings.HasSuffix(out, "\n"), "finish ends the line")
}
