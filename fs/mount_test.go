package fs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

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

func TestAddImageErrors(t *testing.T) {
	tree := mountTree(t, Options{})
	require.NoError(t, tree.AddImage("vm", "os.img", newFake(t, 4096)))
	require.ErrorIs(t, tree.AddImage("vm", "os.img", newFake(t, 4096)), os.ErrExist)
	require.Error(t, tree.AddImage("vm", "../x", newFake(t, 4096)))
	require.Error(t, tree.AddImage("", "os.img", newFake(t, 4096)))
	require.Error(t, tree.AddImage("vm", "temp.img", nil))
	require.ErrorIs(t, tree.RemoveImage("vm", "temp.img"), os.ErrNotExist)
	require.ErrorIs(t, tree.RemoveImage("other", "os.img"), os.ErrNotExist)
	require.ErrorIs(t, tree.RemoveVM("other"), os.ErrNotExist)

	// A VM directory outlives its last image until RemoveVM.
	require.NoError(t, tree.RemoveImage("vm", "os.img"))
	require.Equal(t, []string{}, tree.Images("vm"))
	require.Equal(t, []string{"vm"}, tree.VMs())
	require.Equal(t, "4096 0o40755 0\n", python(t, statScript, tree.Dir()+"/vm"))

	// The same name can come back, as a new file.
	fake := newFake(t, 8192)
	require.NoError(t, tree.AddImage("vm", "os.img", fake))
	require.Equal(t, "8192 0o100600 0\n", python(t, statScript, imgPath(tree, "vm", "os.img")))
}

func TestOwnerOption(t *testing.T) {
	tree := mountTree(t, Options{UID: 107, GID: 108, AllowOther: true})
	require.NoError(t, tree.AddImage("vm", "os.img", newFake(t, 4096)))
	out := python(t, `
import os, sys
st = os.stat(sys.argv[1])
print(st.st_uid, st.st_gid, oct(st.st_mode))
`, imgPath(tree, "vm", "os.img"))
	require.Equal(t, "107 108 0o100600\n", out)
}

// TestConcurrentChanges drives the control API from many goroutines while
// another process walks the tree; run it with -race.
func TestConcurrentChanges(t *testing.T) {
	tree := mountTree(t, Options{})
	requireTool(t, "python3")
	walker := exec.Command(pythonPath(), "-c", `
import os, sys, time
end = time.time() + float(sys.argv[2])
n = 0
while time.time() < end:
    for root, dirs, files in os.walk(sys.argv[1]):
        for f in files:
            try:
                with open(os.path.join(root, f), "rb") as fh:
                    fh.read(4096)
            except OSError:
                pass
    n += 1
print(n)
`, tree.Dir(), "2")
	var out strings.Builder
	walker.Stdout = &out
	require.NoError(t, walker.Start())

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vm := fmt.Sprintf("vm%d", g%3)
			name := fmt.Sprintf("data-%d.img", g)
			deadline := time.Now().Add(1500 * time.Millisecond)
			for time.Now().Before(deadline) {
				if err := tree.AddImage(vm, name, newFake(t, 65536)); err != nil {
					t.Error(err)
					return
				}
				tree.Resized(vm, name)
				_ = tree.Images(vm)
				if g%4 == 0 {
					_ = tree.RemoveVM(vm) // may race with another goroutine's add
					continue
				}
				if err := tree.RemoveImage(vm, name); err != nil && !errors.Is(err, os.ErrNotExist) {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	require.NoError(t, walker.Wait())
	t.Logf("tree walked %s times", strings.TrimSpace(out.String()))
}

func TestInodeNumbers(t *testing.T) {
	tree := mountTree(t, Options{})
	require.NoError(t, tree.AddImage("vm", "os.img", newFake(t, 4096)))
	require.NoError(t, tree.AddImage("vm", "temp.img", newFake(t, 4096)))
	out := python(t, `
import os, sys
inos = [os.stat(p).st_ino for p in sys.argv[1:]]
print(0 not in inos, len(set(inos)) == len(inos))
`, tree.Dir(), tree.Dir()+"/vm", imgPath(tree, "vm", "os.img"), imgPath(tree, "vm", "temp.img"))
	require.Equal(t, "True True\n", out)
}
