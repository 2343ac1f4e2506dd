package local_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

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
	})
}
