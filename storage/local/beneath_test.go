package local_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
	"hostcrypt/storage/storagetest"
)

// resolvers are the two ways the backend resolves names: openat2 where the
// kernel has it, one segment at a time where it does not.
var resolvers = []struct {
	name string
	open func(dir string) (*local.Backend, error)
}{
	{"openat2", local.Open},
	{"walking", local.OpenWalking},
}

func TestConformanceWalking(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, err := local.OpenWalking(filepath.Join(t.TempDir(), "store"))
		require.NoError(t, err)
		return b
	}, storagetest.Options{Foreign: PlantFIFO})
}

// TestOpenat2IsUsed: where this process can call openat2, the backend
// resolves with it rather than one segment at a time.
func TestOpenat2IsUsed(t *testing.T) {
	dir := t.TempDir()
	fd, err := unix.Openat2(unix.AT_FDCWD, dir, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC})
	if err != nil {
		t.Skipf("openat2 is refused here (%v): the walking resolver is the one in use", err)
	}
	unix.Close(fd)
	b, err := local.Open(dir)
	require.NoError(t, err)
	defer b.Close()
	require.False(t, b.Walking())
}

// secret is what an outside file holds; no error may show any of it.
const secret = "SECRET-0123456789-never-in-a-message"

// outside is a directory next to the store, standing for the rest of the
// host: nothing in it may be created, written, read or removed through
// the store.
type outside struct {
	dir string
}

func newOutside(t *testing.T) *outside {
	o := &outside{dir: filepath.Join(t.TempDir(), "outside")}
	require.NoError(t, os.MkdirAll(o.dir, 0o700))
	return o
}

// files returns every file under the outside directory with its content.
func (o *outside) files(t *testing.T) map[string]string {
	got := map[string]string{}
	require.NoError(t, filepath.WalkDir(o.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		got[strings.TrimPrefix(p, o.dir)] = string(b)
		return err
	}))
	return got
}

// checkErr asserts what every error about something in the way must be:
// ErrNotRegular, naming the key, holding nothing of what is there.
func checkErr(t *testing.T, op, key string, err error, o *outside) {
	t.Helper()
	if !assert.ErrorIs(t, err, storage.ErrNotRegular, op) {
		return
	}
	assert.Contains(t, err.Error(), key, "%s: the error names the key", op)
	assert.NotContains(t, err.Error(), secret[:8], "%s: the error shows the target's bytes", op)
	assert.NotContains(t, err.Error(), o.dir, "%s: the error shows where the link points", op)
}

// every runs each Backend method that names key, and each listing, and
// hands back the errors; none may block.
func every(t *testing.T, b storage.Backend, key string) map[string]error {
	t.Helper()
	errs := map[string]error{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx := context.Background()
		for _, create := range []bool{false, true} {
			c, err := b.OpenChunk(ctx, key, create)
			if err == nil {
				c.Close()
				err = errors.New("opened")
			}
			errs[fmt.Sprintf("OpenChunk(create=%v)", create)] = err
		}
		_, errs["ReadMeta"] = b.ReadMeta(ctx, key)
		errs["WriteMeta"] = b.WriteMeta(ctx, key, []byte("overwritten"))
		errs["Delete"] = b.Delete(ctx, key)
		_, errs["List"] = b.List(ctx, "")
		_, errs["Usage"] = b.Usage(ctx, "")
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		// A guard against a hang (a FIFO opened for reading waits for a
		// writer), not a speed requirement.
		t.Fatal("a storage call blocked on what is at the key")
	}
	return errs
}

// TestSymlinkAtObject plants a symbolic link where an object should be,
// pointing out of the store at a missing, an empty and a non-empty file.
// Every call fails naming the key; nothing outside is created, written,
// read or removed; the link stays.
func TestSymlinkAtObject(t *testing.T) {
	for _, r := range resolvers {
		for _, target := range []struct {
			name    string
			content *string
		}{
			{"missing", nil},
			{"empty", new("")},
			{"non-empty", new(secret)},
		} {
			t.Run(r.name+"/"+target.name, func(t *testing.T) {
				o := newOutside(t)
				b, err := r.open(filepath.Join(t.TempDir(), "store"))
				require.NoError(t, err)
				defer b.Close()
				const key = "disks/d1/chunks/00000000"
				require.NoError(t, os.MkdirAll(filepath.Join(b.Dir(), "disks/d1/chunks"), 0o700))
				dst := filepath.Join(o.dir, "target")
				if target.content != nil {
					require.NoError(t, os.WriteFile(dst, []byte(*target.content), 0o600))
				}
				before := o.files(t)
				link := filepath.Join(b.Dir(), filepath.FromSlash(key))
				require.NoError(t, os.Symlink(dst, link))

				for op, err := range every(t, b, key) {
					checkErr(t, op, key, err, o)
				}
				require.Equal(t, before, o.files(t), "nothing outside the store changes")
				got, err := os.Readlink(link)
				require.NoError(t, err, "the link is neither replaced nor removed")
				require.Equal(t, dst, got)
			})
		}
	}
}

