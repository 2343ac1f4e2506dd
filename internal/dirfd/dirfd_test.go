package dirfd

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestOpenFileRefusesAllButRegularFiles(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	target := filepath.Join(outside, "target")
	require.NoError(t, os.Symlink(target, filepath.Join(dir, "link")))
	require.NoError(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "sub"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o600))
	d, err := Open(dir)
	require.NoError(t, err)
	defer d.Close()

	for _, name := range []string{"link", "fifo", "sub"} {
		for _, flag := range []int{os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_CREATE | os.O_TRUNC} {
			f, err := d.OpenFile(name, flag, 0o600)
			require.Nil(t, f)
			require.ErrorIs(t, err, ErrNotRegular, "%s with flags %#x", name, flag)
			require.Contains(t, err.Error(), filepath.Join(dir, name))
			require.NotContains(t, err.Error(), outside)
		}
	}
	_, err = os.Lstat(target)
	require.ErrorIs(t, err, fs.ErrNotExist, "no file is created through the link")

	f, err := d.OpenFile("file", os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("y"), 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	_, err = d.OpenFile("missing", os.O_RDONLY, 0)
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = d.OpenFile("../file", os.O_RDONLY, 0)
	require.Error(t, err, "one segment only")

	// Remove takes the link away, not what it points to.
	require.NoError(t, os.WriteFile(target, []byte("kept"), 0o600))
	require.NoError(t, d.Remove("link"))
	got, err := os.ReadFile(target)
	require.NoError(t, err)
	require.Equal(t, "kept", string(got))
	require.NoError(t, d.CheckRegular("file"))
	require.NoError(t, d.CheckRegular("missing"))
	require.ErrorIs(t, d.CheckRegular("fifo"), ErrNotRegular)
}

func TestOpenLeaf(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	d, err := OpenLeaf(filepath.Join(root, "a", "b"), true)
	require.NoError(t, err)
	require.NoError(t, d.Close())
	fi, err := os.Stat(filepath.Join(root, "a", "b"))
	require.NoError(t, err)
	require.Equal(t, os.ModeDir|0o700, fi.Mode())

	_, err = OpenLeaf(filepath.Join(root, "none"), false)
	require.ErrorIs(t, err, fs.ErrNotExist)

	require.NoError(t, os.Symlink(outside, filepath.Join(root, "link")))
	for _, create := range []bool{false, true} {
		_, err = OpenLeaf(filepath.Join(root, "link"), create)
		require.ErrorIs(t, err, ErrNotRegular)
		require.NotContains(t, err.Error(), outside)
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "file"), nil, 0o600))
	_, err = OpenLeaf(filepath.Join(root, "file"), true)
	require.ErrorIs(t, err, unix.ENOTDIR)
}
