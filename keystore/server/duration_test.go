package server

import (
	"testing"

	"github.com/stretchr/testify/require"
)

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
