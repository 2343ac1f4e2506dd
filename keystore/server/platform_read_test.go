package server

import (
	"hostcrypt/keystore/api"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPlatformReadsVaultLocation: the platform reads where any vault is (the
// host checks a disk encryption set against it) but not who holds access,
// and it still cannot manage or use the vault.
func TestPlatformReadsVaultLocation(t *testing.T) {
	e := startEnv(t)
	var vc api.VaultCreate
	vc.Location = "northeurope"
	_, err := e.admin.CreateVault(bg, "custvault", vc)
	require.NoError(t, err)
	v, err := e.platform.GetVault(bg, "custvault")
	require.NoError(t, err)
	assert.Equal(t, "northeurope", v.Location)
	assert.Empty(t, v.Properties.AccessPolicies, "the platform must not see access policies")
	pvs, err := e.platform.ListVaults(bg)
	require.NoError(t, err)
	assert.Equal(t, []string{"platform"}, vaultNames(pvs), "reading one vault does not list the customers' vaults")
	_, err = e.platform.SetPolicy(bg, "custvault", "someone", []string{"get"})
	requireCode(t, err, 403, "ForbiddenByPolicy")
	// Another identity still cannot read it.
	_, idc := e.identity("SystemAssigned", "")
	_, err = idc.GetVault(bg, "custvault")
	requireCode(t, err, 403, "ForbiddenByPolicy")
}
