package server

import (
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/require"
)

// RFC 5649 section 6 test vectors.
func TestKWPVectors(t *testing.T) {
	kek, _ := hex.DecodeString("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
	for _, v := range []struct{ key, wrapped string }{
		{"c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
		{"466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
	} {
		key, _ := hex.DecodeString(v.key)
		got, err := wrapKWP(kek, key)
		require.NoError(t, err)
		require.Equal(t, v.wrapped, hex.EncodeToString(got))
		back, err := unwrapKWP(kek, got)
		require.NoError(t, err)
		require.Equal(t, key, back)
		got[len(got)-1] ^= 1
		_, err = unwrapKWP(kek, got)
		require.Error(t, err)
	}
}

func TestISODuration(t *testing.T) {
	for _, s := range []string{"P90D", "P1Y", "P2M", "PT48H", "P1Y10D", "P2W", "P1DT1H"} {
		_, err := parseISODuration(s)
		require.NoError(t, err, s)
	}
	for _, s := range []string{"", "P", "PT", "90D", "P-1D", "P1.5D", "1h"} {
		_, err := parseISODuration(s)
		require.Error(t, err, s)
	}
}
