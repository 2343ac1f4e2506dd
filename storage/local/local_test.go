package local_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
	"hostcrypt/storage/storagetest"
)

func open(t *testing.T) storage.Backend {
	b, err := local.Open(filepath.Join(t.TempDir(), "store"))
	require.NoError(t, err)
	return b
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, open, storagetest.Options{
		Reopen: func(t *testing.T, b storage.Backend) storage.Backend {
			b2, err := local.Open(b.(*local.Backend).Dir())
			require.NoError(t, err)
			return b2
		},
		Foreign: PlantSymlink,
	})
}

// PlantSymlink puts a symbolic link out of the store at key's place in the
// directory of the local backend b (or of the one b wraps), as
// storagetest.Options.Foreign.
func PlantSymlink(t *testing.T, b storage.Backend, key string) {
	p := filepath.Join(dirOf(b), filepath.FromSlash(key))
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
	require.NoError(t, os.Symlink(filepath.Join(t.TempDir(), "elsewhere"), p))
}

// PlantFIFO puts a FIFO at key's place, as storagetest.Options.Foreign.
func PlantFIFO(t *testing.T, b storage.Backend, key string) {
	p := filepath.Join(dirOf(b), filepath.FromSlash(key))
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
	require.NoError(t, unix.Mkfifo(p, 0o600))
}

func dirOf(b storage.Backend) string {
	for {
		switch v := b.(type) {
		case *local.Backend:
			return v.Dir()
		case interface{ Unwrap() storage.Backend }:
			b = v.Unwrap()
		default:
			panic(fmt.Sprintf("no local backend under %T", b))
		}
	}
}

func TestPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "store")
	b, err := local.Open(dir)
	require.NoError(t, err)
	defer b.Close()
	ctx := t.Context()
	require.NoError(t, b.WriteMeta(ctx, "disks/d1/meta", []byte("m")))
	c, err := b.OpenChunk(ctx, "disks/d1/chunks/0", true)
	require.NoError(t, err)
	require.NoError(t, c.Close())

	for _, tc := range []struct {
		rel  string
		mode os.FileMode
	}{
		{".", 0o700 | os.ModeDir},
		{"disks", 0o700 | os.ModeDir},
		{"disks/d1", 0o700 | os.ModeDir},
		{"disks/d1/chunks", 0o700 | os.ModeDir},
		{"disks/d1/meta", 0o600},
		{"disks/d1/chunks/0", 0o600},
	} {
		fi, err := os.Stat(filepath.Join(dir, tc.rel))
		require.NoError(t, err)
		require.Equal(t, tc.mode, fi.Mode(), tc.rel)
	}
}

func TestOpenNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(f, nil, 0o600))
	_, err := local.Open(f)
	require.Error(t, err)
}

func TestWriteMetaLeavesNoTempFiles(t *testing.T) {
	b := open(t).(*local.Backend)
	ctx := t.Context()
	for i := range 10 {
		require.NoError(t, b.WriteMeta(ctx, "a/b/meta", []byte{byte(i)}))
	}
	var names []string
	require.NoError(t, filepath.WalkDir(b.Dir(), func(p string, d fs.DirEntry, err error) error {
		if !d.IsDir() {
			names = append(names, d.Name())
		}
		return err
	}))
	require.Equal(t, []string{"meta"}, names)
}

// TestInterruptedWriteMeta leaves what a crash between creating and
// renaming the temporary file would, and checks that it stays invisible.
func TestInterruptedWriteMeta(t *testing.T) {
	b := open(t).(*local.Backend)
	ctx := t.Context()
	require.NoError(t, b.WriteMeta(ctx, "d/meta", []byte("old")))
	for _, name := range []string{"d/.tmp-123", ".tmp-456", "d/.hidden/x"} {
		p := filepath.Join(b.Dir(), filepath.FromSlash(name))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
		require.NoError(t, os.WriteFile(p, []byte("new, half writ"), 0o600))
	}

	got, err := b.ReadMeta(ctx, "d/meta")
	require.NoError(t, err)
	require.Equal(t, "old", string(got))
	keys, err := b.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, []string{"d/meta"}, keys)
	u, err := b.Usage(ctx, "")
	require.NoError(t, err)
	require.LessOrEqual(t, u, int64(4096), "only the object counts")

	// The next write still works and the leftovers stay harmless.
	require.NoError(t, b.WriteMeta(ctx, "d/meta", []byte("new")))
	got, err = b.ReadMeta(ctx, "d/meta")
	require.NoError(t, err)
	require.Equal(t, "new", string(got))
}

