package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1GiB": 1 << 30, "512MiB": 512 << 20, "1048576": 1 << 20, "2 TiB": 2 << 40, "0": -1, "0GiB": -1} {
		got, err := parseSize(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "1GB", "-1GiB", "1.5GiB", "100KiB", "9999999999TiB", "lots"} {
		_, err := parseSize(in)
		assert.Error(t, err, in)
	}
}

func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{"365d": 365 * 24 * time.Hour, "90d": 90 * 24 * time.Hour, "720h": 720 * time.Hour, "0": -1} {
		got, err := parseAge(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "-1d", "0d", "10m", "1y", "99999999d", "soon"} {
		_, err := parseAge(in)
		assert.Error(t, err, in)
	}
}
