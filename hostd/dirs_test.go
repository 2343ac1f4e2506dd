package hostd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hostcrypt/internal/testenv"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
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
	c := api.NewClient(filepath.Join(first.StateDir, "hostcryptd.sock"))
	ctx := context.Background()
	require.NoError(t, c.Do(ctx, "POST", "/vms", api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 16 << 20}, nil))
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
			var vm api.VM
			require.NoError(t, c.Do(ctx, "GET", "/vms/vm1", nil, &vm))
			require.Equal(t, api.PowerRunning, vm.PowerState)
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

// TestPlantedLinkAtChunk is the attack end to end: a link planted at a
// stopped VM's chunk, pointing out of the storage directory at a missing,
// an empty or a non-empty file. Starting the VM and reading and writing
// its disk create, write and read nothing out there, and no log line or
// answer holds a byte of the target.
func TestPlantedLinkAtChunk(t *testing.T) {
	requireFUSE(t)
	const secret = "SECRET-0123456789-never-in-a-log"
	ksURL, ksDir := startKeystore(t)
	for _, target := range []struct {
		name    string
		content *string
	}{
		{"missing", nil},
		{"empty", new("")},
		{"non-empty", new(secret)},
	} {
		t.Run(target.name, func(t *testing.T) {
			cfg := daemonConfig(t.TempDir(), ksURL, ksDir)
			logs := &testenv.Buffer{}
			cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
			// The disk engine logs to the default logger.
			prev := slog.Default()
			slog.SetDefault(cfg.Log)
			t.Cleanup(func() { slog.SetDefault(prev) })
			runDaemon(t, cfg)
			c := api.NewClient(filepath.Join(cfg.StateDir, "hostcryptd.sock"))
			ctx := context.Background()
			require.NoError(t, c.Do(ctx, "POST", "/vms", api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 16 << 20, OsDiskCaching: "None"}, nil))
			img := filepath.Join(cfg.MountDir, "vm1", "os.img")
			data := make([]byte, 1<<20)
			rand.Read(data)
			src := filepath.Join(t.TempDir(), "src")
			require.NoError(t, os.WriteFile(src, data, 0o600))
			dd := func(args ...string) ([]byte, error) {
				return exec.Command("dd", append(args, "status=none")...).CombinedOutput()
			}
			out, err := dd("if="+src, "of="+img, "bs=1M", "conv=notrunc,fsync")
			require.NoError(t, err, string(out))
			require.NoError(t, c.Do(ctx, "POST", "/vms/vm1/stop", nil, nil))

			var d api.Disk
			require.NoError(t, c.Do(ctx, "GET", "/disks/vm1_OsDisk", nil, &d))
			chunk := filepath.Join(cfg.StorageDir, filepath.FromSlash(d.StoragePrefix), "chunks", "00000000")
			require.FileExists(t, chunk)
			outside := t.TempDir()
			dst := filepath.Join(outside, "target")
			if target.content != nil {
				require.NoError(t, os.WriteFile(dst, []byte(*target.content), 0o600))
			}
			require.NoError(t, os.Remove(chunk))
			require.NoError(t, os.Symlink(dst, chunk))

			var answers []string
			if err := c.Do(ctx, "POST", "/vms/vm1/start", nil, nil); err != nil {
				answers = append(answers, err.Error())
			} else {
				// Started: the chunk is opened when the disk is used.
				out, err := dd("if="+img, "of=/dev/null", "bs=1M", "count=1", "iflag=direct")
				require.Error(t, err, "reading through the link")
				answers = append(answers, string(out))
				out, err = dd("if="+src, "of="+img, "bs=4k", "count=1", "conv=notrunc,fsync", "oflag=direct")
				require.Error(t, err, "writing through the link")
				answers = append(answers, string(out))
			}
			var vm api.VM
			require.NoError(t, c.Do(ctx, "GET", "/vms/vm1", nil, &vm))
			answers = append(answers, fmt.Sprintf("%+v", vm))

			entries, err := os.ReadDir(outside)
			require.NoError(t, err)
			if target.content == nil {
				require.Empty(t, entries, "no file is created out of the storage directory")
			} else {
				got, err := os.ReadFile(dst)
				require.NoError(t, err)
				require.Equal(t, *target.content, string(got), "the target is not written")
			}
			all := logs.String() + strings.Join(answers, "\n")
			for _, leak := range []string{secret[:8], hex.EncodeToString([]byte(secret[:8])), fmt.Sprintf("% x", secret[:8]), outside} {
				require.NotContains(t, all, leak)
			}
		})
	}
}