// TestCloseKeepsChunks: Close closes nothing the caller still holds.
func TestCloseKeepsChunks(t *testing.T) {
	b := open(t)
	c, err := b.OpenChunk(t.Context(), "c", true)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, b.Close())
	_, err = c.WriteAt([]byte("still here"), 0)
	require.NoError(t, err)
	require.NoError(t, c.Sync())
}

// TestDeletePrunesDirectories: deleting the last object under a directory
// removes the directories it leaves empty, but never the root.
func TestDeletePrunesDirectories(t *testing.T) {
	b := open(t).(*local.Backend)
	ctx := t.Context()
	require.NoError(t, b.WriteMeta(ctx, "a/keep", nil))
	c, err := b.OpenChunk(ctx, "a/b/c/chunk", true)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.NoError(t, b.Delete(ctx, "a/b/c/chunk"))
	_, err = os.Stat(filepath.Join(b.Dir(), "a", "b"))
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.NoError(t, b.Delete(ctx, "a/keep"))
	entries, err := os.ReadDir(b.Dir())
	require.NoError(t, err)
	require.Empty(t, entries)
}

// TestCreateRacesDelete: a create into a directory that a concurrent
// Delete is pruning must still succeed.
func TestCreateRacesDelete(t *testing.T) {
	b := open(t)
	ctx := t.Context()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 100 {
				key := fmt.Sprintf("x/y/%d-%d", w, i)
				if !assert.NoError(t, b.WriteMeta(ctx, key, nil)) {
					return
				}
				assert.NoError(t, b.Delete(ctx, key))
			}
		})
	}
	wg.Wait()
	keys, err := b.List(ctx, "")
	require.NoError(t, err)
	require.Empty(t, keys)
}

// TestKeyIsObjectAndPrefix: on this backend a key cannot be both an
// object and the parent of another object; that is an error, not
// corruption.
func TestKeyIsObjectAndPrefix(t *testing.T) {
	b := open(t)
	ctx := t.Context()
	require.NoError(t, b.WriteMeta(ctx, "a", []byte("x")))
	require.Error(t, b.WriteMeta(ctx, "a/b", []byte("y")))
	_, err := b.OpenChunk(ctx, "a/b", true)
	require.Error(t, err)
	got, err := b.ReadMeta(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "x", string(got))
}

// TestPrefetch: Prefetch brings a range of a chunk's file into the page
// cache without reading it: pages dropped from the cache are resident
// again soon after, and the data is what was written.
func TestPrefetch(t *testing.T) {
	ctx := context.Background()
	// A file system in memory keeps every page: the test needs one on a
	// device, such as the source tree's when the temporary directory is a
	// tmpfs.
	root := t.TempDir()
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(root, &st))
	if st.Type == unix.TMPFS_MAGIC {
		var err error
		root, err = os.MkdirTemp(".", ".prefetch-test-")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(root) })
	}
	b, err := local.Open(filepath.Join(root, "store"))
	require.NoError(t, err)
	defer b.Close()
	c, err := b.OpenChunk(ctx, "c/x", true)
	require.NoError(t, err)
	defer c.Close()
	const size = 256 << 10
	want := make([]byte, size)
	_, _ = rand.Read(want)
	_, err = c.WriteAt(want, 0)
	require.NoError(t, err)
	require.NoError(t, c.Sync())

	f, err := os.Open(filepath.Join(b.Dir(), "c", "x"))
	require.NoError(t, err)
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	require.NoError(t, err)
	defer unix.Munmap(m)
	vec := make([]byte, size/os.Getpagesize())
	resident := func() int {
		_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
		require.Zero(t, e, "mincore: %v", e)
		n := 0
		for _, v := range vec {
			n += int(v & 1)
		}
		return n
	}
	// Written and synced, the pages are clean: DONTNEED drops them.
	require.NoError(t, unix.Fadvise(int(f.Fd()), 0, size, unix.FADV_DONTNEED))
	if resident() != 0 {
		t.Skipf("this file system keeps a file's clean pages after POSIX_FADV_DONTNEED (%d of %d resident)", resident(), len(vec))
	}

	pf, ok := c.(storage.Prefetcher)
	require.True(t, ok, "a local chunk takes prefetch hints")
	require.True(t, pf.Prefetch(64<<10, 64<<10))
	deadline := time.Now().Add(5 * time.Second)
	for resident() < 16 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	require.GreaterOrEqual(t, resident(), 16, "the 16 pages prefetched are in the page cache")
	require.Less(t, resident(), len(vec), "pages outside the range were read too")

	got := make([]byte, size)
	_, err = c.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, want, got)
	pf.Prefetch(-1, 10) // out of range: ignored
	pf.Prefetch(0, 0)
}
