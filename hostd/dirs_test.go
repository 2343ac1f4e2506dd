package hostd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/control"
	"hostcrypt/internal/dirfd"
	"hostcrypt/internal/dirlock"
	"hostcrypt/keystore/server"
)

// runDaemon runs hostcryptd in-process with cfg until the test ends; stop
// ends it earlier and returns Run's result.
func runDaemon(t *testing.T, cfg Config) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan struct{})
	var runErr error
	go func() { runErr = Run(ctx, cfg, func() { close(ready) }); close(done) }()
	select {
	case <-ready:
	case <-done:
		t.Fatalf("hostcryptd did not start: %v", runErr)
	case <-time.After(30 * time.Second):
		t.Fatal("hostcryptd did not get ready")
	}
	stop = func() error {
		cancel()
		<-done
		return runErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

func startKeystore(t *testing.T) (url, dir string) {
	dir = t.TempDir()
	ks, err := server.Open(server.Config{Dir: dir, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	go ks.Serve()
	t.Cleanup(func() { ks.Shutdown(context.Background()) })
	return ks.BaseURL(), dir
}

func daemonConfig(root, ksURL, ksDir string) Config {
	return Config{
		StateDir: filepath.Join(root, "state"), StorageDir: filepath.Join(root, "storage"),
		HostDir: filepath.Join(root, "host"), MountDir: filepath.Join(root, "mnt"),
		KeystoreURL: ksURL, KeystoreCA: filepath.Join(ksDir, "ca.pem"), TokenFile: filepath.Join(ksDir, "platform.token"),
	}
}

// TestSecondDaemonIsRefused starts a daemon, then a second one sharing
// each of --state, --storage and --host-dir in turn: each is refused,
// naming the flag, the directory and the holder, and the first keeps
// serving its VM.
func TestSecondDaemonIsRefused(t *testing.T) {
	requireFUSE(t)
	ksURL, ksDir := startKeystore(t)
	first := daemonConfig(t.TempDir(), ksURL, ksDir)
	runDaemon(t, first)
	c := control.NewClient(filepath.Join(first.StateDir, "hostcryptd.sock"))
	ctx := context.Background()
	require.NoError(t, c.Do(ctx, "POST", "/vms", control.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 16 << 20}, nil))
	img := filepath.Join(first.MountDir, "vm1", "os.img")
	// I/O on the mount from another process: a test reading its own
	// mount can deadlock.
	src := filepath.Join(t.TempDir(), "src")
	require.NoError(t, os.WriteFile(src, []byte("first daemon's"), 0o600))
	out, err := exec.Command("dd", "if="+src, "of="+img, "conv=notrunc,fsync", "status=none").CombinedOutput()
	require.NoError(t, err, string(out))
	state, err := os.ReadFile(filepath.Join(first.StateDir, "state.json"))
	require.NoError(t, err)

	for _, shared := range []string{"--state", "--storage", "--host-dir"} {
		t.Run(shared, func(t *testing.T) {
			second := daemonConfig(t.TempDir(), ksURL, ksDir)
			var dir string
			switch shared {
			case "--state":
				second.StateDir, dir = first.StateDir, first.StateDir
			case "--storage":
				second.StorageDir, dir = first.StorageDir, first.StorageDir
			case "--host-dir":
				second.HostDir, dir = first.HostDir, first.HostDir
			}
			// Were it let in, it would serve until cancelled: cancel it
			// once it is ready, so that the test fails instead of hanging.
			rctx, cancel := context.WithCancel(ctx)
			defer cancel()
			err := Run(rctx, second, cancel)
			require.ErrorIs(t, err, dirlock.ErrLocked)
			require.Contains(t, err.Error(), shared)
			require.Contains(t, err.Error(), dir)
			require.Contains(t, err.Error(), fmt.Sprintf("pid %d", os.Getpid()))

			// The first daemon is untouched: its socket answers, its VM
			// runs, its image reads back, its state is as it was.
			var vm control.VM
			require.NoError(t, c.Do(ctx, "GET", "/vms/vm1", nil, &vm))
			require.Equal(t, control.PowerRunning, vm.PowerState)
			got, err := exec.Command("dd", "if="+img, "bs=14", "count=1", "status=none").Output()
			require.NoError(t, err)
			require.Equal(t, "first daemon's", string(got))
			now, err := os.ReadFile(filepath.Join(first.StateDir, "state.json"))
			require.NoError(t, err)
			require.Equal(t, state, now)
			_, err = os.Stat(second.MountDir)
			require.ErrorIs(t, err, os.ErrNotExist, "the refused daemon mounted nothing")
		})
	}
}

// TestOneDirectoryForTwoFlags: the same directory given twice is locked
// once, not refused by the daemon's own lock.
func TestOneDirectoryForTwoFlags(t *testing.T) {
	dir := t.TempDir()
	release, err := lockDirs(Config{StateDir: dir, StorageDir: dir, HostDir: dir})
	require.NoError(t, err)
	_, err = dirlock.Acquire(dir)
	require.ErrorIs(t, err, dirlock.ErrLocked, "the directory is locked")
	release()
	l, err := dirlock.Acquire(dir)
	require.NoError(t, err, "release frees it")
	require.NoError(t, l.Release())
}

// TestLinkedHostCacheDirIsRefused: HOST/cache replaced by a link while the
// daemon was down would put every host cache wherever it points.
func TestLinkedHostCacheDirIsRefused(t *testing.T) {
	requireFUSE(t)
	root, outside := t.TempDir(), t.TempDir()
	cfg := daemonConfig(root, "https://127.0.0.1:1", root)
	require.NoError(t, os.MkdirAll(cfg.HostDir, 0o700))
	require.NoError(t, os.Symlink(outside, filepath.Join(cfg.HostDir, "cache")))
	err := Run(context.Background(), cfg, nil)
	require.ErrorIs(t, err, dirfd.ErrNotRegular)
	require.Contains(t, err.Error(), filepath.Join(cfg.HostDir, "cache"))
	require.NotContains(t, err.Error(), outside)
	entries, err := os.ReadDir(outside)
	require.NoError(t, err)
	require.Empty(t, entries)
}
