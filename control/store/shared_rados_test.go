//go:build ceph

package store

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage/location"
	"hostcrypt/storage/rados"
)

// TestSharedRacesOnRADOS runs the shared store's races on a RADOS pool,
// four connections standing for four hosts.
func TestSharedRacesOnRADOS(t *testing.T) {
	s := os.Getenv("HOSTCRYPT_RADOS")
	if s == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but HOSTCRYPT_RADOS is not: the RADOS tests need a cluster (make test-ceph starts one)")
		}
		t.Skip("no Ceph cluster: HOSTCRYPT_RADOS is unset")
	}
	l, err := location.Parse(s)
	require.NoError(t, err)
	require.NotNil(t, l.RADOS)
	cfg := *l.RADOS
	ns := make([]byte, 6)
	rand.Read(ns)
	cfg.Namespace = "test-store-" + hex.EncodeToString(ns)
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
