package atomicfile

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"hostcrypt/internal/dirfd"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	require.NoError(t, Write(p, []byte("one"), 0o600))
	require.NoError(t, Write(p, []byte("two"), 0o600))
	got, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, "two", string(got))
	st, err := os.Stat(p)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left behind")
	require.Error(t, Write(filepath.Join(dir, "missing", "x"), nil, 0o600))

	got, err = Read(p)
	require.NoError(t, err)
	require.Equal(t, "two", string(got))
	_, err = Read(filepath.Join(dir, "absent"))
	require.ErrorIs(t, err, fs.ErrNotExist)
}

// TestRefusesWhatWasPlanted: a link out of the directory, or a FIFO, at
// the file's name is neither written through, nor replaced, nor read,
// nor waited on.
func TestRefusesWhatWasPlanted(t *testing.T) {
	const secret = "SECRET-outside"
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, p, target string)
	}{
		{"link", func(t *testing.T, p, target string) { require.NoError(t, os.Symlink(target, p)) }},
		{"fifo", func(t *testing.T, p, _ string) { require.NoError(t, unix.Mkfifo(p, 0o600)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, outside := t.TempDir(), t.TempDir()
			target := filepath.Join(outside, "target")
			require.NoError(t, os.WriteFile(target, []byte(secret), 0o600))
			p := filepath.Join(dir, "state.json")
			tc.plant(t, p, target)
			var before unix.Stat_t
			require.NoError(t, unix.Lstat(p, &before))

			done := make(chan struct{})
			go func() {
				defer close(done)
				err := Write(p, []byte("new state"), 0o600)
				if assert.ErrorIs(t, err, dirfd.ErrNotRegular) {
					assert.Contains(t, err.Error(), p)
				}
				_, err = Read(p)
				if assert.ErrorIs(t, err, dirfd.ErrNotRegular) {
					assert.NotContains(t, err.Error(), secret)
					assert.NotContains(t, err.Error(), outside)
				}
			}()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				// A guard against a hang, not a speed requirement.
				t.Fatal("blocked on what is at the file's name")
			}
			got, err := os.ReadFile(target)
			require.NoError(t, err)
			require.Equal(t, secret, string(got), "the target is untouched")
			var after unix.Stat_t
			require.NoError(t, unix.Lstat(p, &after))
			require.Equal(t, before.Ino, after.Ino, "what was planted is not replaced")
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Len(t, entries, 1, "no temporary file is left behind")
		})
	}
}
