package storage_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/fault"
	"hostcrypt/storage/freeze"
	"hostcrypt/storage/latency"
	"hostcrypt/storage/local"
)

// hideHints is a backend whose chunks take no prefetch hints, as a store
// that keeps nothing near the caller.
type hideHints struct{ storage.Backend }

func (h hideHints) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := h.Backend.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return struct{ storage.Chunk }{c}, nil
}

// A decorator passes a prefetch hint to the chunk beneath, and says whether
// it was taken: taken by local storage, not by a store that keeps nothing
// near the caller (which the latency decorator stands for).
func TestDecoratorsPassPrefetchHints(t *testing.T) {
	ctx := context.Background()
	wraps := map[string]func(storage.Backend) storage.Backend{
		"freeze": func(b storage.Backend) storage.Backend { return freeze.New(b) },
		"fault":  func(b storage.Backend) storage.Backend { return fault.New(b, 1) },
	}
	for name, wrap := range wraps {
		t.Run(name, func(t *testing.T) {
			lb, err := local.Open(t.TempDir())
			require.NoError(t, err)
			defer lb.Close()
			for _, under := range []struct {
				be    storage.Backend
				takes bool
			}{{lb, true}, {hideHints{lb}, false}, {latency.New(lb, 1), false}} {
				c, err := wrap(under.be).OpenChunk(ctx, "c/1", true)
				require.NoError(t, err)
				require.Equal(t, under.takes, storage.Prefetch(c, 0, 32<<10), "%T beneath", under.be)
				require.NoError(t, c.Close())
			}
		})
	}
}
