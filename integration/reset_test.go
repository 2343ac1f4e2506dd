package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// makeReset runs `make reset` on the VAR directory vr.
func makeReset(t *testing.T, vr string) (string, error) {
	t.Helper()
	out, err := exec.Command("make", "-C", "..", "-s", "reset", "VAR="+vr).CombinedOutput()
	return string(out), err
}

// TestMakeReset removes VAR only when nothing under it is mounted or
// attached to a loop device, and says what holds it.
func TestMakeReset(t *testing.T) {
	requireFUSE(t) // root: mounts and loop devices
	vr := filepath.Join(t.TempDir(), "var dir")
	mnt := filepath.Join(vr, "mnt")
	require.NoError(t, os.MkdirAll(mnt, 0o700))
	img := filepath.Join(vr, "storage", "disk.img")
	require.NoError(t, os.MkdirAll(filepath.Dir(img), 0o700))
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o600))

	sh(t, "mount -t tmpfs none '"+mnt+"'")
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	out, err := makeReset(t, vr)
	require.Error(t, err, out)
	require.Contains(t, out, "mounted: "+mnt)
	require.DirExists(t, vr, "nothing is removed while it is in use")
	sh(t, "umount '"+mnt+"'")

	loop := attachLoop(t, img)
	out, err = makeReset(t, vr)
	require.Error(t, err, out)
	require.Contains(t, out, "loop device: "+loop+" on "+img)
	require.FileExists(t, img)
	// Not sh: a test elsewhere that detaches its device twice may have
	// detached this one already.
	exec.Command("losetup", "-d", loop).Run()

	out, err = makeReset(t, vr)
	require.NoError(t, err, out)
	require.Equal(t, "reset: removed "+vr+"\n", out, "nothing else, even when a process ends while it looks")
	require.NoDirExists(t, vr)

	out, err = makeReset(t, vr)
	require.NoError(t, err, out)
	require.Contains(t, out, "nothing to remove")
}