// TestSymlinkedDirectory plants a link to an outside directory as a
// directory of a key's path. Nothing is created in the outside directory,
// nothing read from it, nothing removed from it, and listings refuse it.
func TestSymlinkedDirectory(t *testing.T) {
	for _, r := range resolvers {
		t.Run(r.name, func(t *testing.T) {
			o := newOutside(t)
			b, err := r.open(filepath.Join(t.TempDir(), "store"))
			require.NoError(t, err)
			defer b.Close()
			ctx := t.Context()
			// The outside directory looks like a disk's: an object of the
			// same key exists there.
			require.NoError(t, os.MkdirAll(filepath.Join(o.dir, "chunks"), 0o700))
			require.NoError(t, os.WriteFile(filepath.Join(o.dir, "meta"), []byte(secret), 0o600))
			require.NoError(t, os.WriteFile(filepath.Join(o.dir, "chunks", "00000000"), []byte(secret), 0o600))
			require.NoError(t, os.MkdirAll(filepath.Join(b.Dir(), "disks"), 0o700))
			require.NoError(t, os.Symlink(o.dir, filepath.Join(b.Dir(), "disks", "d1")))
			before := o.files(t)

			for _, key := range []string{"disks/d1/meta", "disks/d1/chunks/00000000", "disks/d1/chunks/00000001", "disks/d1/new/deeper"} {
				for op, err := range every(t, b, key) {
					checkErr(t, op+" "+key, "disks/d1", err, o)
				}
			}
			for _, prefix := range []string{"disks", "disks/d1", "disks/d1/chunks"} {
				_, err := b.List(ctx, prefix)
				checkErr(t, "List "+prefix, "disks/d1", err, o)
				_, err = b.Usage(ctx, prefix)
				checkErr(t, "Usage "+prefix, "disks/d1", err, o)
			}
			require.Equal(t, before, o.files(t), "nothing outside the store changes")

			// Objects elsewhere in the store are not affected.
			require.NoError(t, b.WriteMeta(ctx, "disks/d2/meta", []byte("fine")))
			got, err := b.ReadMeta(ctx, "disks/d2/meta")
			require.NoError(t, err)
			require.Equal(t, "fine", string(got))
			keys, err := b.List(ctx, "disks/d2")
			require.NoError(t, err)
			require.Equal(t, []string{"disks/d2/meta"}, keys)
		})
	}
}

// TestSpecialFileAtObject: a FIFO, a socket and a device node where a
// chunk should be are refused without blocking, and left in place.
func TestSpecialFileAtObject(t *testing.T) {
	for _, r := range resolvers {
		for _, sp := range []struct {
			name string
			make func(t *testing.T, p string)
		}{
			{"fifo", func(t *testing.T, p string) { require.NoError(t, unix.Mkfifo(p, 0o600)) }},
			{"socket", func(t *testing.T, p string) {
				l, err := net.Listen("unix", p)
				require.NoError(t, err)
				t.Cleanup(func() { l.Close() })
			}},
			{"device", func(t *testing.T, p string) {
				// The null device: writing to it would "succeed".
				if err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
					if os.Getenv("CI") == "" && errors.Is(err, syscall.EPERM) {
						t.Skip("making a device node needs root")
					}
					require.NoError(t, err)
				}
			}},
		} {
			t.Run(r.name+"/"+sp.name, func(t *testing.T) {
				o := newOutside(t)
				b, err := r.open(filepath.Join(t.TempDir(), "store"))
				require.NoError(t, err)
				defer b.Close()
				const key = "disks/d1/chunks/00000000"
				require.NoError(t, os.MkdirAll(filepath.Join(b.Dir(), "disks/d1/chunks"), 0o700))
				p := filepath.Join(b.Dir(), filepath.FromSlash(key))
				sp.make(t, p)
				var before unix.Stat_t
				require.NoError(t, unix.Lstat(p, &before))

				for op, err := range every(t, b, key) {
					checkErr(t, op, key, err, o)
				}
				var after unix.Stat_t
				require.NoError(t, unix.Lstat(p, &after), "the special file stays")
				require.Equal(t, before.Ino, after.Ino)

				// In the way of a directory, it is refused as well.
				for op, err := range every(t, b, key+"/below") {
					if op == "List" || op == "Usage" {
						continue
					}
					checkErr(t, op, key, err, o)
				}
			})
		}
	}
}
