package storage_test

import (
	"path"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
)

func TestValidKey(t *testing.T) {
	for _, tc := range []struct {
		key  string
		rule string // part of the error message; "" for a valid key
	}{
		{"a", ""},
		{"disks/d1/chunks/000001", ""},
		{"a..b/x.", ""},
		{strings.Repeat("a", 255), ""},
		{"", "empty key"},
		{"a//b", "empty segment"},
		{"/a", "empty segment"},
		{"a/", "empty segment"},
		{"..", "starts with '.'"},
		{"a/.tmp", "starts with '.'"},
		{"a b", "not one of"},
		{"a/é", "not one of"},
		{strings.Repeat("a", 256), "segment is longer than 255"},
		{strings.Repeat("a/", 256) + "a", "longer than 512"},
	} {
		err := storage.ValidKey(tc.key)
		if tc.rule == "" {
			assert.NoError(t, err, tc.key)
			continue
		}
		if assert.ErrorIs(t, err, storage.ErrInvalidKey, tc.key) {
			assert.Contains(t, err.Error(), tc.rule, tc.key)
		}
	}
	require.NoError(t, storage.ValidPrefix(""))
	require.ErrorIs(t, storage.ValidPrefix("a/"), storage.ErrInvalidKey)
}

// FuzzValidKey checks that an accepted key can never leave the place a
// backend maps it to: it is clean, relative and free of dot segments.
func FuzzValidKey(f *testing.F) {
	for _, s := range []string{"a", "a/b", "../a", "a/./b", ".x", "a//b", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if storage.ValidKey(key) != nil {
			return
		}
		require.LessOrEqual(t, len(key), storage.MaxKeyLen)
		require.Equal(t, key, path.Clean(key))
		require.False(t, path.IsAbs(key))
		for seg := range strings.SplitSeq(key, "/") {
			require.NotEmpty(t, seg)
			require.NotEqual(t, '.', seg[0])
		}
	})
}
