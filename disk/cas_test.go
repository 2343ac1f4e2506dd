package disk

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// A Resize and Rewraps that race through two backends on one store (two
// processes, or two hosts on a shared one) all land: each writes its
// metadata by compare-and-swap and starts again when another came first,
// so none writes back what another has just replaced.
func TestResizeAndRewrapRaceOnOneStore(t *testing.T) {
	ctx := context.Background()
	td := newTestDisk(t, 4<<20, 1, 0)
	other, err := local.Open(td.dir)
	require.NoError(t, err)
	t.Cleanup(func() { other.Close() })

	const rewraps = 6
	keys := keyring{td.ring[0]}
	for i := range rewraps {
		keys = append(keys, newKEK(fmt.Sprintf("test/kek1/v%d", i+2)))
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		require.NoError(t, td.Resize(ctx, 64<<20))
	})
	last := make(chan string, rewraps)
	for i, k := range keys[1:] {
		be := storage.Backend(other)
		if i%2 == 0 {
			be = td.be
		}
		wg.Go(func() {
			w, err := Rewrap(ctx, be, td.name, 1, keys, k)
			require.NoError(t, err)
			last <- w.KeyID
		})
	}
	wg.Wait()
	close(last)
	m, err := ReadMetadata(ctx, td.be, td.name)
	require.NoError(t, err)
	require.EqualValues(t, 64<<20, m.Size, "a Rewrap wrote back the size from before the Resize")
	require.Len(t, m.Layers[0].WrappedKeys, 1, "every Rewrap finished, leaving one wrap")
	kid := m.Layers[0].WrappedKeys[0].KeyID
	seen := false
	for id := range last {
		seen = seen || id == kid
	}
	require.True(t, seen, "the remaining wrap is one of the Rewraps'")
	require.NoError(t, td.Close())
	d, err := Open(ctx, other, td.name, keys)
	require.NoError(t, err)
	require.EqualValues(t, 64<<20, d.Size())
	require.NoError(t, d.Close())
}
