package leakscan

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestScanFindsAnyWindow(t *testing.T) {
	pattern := make([]byte, 4096)
	rand.Read(pattern)
	dir := t.TempDir()
	noise := make([]byte, 10000)
	rand.Read(noise)
	// The bytes next to each planted piece must not continue the pattern,
	// or a random match (1 in 256) widens the piece to a second window.
	noise[776] = ^pattern[1002]
	noise[777] = ^pattern[1019]
	noise[99] = ^pattern[1999]
	// 16 bytes of the pattern from an odd offset, at an odd file offset.
	leak := append(append(append([]byte{}, noise[:777]...), pattern[1003:1019]...), noise[777:]...)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a"), leak, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "b"), noise, 0o600))
	// 15 bytes are not a window.
	short := append(append([]byte{}, noise[:100]...), pattern[2000:2015]...)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "c"), short, 0o600))

	hits, err := Scan(dir, pattern, 16)
	require.NoError(t, err)
	require.Len(t, hits, 1)
	require.Equal(t, filepath.Join(dir, "a"), hits[0].Path)
	require.EqualValues(t, 777, hits[0].FileOffset)
	require.Equal(t, 1003, hits[0].PatternOff)
}

func TestScanCleanTree(t *testing.T) {
	pattern := make([]byte, 1<<16)
	rand.Read(pattern)
	dir := t.TempDir()
	other := make([]byte, 1<<16)
	rand.Read(other)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "x"), other, 0o600))
	hits, err := Scan(dir, pattern, 16)
	require.NoError(t, err)
	require.Empty(t, hits)
}
