//go:build ceph

package store

import (
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/internal/testenv"
	"hostcrypt/storage/rados"
)

// TestSharedRacesOnRADOS runs the shared store's races on a RADOS pool,
// four connections standing for four hosts.
func TestSharedRacesOnRADOS(t *testing.T) {
	cfg := *testenv.RADOS(t, "test-store-").RADOS
	stores := make([]*Shared, 4)
	for i := range stores {
		b, err := rados.Open(t.Context(), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { b.Close() })
		stores[i] = NewShared(b)
	}
	t.Cleanup(func() {
		b, err := rados.Open(bg, cfg)
		if err == nil {
			b.Delete(bg, RecordsKey)
			b.Close()
		}
	})
	sharedRaces(t, stores)
}
