package cache_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"hostcrypt/cache"
	"hostcrypt/internal/dirfd"
)

// The cache directory is under the host directory; the tests below plant
// there what someone with access to it could, and check that the cache,
// running as root, creates, writes, reads and removes nothing outside.

const secret = "SECRET-0123456789-never-in-a-message"

// outsideFiles returns every file under dir with its content.
func outsideFiles(t *testing.T, dir string) map[string]string {
	got := map[string]string{}
	require.NoError(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		got[p] = string(b)
		return err
	}))
	return got
}

// targets are what a planted link points at: a missing, an empty and a
// non-empty file outside the cache.
var targets = []struct {
	name    string
	content *string
}{
	{"missing", nil},
	{"empty", new("")},
	{"non-empty", new(secret)},
}

func plantTarget(t *testing.T, content *string) (outside, target string) {
	outside = t.TempDir()
	target = filepath.Join(outside, "target")
	if content != nil {
		require.NoError(t, os.WriteFile(target, []byte(*content), 0o600))
	}
	return outside, target
}

// TestLinkAtIndexTmpWhileRunning plants a link at the temporary index
// name of a running write-back cache: the next commit must replace the
// link, not write the index through it.
func TestLinkAtIndexTmpWhileRunning(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.open(t, cache.ReadWrite, cache.MinBytes)
			defer c.Close()
			outside, target := plantTarget(t, tg.content)
			before := outsideFiles(t, outside)
			require.NoError(t, os.Symlink(target, filepath.Join(e.cacheDir, "dirty.idx.tmp")))

			ch, err := c.OpenChunk(t.Context(), "k", true)
			require.NoError(t, err)
			writeAt(t, ch, []byte("acknowledged"), 0)
			require.NoError(t, ch.Sync(), "the commit makes its index in the cache directory")
			require.Equal(t, before, outsideFiles(t, outside), "nothing outside the cache directory changes")
			st, err := os.Lstat(filepath.Join(e.cacheDir, "dirty.idx"))
			require.NoError(t, err)
			require.True(t, st.Mode().IsRegular(), "the index is a file of the cache directory")
		})
	}
}

// TestForeignIndexAtStart plants, where a crash would leave the dirty-page
// index, a link out of the cache directory, a FIFO, a socket-less device:
// opening the cache fails naming the file, without blocking, reading or
// changing anything outside, and without any byte of the target.
func TestForeignIndexAtStart(t *testing.T) {
	type plant struct {
		name string
		make func(t *testing.T, p string) (outside string)
	}
	var plants []plant
	for _, tg := range targets {
		plants = append(plants, plant{"link to " + tg.name, func(t *testing.T, p string) string {
			outside, target := plantTarget(t, tg.content)
			require.NoError(t, os.Symlink(target, p))
			return outside
		}})
	}
	plants = append(plants, plant{"fifo", func(t *testing.T, p string) string {
		require.NoError(t, unix.Mkfifo(p, 0o600))
		return t.TempDir()
	}}, plant{"device", func(t *testing.T, p string) string {
		if err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5))); err != nil { // the zero device
			if os.Getenv("CI") == "" && errors.Is(err, unix.EPERM) {
				t.Skip("making a device node needs root")
			}
			require.NoError(t, err)
		}
		return t.TempDir()
	}})
	for _, pl := range plants {
		for _, mode := range []cache.Mode{cache.ReadWrite, cache.None} {
			t.Run(pl.name+"/"+string(mode), func(t *testing.T) {
				e := newEnv(t)
				require.NoError(t, os.MkdirAll(e.cacheDir, 0o700))
				idx := filepath.Join(e.cacheDir, "dirty.idx")
				outside := pl.make(t, idx)
				before := outsideFiles(t, outside)
				done := make(chan error, 1)
				go func() {
					_, err := cache.New(t.Context(), e.remote, cache.Options{Mode: mode, Dir: e.cacheDir, MaxBytes: cache.MinBytes})
					done <- err
				}()
				var err error
				select {
				case err = <-done:
				case <-time.After(30 * time.Second):
					// A guard against a hang, not a speed requirement.
					t.Fatal("opening the cache blocked on what is at its index")
				}
				require.ErrorIs(t, err, dirfd.ErrNotRegular)
				require.Contains(t, err.Error(), idx, "the error names the file")
				require.NotContains(t, err.Error(), secret[:8])
				require.NotContains(t, err.Error(), outside)
				require.Equal(t, before, outsideFiles(t, outside), "nothing outside the cache directory changes")
				_, err = os.Lstat(idx)
				require.NoError(t, err, "what was planted stays for someone to look at")
			})
		}
	}
}

// TestLinkedCacheDirectory: the cache directory itself replaced by a link
// to a directory elsewhere is refused; nothing is made or read there.
func TestLinkedCacheDirectory(t *testing.T) {
	for _, mode := range []cache.Mode{cache.ReadWrite, cache.ReadOnly, cache.None} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t)
			outside := t.TempDir()
			// It even looks like a cache directory left by a crash.
			require.NoError(t, os.WriteFile(filepath.Join(outside, "dirty.idx"), []byte(secret), 0o600))
			require.NoError(t, os.WriteFile(filepath.Join(outside, "data"), []byte(secret), 0o600))
			before := outsideFiles(t, outside)
			require.NoError(t, os.Symlink(outside, e.cacheDir))
			_, err := cache.New(t.Context(), e.remote, cache.Options{Mode: mode, Dir: e.cacheDir, MaxBytes: cache.MinBytes})
			require.ErrorIs(t, err, dirfd.ErrNotRegular)
			require.Contains(t, err.Error(), e.cacheDir)
			require.NotContains(t, err.Error(), outside)
			require.NotContains(t, err.Error(), secret[:8])
			require.Equal(t, before, outsideFiles(t, outside), "nothing outside the cache directory changes")
		})
	}
}

// TestLinkAtDataAtStart: a link where the slot file should be is removed
// (a cache always starts empty) and the new slot file is the cache's own.
func TestLinkAtDataAtStart(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			e := newEnv(t)
			require.NoError(t, os.MkdirAll(e.cacheDir, 0o700))
			outside, target := plantTarget(t, tg.content)
			before := outsideFiles(t, outside)
			require.NoError(t, os.Symlink(target, filepath.Join(e.cacheDir, "data")))
			c := e.open(t, cache.ReadWrite, cache.MinBytes)
			ch, err := c.OpenChunk(t.Context(), "k", true)
			require.NoError(t, err)
			writeAt(t, ch, []byte("cached"), 0)
			require.NoError(t, ch.Sync())
			require.NoError(t, c.Close())
			require.Equal(t, before, outsideFiles(t, outside), "nothing outside the cache directory changes")
		})
	}
}
