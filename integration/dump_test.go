package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/internal/nodump"
	"hostcrypt/internal/nodump/dumptest"
)

// TestDaemonsLeaveNoCore crashes keystored and hostcryptd, each holding
// keys, with SIGABRT under GOTRACEBACK=crash, where an unprotected process
// (this test binary) does dump core: neither daemon leaves one.
func TestDaemonsLeaveNoCore(t *testing.T) {
	dumptest.Helper(nodump.Protect)
	b := bins(t)
	dumptest.Prepare(t)
	ctl := dumptest.Control(t, t.TempDir(), "TestDaemonsLeaveNoCore")
	dumptest.RequireControlDumped(t, ctl)

	t.Run("keystored", func(t *testing.T) {
		dir, ksDir := t.TempDir(), filepath.Join(t.TempDir(), "ks")
		cmd := dumptest.Command(dir, filepath.Join(b, "keystored"), "--dir", ksDir, "--listen", "127.0.0.1:0")
		require.NoError(t, cmd.Start())
		waitFor(t, 20*time.Second, "keystored to serve", func() bool {
			_, err := os.Stat(filepath.Join(ksDir, "address"))
			return err == nil
		})
		got := dumptest.Abort(t, cmd)
		require.False(t, got.Dumped, "keystored dumped core")
		require.Empty(t, got.Files)
	})

	t.Run("hostcryptd", func(t *testing.T) {
		requireFUSE(t)
		ks := startKeystore(t)
		dir, root := t.TempDir(), t.TempDir()
		mnt, state := filepath.Join(root, "mnt"), filepath.Join(root, "state")
		cmd := dumptest.Command(dir, filepath.Join(b, "hostcryptd"), "--state", state,
			"--storage", filepath.Join(root, "storage"), "--host-dir", filepath.Join(root, "host"), "--mount", mnt,
			"--keystore", ks.url, "--keystore-ca", filepath.Join(ks.dir, "ca.pem"),
			"--token-file", filepath.Join(ks.dir, "platform.token"))
		require.NoError(t, cmd.Start())
		// The crash leaves the mount dead; detach it.
		t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
		cli := func(args ...string) (string, int) {
			_, errOut, code := runCmd(filepath.Join(b, "hostcrypt"), append([]string{"--host-socket", filepath.Join(state, "hostcryptd.sock"),
				"--keystore", ks.url, "--keystore-ca", filepath.Join(ks.dir, "ca.pem"), "--token-file", filepath.Join(ks.dir, "admin.token")},
				args...)...)
			return errOut, code
		}
		// The tree is mounted before the API socket listens: wait for both.
		waitFor(t, 30*time.Second, "hostcryptd to serve its API", func() bool {
			_, code := cli("vm", "list")
			return code == 0 && isMounted(mnt)
		})
		// A VM running: a data key in memory.
		errOut, code := cli("vm", "create", "--name", "vm1", "--os-disk-size", "16M")
		require.Zero(t, code, errOut)
		got := dumptest.Abort(t, cmd)
		require.False(t, got.Dumped, "hostcryptd dumped core")
		require.Empty(t, got.Files)
	})
}
