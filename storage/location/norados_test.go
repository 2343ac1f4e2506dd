//go:build !ceph

package location_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage/location"
)

// TestNoRADOS: a build without the ceph tag parses a rados:// location but
// refuses to open it, saying what to install and how to build.
func TestNoRADOS(t *testing.T) {
	require.False(t, location.RADOSBuilt)
	b, err := location.Open(t.Context(), "rados://pool?conf=/etc/ceph/ceph.conf")
	require.Nil(t, b)
	require.ErrorIs(t, err, location.ErrNoRADOS)
	for _, says := range []string{`rados pool "pool"`, "librados", "scripts/deps.sh ceph", "make build-ceph", "-tags ceph,pacific"} {
		require.ErrorContains(t, err, says)
	}
	err = location.Check("rados://pool")
	require.ErrorIs(t, err, location.ErrNoRADOS, "Check refuses what Open cannot open")
	require.NoError(t, location.Check("/srv/storage"))
}
