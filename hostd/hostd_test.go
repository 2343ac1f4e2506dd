package hostd

import (
	"bytes"
	"context"
	"crypto/rand"
	"hostcrypt/internal/testenv"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
	"hostcrypt/keystore/hostkeys"
)

// requireFUSE: the daemon mounts, as root (package testenv).
var requireFUSE = testenv.RequireDaemonMount

// TestRunServesImages starts the daemon in-process against a real key store
// over TLS, creates a VM through the control socket, writes its image from
// another process and reads it back after a restart.
func TestRunServesImages(t *testing.T) {
	requireFUSE(t)
	ksURL, ksDir := startKeystore(t)
	cfg := daemonConfig(t.TempDir(), ksURL, ksDir)
	cfg.Socket = filepath.Join(cfg.StateDir, "hostcryptd.sock")
	start := func() (stop func() error) { return runDaemon(t, cfg) }
	stop := start()
	c := api.NewClient(cfg.Socket)
	ctx := context.Background()
	vm, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 16 << 20, TempDiskSize: 8 << 20})
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)

	img := filepath.Join(cfg.MountDir, "vm1", "os.img")
	pattern := make([]byte, 1<<20)
	rand.Read(pattern)
	src := filepath.Join(t.TempDir(), "pattern")
	require.NoError(t, os.WriteFile(src, pattern, 0o600))
	out, err := exec.Command("dd", "if="+src, "of="+img, "bs=64k", "seek=1", "conv=notrunc,fsync", "oflag=direct", "status=none").CombinedOutput()
	require.NoError(t, err, string(out))

	d, err := c.ShowDisk(ctx, "vm1_OsDisk")
	require.NoError(t, err)
	require.Contains(t, d.KeyID, "/vaults/platform/keys/"+hostkeys.PlatformKeyName+"/", "the data key is wrapped by a versioned platform key")

	// A clean stop unmounts; a restart brings the VM back running.
	require.NoError(t, stop())
	_, err = os.Stat(img)
	require.Error(t, err)
	start()
	got, err := exec.Command("dd", "if="+img, "bs=64k", "skip=1", "count=16", "iflag=direct", "status=none").Output()
	require.NoError(t, err)
	require.True(t, bytes.Equal(pattern, got))
}

// TestRunRefusesBadSetups: clear errors, nothing mounted.
func TestRunRefusesBadSetups(t *testing.T) {
	requireFUSE(t)
	root := t.TempDir()
	base := Config{
		StateDir: filepath.Join(root, "state"), StorageDir: filepath.Join(root, "storage"),
		HostDir: filepath.Join(root, "host"), MountDir: filepath.Join(root, "mnt"),
		KeystoreURL: "https://127.0.0.1:1", KeystoreCA: filepath.Join(root, "ca.pem"), TokenFile: filepath.Join(root, "token"),
	}
	cfg := base
	cfg.TokenFile = ""
	require.ErrorContains(t, Run(context.Background(), cfg, nil), "--token-file is required")

	cfg = base
	cfg.CacheSize = 4096
	require.ErrorContains(t, Run(context.Background(), cfg, nil), "--cache-size")

	for _, every := range []time.Duration{time.Millisecond, time.Hour} {
		cfg = base
		cfg.FlushInterval = every
		require.ErrorContains(t, Run(context.Background(), cfg, nil), "--flush-interval")
	}

	// A host identity is for a pool that several hosts share.
	cfg = base
	cfg.HostTokenFile = filepath.Join(root, "host.token")
	require.ErrorContains(t, Run(context.Background(), cfg, nil), "--host-token-file and --adopt-unsealed-records are for a rados:// pool")
	cfg = base
	cfg.AdoptUnsealedRecords = true
	require.ErrorContains(t, Run(context.Background(), cfg, nil), "rados://")

	cfg = base
	cfg.OnKeyExpiry = "later"
	require.ErrorContains(t, Run(context.Background(), cfg, nil), "--on-key-expiry")

	for _, d := range []time.Duration{-time.Second, time.Millisecond, time.Hour} {
		cfg = base
		cfg.KeystoreTimeout = d
		require.ErrorContains(t, Run(context.Background(), cfg, nil), "--keystore-timeout")
	}

	// A mount point with files in it is refused.
	cfg = base
	require.NoError(t, os.MkdirAll(cfg.MountDir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(cfg.MountDir, "x"), nil, 0o600))
	require.Error(t, Run(context.Background(), cfg, nil))
	require.NoError(t, os.Remove(filepath.Join(cfg.MountDir, "x")))

	// An unreachable or untrusted key store is refused.
	require.NoError(t, os.WriteFile(cfg.KeystoreCA, []byte("not a certificate"), 0o600))
	require.NoError(t, os.WriteFile(cfg.TokenFile, []byte("t"), 0o600))
	err := Run(context.Background(), cfg, nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "key store")

	// --metrics: a non-loopback address is refused without
	// --metrics-allow-remote; a start that fails later closes the listener.
	mcfg := cfg
	mcfg.Metrics = "0.0.0.0:0"
	require.ErrorContains(t, Run(context.Background(), mcfg, nil), "--metrics-allow-remote")
	mcfg.Metrics = "127.0.0.1:0"
	var served string
	mcfg.MetricsReady = func(addr string) { served = addr }
	require.ErrorContains(t, Run(context.Background(), mcfg, nil), "key store")
	require.NotEmpty(t, served)
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", served)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 5*time.Second, 10*time.Millisecond, "the metrics listener outlived the failed start")
}

// Whatever ends the daemon, its last log line says that it stopped, and
// why when it failed.
func TestRunSaysItStopped(t *testing.T) {
	requireFUSE(t)
	root := t.TempDir()
	notADir := filepath.Join(root, "file")
	require.NoError(t, os.WriteFile(notADir, nil, 0o600))
	var logs bytes.Buffer
	cfg := Config{
		StateDir: filepath.Join(root, "state"), StorageDir: notADir, HostDir: filepath.Join(root, "host"),
		MountDir: filepath.Join(root, "mnt"), KeystoreURL: "https://127.0.0.1:1", KeystoreCA: "ca.pem", TokenFile: "token",
		Log: slog.New(slog.NewTextHandler(&logs, nil)),
	}
	err := Run(context.Background(), cfg, nil)
	require.Error(t, err)
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	last := lines[len(lines)-1]
	require.Contains(t, last, "hostcryptd stopped")
	require.Contains(t, last, "level=ERROR")
	require.Contains(t, last, "not a directory")
}
