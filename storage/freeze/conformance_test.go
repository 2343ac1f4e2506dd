package freeze_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/freeze"
	"hostcrypt/storage/local"
	"hostcrypt/storage/storagetest"
)

// owned is a freeze decorator that closes what it wraps: freeze.Backend's
// own Close leaves below to its owner (the disk's host cache), and the
// suite checks that a closed backend refuses every call.
type owned struct {
	*freeze.Backend
	below *local.Backend
}

func (o owned) Close() error { return o.below.Close() }

// The decorator keeps every promise of storage.Backend, as every decorator
// must; its copy-before-write is tested in freeze_test.go.
func TestConformance(t *testing.T) {
	open := func(dir string) storage.Backend {
		lb, err := local.Open(dir)
		require.NoError(t, err)
		return owned{freeze.New(lb), lb}
	}
	storagetest.Run(t, func(t *testing.T) storage.Backend { return open(t.TempDir()) }, storagetest.Options{
		Reopen: func(t *testing.T, b storage.Backend) storage.Backend {
			return open(b.(owned).below.Dir())
		},
		Foreign: func(t *testing.T, b storage.Backend, key string) {
			p := filepath.Join(b.(owned).below.Dir(), filepath.FromSlash(key))
			require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
			require.NoError(t, os.Symlink("/", p))
		},
	})
}
