package volume

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
)

// What the guest reads comes through the plaintext host cache, which may
// hold a write storage has not seen yet; the stored block is ciphertext. A
// closed volume answers neither.
func TestInspectBlockAndReadGuest(t *testing.T) {
	f := newFixture(t)
	v, err := Open(bg, f.config(cache.ReadWrite, false))
	require.NoError(t, err)
	p := pattern(4096)
	_, err = v.Image().WriteAt(p, 4096)
	require.NoError(t, err)
	got := make([]byte, 4096)
	n, err := v.ReadGuest(bg, got, 4096)
	require.NoError(t, err)
	assert.Equal(t, 4096, n)
	assert.Equal(t, p, got)

	b, err := v.InspectBlock(bg, 4096)
	require.NoError(t, err)
	assert.False(t, b.Written, "the write is in the host cache, not yet in storage")
	_, err = v.Close() // writes the cache back
	require.NoError(t, err)

	v, err = Open(bg, f.config(cache.None, false))
	require.NoError(t, err)
	n, err = v.ReadGuest(bg, got, 4096)
	require.NoError(t, err)
	assert.Equal(t, 4096, n)
	assert.Equal(t, p, got)
	b, err = v.InspectBlock(bg, 4096)
	require.NoError(t, err)
	require.True(t, b.Written)
	require.Len(t, b.Layers, 1)
	assert.False(t, bytes.Equal(p, b.Layers[0].Ciphertext))

	_, err = v.Close()
	require.NoError(t, err)
	_, err = v.InspectBlock(bg, 4096)
	assert.ErrorIs(t, err, ErrClosing)
	_, err = v.ReadGuest(bg, got, 4096)
	assert.ErrorIs(t, err, ErrClosing)

	plain := Plain("temp", nil, 4096)
	_, err = plain.InspectBlock(bg, 0)
	assert.Error(t, err, "a plaintext temp disk has no encrypted block")
}
