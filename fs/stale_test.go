package fs

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary, started again by a test, mount a tree on
// the directory it names and serve it until killed: a daemon to kill.
const helperEnv = "HOSTCRYPT_FS_TEST_MOUNT"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(serveUntilKilled(dir))
	}
	os.Exit(m.Run())
}

func serveUntilKilled(dir string) int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tree, err := Mount(dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := tree.AddImage("vm", "os.img", &nullImage{size: 1 << 20}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	<-sig
	if err := tree.Unmount(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startDaemon mounts dir from a child process and returns it once the
// mount is serving.
func startDaemon(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("mount helper did not start: %v", err)
	}
	require.Equal(t, "ready\n", line)
	return cmd
}

func TestCleanStaleMount(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()
	daemon := startDaemon(t, dir)
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	mustRun(t, "stat", filepath.Join(dir, "vm", "os.img"))

	// A live mount is refused, and left alone.
	require.ErrorContains(t, CleanStaleMount(dir), "live fuse.hostcrypt mount")
	_, err := Mount(dir, Options{})
	require.ErrorContains(t, err, "already a live")
	mustRun(t, "stat", filepath.Join(dir, "vm", "os.img"))

	// The daemon dies without unmounting.
	require.NoError(t, daemon.Process.Signal(syscall.SIGKILL))
	_ = daemon.Wait()
	_, err = run(t, "stat", "-f", dir) // statfs: never answered from a cache
	require.ErrorContains(t, err, "Transport endpoint is not connected")
	_, err = Mount(dir, Options{})
	require.ErrorContains(t, err, "dead FUSE mount")

	require.NoError(t, CleanStaleMount(dir))
	requireNotMounted(t, dir)
	mustRun(t, "stat", dir)
	require.NoError(t, CleanStaleMount(dir), "an empty directory is fine")

	// The directory can be mounted again.
	tree, err := Mount(dir, Options{})
	require.NoError(t, err)
	require.NoError(t, tree.AddImage("vm", "os.img", newFake(t, 4096)))
	require.Equal(t, "4096 0o100600 0\n", python(t, statScript, filepath.Join(dir, "vm", "os.img")))
	require.NoError(t, tree.Unmount())
	requireNotMounted(t, dir)
}

func TestCleanStaleMountTerm(t *testing.T) {
	// A daemon stopped cleanly leaves nothing to clean.
	requireFUSE(t)
	dir := t.TempDir()
	daemon := startDaemon(t, dir)
	require.NoError(t, daemon.Process.Signal(syscall.SIGTERM))
	require.NoError(t, daemon.Wait())
	requireNotMounted(t, dir)
	require.NoError(t, CleanStaleMount(dir))
}

func TestCleanStaleMountPlainDirs(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, CleanStaleMount(dir))
	require.NoError(t, CleanStaleMount(filepath.Join(dir, "missing")))

	require.NoError(t, os.WriteFile(filepath.Join(dir, "file"), nil, 0o600))
	require.ErrorContains(t, CleanStaleMount(dir), "not empty")
	require.FileExists(t, filepath.Join(dir, "file"))

	require.ErrorContains(t, CleanStaleMount(filepath.Join(dir, "file")), "not a directory")
}

func TestMountPreconditions(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()

	_, err := Mount(filepath.Join(dir, "missing"), Options{})
	require.ErrorContains(t, err, "does not exist")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "file"), nil, 0o600))
	_, err = Mount(filepath.Join(dir, "file"), Options{})
	require.ErrorContains(t, err, "not a directory")
	_, err = Mount(dir, Options{})
	require.ErrorContains(t, err, "not empty")

	tree := mountTree(t, Options{})
	_, err = Mount(tree.Dir(), Options{})
	require.ErrorContains(t, err, "already a live fuse.hostcrypt mount")
}

func TestUnmount(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()
	tree, err := Mount(dir, Options{})
	require.NoError(t, err)
	_, mounted, err := mountedAt(dir)
	require.NoError(t, err)
	require.True(t, mounted)
	require.NoError(t, tree.AddImage("vm", "os.img", newFake(t, 4096)))

	// Busy while an image is open.
	requireTool(t, "python3")
	hold := exec.Command(pythonPath(), "-c", "import sys; f = open(sys.argv[1], 'rb'); print('open', flush=True); sys.stdin.readline()", filepath.Join(dir, "vm", "os.img"))
	stdin, err := hold.StdinPipe()
	require.NoError(t, err)
	stdout, err := hold.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, hold.Start())
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	require.Equal(t, "open\n", line)
	require.ErrorIs(t, tree.Unmount(), syscall.EBUSY)
	mustRun(t, "stat", filepath.Join(dir, "vm", "os.img"))
	_, _ = stdin.Write([]byte("\n"))
	require.NoError(t, hold.Wait())

	require.NoError(t, tree.Unmount())
	tree.Wait()
	requireNotMounted(t, dir)
	require.NoError(t, tree.Unmount(), "a second Unmount is a no-op")
	require.ErrorIs(t, tree.AddImage("vm", "temp.img", newFake(t, 4096)), ErrUnmounted)
}

// nullImage reads zeros and drops writes: the cheapest possible engine, for
// measuring what the FUSE layer itself costs.
type nullImage struct{ size int64 }

func (n *nullImage) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}
func (n *nullImage) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (n *nullImage) Discard(off, len int64) error             { return nil }
func (n *nullImage) Sync() error                              { return nil }
func (n *nullImage) Size() int64                              { return n.size }

// TestNoDescriptorLeak checks that a process started after the mount does
// not inherit the FUSE connection: it could serve the mount itself, and it
// would keep a dead daemon's mount hanging instead of failing.
func TestNoDescriptorLeak(t *testing.T) {
	tree := mountTree(t, Options{})
	require.NoError(t, tree.AddImage("vm", "os.img", newFake(t, 4096)))
	out := mustRun(t, "sh", "-c", `ls -l /proc/$$/fd/; true`)
	require.NotContains(t, out, "/dev/fuse")
}

// TestFusermountPath mounts through the fusermount helper, the way a
// non-root daemon (or a failed direct mount) does.
func TestFusermountPath(t *testing.T) {
	requireTool(t, "fusermount3")
	tree := mountTree(t, Options{helperOnly: true})
	require.NoError(t, tree.AddImage("vm", "os.img", newFake(t, 4096)))
	require.Equal(t, "4096 0o100600 0\n", python(t, statScript, imgPath(tree, "vm", "os.img")))
	out := mustRun(t, "sh", "-c", `ls -l /proc/$$/fd/; true`)
	require.NotContains(t, out, "/dev/fuse")
}

func TestUnmountedFromOutside(t *testing.T) {
	requireRoot(t)
	requireFUSE(t)
	dir := t.TempDir()
	tree, err := Mount(dir, Options{})
	require.NoError(t, err)
	mustRun(t, "umount", dir)
	tree.Wait()
	require.ErrorIs(t, tree.AddImage("vm", "os.img", newFake(t, 4096)), ErrUnmounted)
	require.NoError(t, tree.Unmount())
	requireNotMounted(t, dir)
}
