package fs

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// statScript prints, for each path, "size mode uid" or the errno name.
const statScript = `
import errno, os, sys
for p in sys.argv[1:]:
    try:
        st = os.stat(p)
        print(st.st_size, oct(st.st_mode), st.st_uid)
    except OSError as e:
        print(errno.errorcode[e.errno])
`

func TestImagesAppearAndDisappearAtOnce(t *testing.T) {
	tree := mountTree(t, Options{})
	img := imgPath(tree, "vm1", "os.img")
	data := imgPath(tree, "vm1", "data-0.img")

	// Looked up before they exist: the kernel caches the failures.
	require.Equal(t, "ENOENT\nENOENT\n", python(t, statScript, img, data))

	require.NoError(t, tree.AddImage("vm1", "os.img", newFake(t, 1<<20)))
	require.Equal(t, "1048576 0o100600 0\nENOENT\n", python(t, statScript, img, data))
	require.NoError(t, tree.AddImage("vm1", "data-0.img", newFake(t, 2<<20)))
	require.Equal(t, "1048576 0o100600 0\n2097152 0o100600 0\n", python(t, statScript, img, data))
	require.Equal(t, []string{"data-0.img", "os.img"}, tree.Images("vm1"))
	require.Equal(t, "data-0.img\nos.img\n", mustRun(t, "ls", "-1", tree.Dir()+"/vm1"))
	require.Equal(t, "4096 0o40755 0\n", python(t, statScript, tree.Dir()+"/vm1"))

	require.NoError(t, tree.RemoveImage("vm1", "os.img"))
	require.Equal(t, "ENOENT\n2097152 0o100600 0\n", python(t, statScript, img, data))
	require.Equal(t, []string{"data-0.img"}, tree.Images("vm1"))

	require.NoError(t, tree.RemoveVM("vm1"))
	require.Equal(t, "ENOENT\nENOENT\n", python(t, statScript, data, tree.Dir()+"/vm1"))
	require.Nil(t, tree.Images("vm1"))
	require.Equal(t, "", strings.TrimSpace(mustRun(t, "ls", "-A", tree.Dir())))
}
