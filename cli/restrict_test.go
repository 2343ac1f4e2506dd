package cli

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
)

// TestPlacementAndMoveFlags: the placement and ade flags reach the requests,
// and disk move sends its own.
func TestPlacementAndMoveFlags(t *testing.T) {
	h := newFakeHost(t)
	env := map[string]string{"HOSTCRYPT_SOCKET": h.socket}
	sub := "11111111-2222-3333-4444-555555555555"
	place := []string{"--subscription", sub, "--resource-group", "rg1", "--location", "westeurope"}

	_, _, err := runCLI(t, env, append([]string{"disk", "create", "--name", "d1", "--size", "1G", "--ade", "true"}, place...)...)
	require.NoError(t, err)
	var dr api.CreateDiskRequest
	require.NoError(t, json.Unmarshal(h.bodies[0], &dr))
	assert.Equal(t, api.CreateDiskRequest{Name: "d1", SizeBytes: 1 << 30, Sku: "Premium_LRS", LogicalSectorSize: 512,
		Subscription: sub, ResourceGroup: "rg1", Location: "westeurope", ADE: true}, dr)

	_, _, err = runCLI(t, env, append([]string{"vm", "create", "--name", "vm1", "--os-disk", "d1", "--ade=true"}, place...)...)
	require.NoError(t, err)
	var vr api.CreateVMRequest
	require.NoError(t, json.Unmarshal(h.bodies[1], &vr))
	assert.Equal(t, sub, vr.Subscription)
	assert.Equal(t, "rg1", vr.ResourceGroup)
	assert.Equal(t, "westeurope", vr.Location)
	assert.True(t, vr.ADE)

	_, _, err = runCLI(t, env, append([]string{"des", "create", "--name", "des1", "--key-url", "https://h/vaults/v/keys/k/1"}, place...)...)
	require.NoError(t, err)
	var sr api.CreateDESRequest
	require.NoError(t, json.Unmarshal(h.bodies[2], &sr))
	assert.Equal(t, sub, sr.Subscription)
	assert.Equal(t, "westeurope", sr.Location)

	_, _, err = runCLI(t, env, "disk", "update", "--name", "d1", "--ade", "true")
	require.NoError(t, err)
	var ur api.UpdateDiskRequest
	require.NoError(t, json.Unmarshal(h.bodies[3], &ur))
	require.NotNil(t, ur.ADE)
	assert.True(t, *ur.ADE)

	_, _, err = runCLI(t, env, "disk", "move", "--name", "d1", "--resource-group", "rg2", "--subscription", sub)
	require.NoError(t, err)
	assert.Equal(t, "POST /disks/d1/move", h.seen[4])
	var mr api.MoveRequest
	require.NoError(t, json.Unmarshal(h.bodies[4], &mr))
	assert.Equal(t, api.MoveRequest{ResourceGroup: "rg2", Subscription: sub}, mr)

	_, _, err = runCLI(t, env, "vm", "update", "--name", "vm1", "--ade", "true")
	require.NoError(t, err)
	assert.Equal(t, "PATCH /vms/vm1", h.seen[5])
	var vu api.UpdateVMRequest
	require.NoError(t, json.Unmarshal(h.bodies[5], &vu))
	require.NotNil(t, vu.ADE)
	assert.True(t, *vu.ADE)

	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"disk", "move", "--name", "d1"}, "--resource-group is required"},
		{[]string{"disk", "move", "--resource-group", "rg"}, "--name is required"},
		{[]string{"disk", "create", "--name", "d", "--size", "1G", "--ade"}, "needs an argument"},
		{[]string{"disk", "update", "--name", "d", "--ade", "yes"}, "true or false"},
	} {
		_, _, err := runCLI(t, env, c.args...)
		require.Error(t, err, "%v", c.args)
		assert.Contains(t, err.Error(), c.msg, "%v", c.args)
	}
	assert.Len(t, h.seen, 6, "a refused command line sends nothing")
}
