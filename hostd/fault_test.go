package hostd

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
	"hostcrypt/storage"
	"hostcrypt/storage/fault"
)

// TestStorageFaultsReachTheGuest runs the daemon in-process over a
// fault-injecting storage decorator and checks that what it injects
// reaches a writer of a mounted disk: the way a test arms storage faults
// under a running daemon (hostcryptd's flags cannot).
func TestStorageFaultsReachTheGuest(t *testing.T) {
	requireFUSE(t)
	ksURL, ksDir := startKeystore(t)
	cfg := daemonConfig(t.TempDir(), ksURL, ksDir)
	var fb *fault.Backend
	cfg.WrapStorage = func(b storage.Backend) storage.Backend {
		fb = fault.New(b, 1)
		return fb
	}
	runDaemon(t, cfg)
	require.NotNil(t, fb)
	c := api.NewClient(filepath.Join(cfg.StateDir, "hostcryptd.sock"))
	ctx := context.Background()
	// Not zeros: the engine stores nothing for a block of zeros.
	data := make([]byte, 1<<20)
	rand.Read(data)
	src := filepath.Join(t.TempDir(), "src")
	require.NoError(t, os.WriteFile(src, data, 0o600))
	// dd writes from another process: a test doing I/O on its own mount
	// can deadlock.
	write := func(vm string, seekMiB int) error {
		out, err := exec.Command("dd", "if="+src, "of="+filepath.Join(cfg.MountDir, vm, "os.img"), "bs=1M",
			"seek="+strconv.Itoa(seekMiB), "oflag=direct", "conv=notrunc,fsync", "status=none").CombinedOutput()
		if err != nil {
			t.Logf("dd on %s: %s", vm, out)
		}
		return err
	}

	// The disks have no host cache, which would take the guest's writes
	// and syncs on the host. First, a failing sync.
	require.NoError(t, c.Do(ctx, "POST", "/vms", api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 16 << 20, OsDiskCaching: "None"}, nil))
	require.NoError(t, write("vm1", 0))
	f := fb.Arm(fault.Rule{Ops: fault.Sync, Err: syscall.EIO})
	require.Error(t, write("vm1", 1), "the guest's fsync fails when storage's does")
	require.Positive(t, f.Injected())
	f.Disarm()

	// A full store.
	require.NoError(t, c.Do(ctx, "POST", "/vms", api.CreateVMRequest{Name: "vm2", OsDiskSizeBytes: 16 << 20, OsDiskCaching: "None"}, nil))
	require.NoError(t, write("vm2", 0))
	fb.SetFull(true)
	require.Error(t, write("vm2", 4), "a write needing new space fails")
	fb.SetFull(false)
}
