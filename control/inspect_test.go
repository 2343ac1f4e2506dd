package control

import (
	"bytes"
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
)

// A running VM's block, as stored and as the guest reads it; nothing for a
// VM that does not run or a disk it does not have.
func TestInspectBlockOfARunningVM(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.mustDisk(t, api.CreateDiskRequest{Name: "data1", SizeBytes: 16 << 20})
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "data1"}}})
	pattern := bytes.Repeat([]byte("hostcrypt block "), 4096/16)
	_, err := f.tree.get("vm1/data-0.img").WriteAt(pattern, 8192)
	require.NoError(t, err)

	v, err := f.h.InspectBlock(ctx, "vm1", "data1", 8192+100)
	require.NoError(t, err)
	assert.Equal(t, int64(2), v.Block)
	require.True(t, v.Written)
	require.Len(t, v.Layers, 1)
	assert.Len(t, v.Layers[0].Ciphertext, 4096)
	assert.NotEqual(t, pattern, v.Layers[0].Ciphertext)
	assert.False(t, bytes.Contains(v.Layers[0].Ciphertext, []byte("hostcrypt block")))

	got := make([]byte, 4096)
	n, err := f.h.ReadGuest(ctx, "vm1", "data1", got, 8192)
	require.NoError(t, err)
	assert.Equal(t, 4096, n)
	assert.Equal(t, pattern, got)

	_, err = f.h.InspectBlock(ctx, "vm1", "nodisk", 0)
	requireCode(t, err, http.StatusNotFound)
	_, err = f.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)
	_, err = f.h.InspectBlock(ctx, "vm1", "data1", 8192)
	requireCode(t, err, http.StatusConflict)
	_, err = f.h.ReadGuest(ctx, "vm1", "data1", got, 8192)
	requireCode(t, err, http.StatusConflict)
	_, err = f.h.ReadGuest(ctx, "novm", "data1", got, 8192)
	requireCode(t, err, http.StatusConflict)
}
