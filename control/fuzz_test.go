package control

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/control/keys/keystest"
	hfs "hostcrypt/fs"
	"hostcrypt/storage/local"
)

// FuzzHandlers sends arbitrary methods, paths and bodies to the control
// API's handler of a host with disks, a running VM, a disk encryption set,
// a snapshot and an image: every answer must be a JSON envelope below 500,
// without a panic or an exit. Paths to files on the host (import, export)
// must stay inside the fuzzer's own directory.
func FuzzHandlers(f *testing.F) {
	root := f.TempDir()
	sb, err := local.Open(filepath.Join(root, "storage"))
	require.NoError(f, err)
	hb, err := local.Open(filepath.Join(root, "host"))
	require.NoError(f, err)
	files := filepath.Join(root, "files")
	require.NoError(f, os.MkdirAll(files, 0o700))
	src := filepath.Join(files, "src.raw")
	require.NoError(f, os.WriteFile(src, bytes.Repeat([]byte("image data"), 1<<10), 0o600))
	tree := &fakeTree{images: map[string]hfs.Image{}}
	cfg := Config{StateDir: filepath.Join(root, "state"), Storage: sb, HostLocal: hb,
		Keys: keystest.New().AutoGrant(), Tree: tree,
		CacheDir: filepath.Join(root, "host", "cache"), CacheSize: 8 << 20,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	h, err := New(cfg)
	require.NoError(f, err)
	h.Recover(context.Background())
	f.Cleanup(func() { h.Shutdown() })
	handler := Handler(h)
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/des", `{"name":"des1","keyUrl":"https://127.0.0.1:8443/vaults/vault1/keys/k/0123abcd"}`},
		{"POST", "/disks", `{"name":"d1","sizeBytes":8388608}`},
		{"POST", "/disks", `{"name":"d2","sizeBytes":8388608}`},
		{"POST", "/vms", `{"name":"vm1","osDiskSizeBytes":8388608,"dataDisks":[{"name":"d1"}],"tempDiskSizeBytes":1048576}`},
		{"POST", "/snapshots", `{"name":"s1","source":"d1"}`},
		{"POST", "/images", `{"name":"i1","source":"s1"}`},
	} {
		code, body := apiCall(f, handler, r.method, r.path, r.body)
		require.Equal(f, http.StatusOK, code, body)
	}
	// The seed corpus is testdata/fuzz/FuzzHandlers: a request for every
	// route, valid and not, with sizes at and past every bound. In a body,
	// SRC names an image file to import and DIR a directory to export to.
	paths := strings.NewReplacer("SRC", src, "DIR", files)
	methods := map[string]bool{"GET": true, "PUT": true, "POST": true, "PATCH": true, "DELETE": true}
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		if !methods[method] || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#") {
			return
		}
		body = []byte(paths.Replace(string(body)))
		if _, err := url.ParseRequestURI(path); err != nil {
			return // not a request a client can send
		}
		if !pathsInside(body, files) {
			return // the daemon is root: it reads and writes what it is told
		}
		code, resp := apiCall(t, handler, method, path, string(body))
		if code >= 500 {
			t.Fatalf("%s %s %q: status %d: %s", method, path, body, code, resp)
		}
		if code >= 400 {
			var env struct {
				Error struct {
					Code    string `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(resp), &env); err != nil || env.Error.Code == "" || env.Error.Message == "" {
				t.Fatalf("%s %s: status %d without an error envelope: %s", method, path, code, resp)
			}
		}
	})
}

// pathsInside tells whether every string in the first JSON value of body
// that names an absolute path names one inside dir. A body that is not
// JSON names none.
func pathsInside(body []byte, dir string) bool {
	var v any
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&v); err != nil {
		return true
	}
	ok := true
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			if strings.HasPrefix(v, "/") && !strings.HasPrefix(filepath.Clean(v), dir+"/") {
				ok = false
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		case map[string]any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(v)
	return ok
}
