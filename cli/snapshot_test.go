package cli

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
)

// A copy that takes a while is polled for progress while the call runs; the
// endpoints are resolved from the environment by the two goroutines at
// once, which -race checks.
func TestSnapshotCreatePollsProgress(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	var polls atomic.Int64
	var body api.CreateSnapshotRequest
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "POST" && r.URL.Path == "/snapshots":
			json.NewDecoder(r.Body).Decode(&body)
			time.Sleep(700 * time.Millisecond)
			w.Write([]byte(`{"name":"s1","sourceDisk":"d1","incremental":true,"chunksCopied":2}`))
		case r.URL.Path == "/progress/snapshots/s1":
			polls.Add(1)
			w.Write([]byte(`{"operation":"snapshot of disk d1","done":1048576,"total":4194304}`))
		default:
			w.WriteHeader(404)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	out, _, err := runCLI(t, map[string]string{"HOSTCRYPT_SOCKET": sock}, "-o", "json", "snapshot", "create",
		"--name", "s1", "--source", "d1", "--incremental")
	require.NoError(t, err)
	assert.Equal(t, api.CreateSnapshotRequest{Name: "s1", Source: "d1", Incremental: true}, body)
	assert.Contains(t, out, `"chunksCopied": 2`)
	assert.Positive(t, polls.Load(), "the progress was never asked for")
}
