package control

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// A snapshot's chunks, opened read-only, still pass the read window's
// prefetch hints to local storage, and still refuse writes.
func TestReadOnlyChunkPassesHints(t *testing.T) {
	lb, err := local.Open(t.TempDir())
	require.NoError(t, err)
	defer lb.Close()
	c, err := lb.OpenChunk(context.Background(), "c/1", true)
	require.NoError(t, err)
	defer c.Close()
	ro := readOnlyChunk{c}
	require.True(t, storage.Prefetch(ro, 0, 32<<10))
	_, err = ro.WriteAt([]byte{1}, 0)
	require.ErrorIs(t, err, errReadOnly)
}
