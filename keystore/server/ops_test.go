package server

import (
	"hostcrypt/keystore/api"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestVaultAndIdentityOperations covers the management operations not
// walked through by the lifecycle tests, with their errors.
func TestVaultAndIdentityOperations(t *testing.T) {
	e := startEnv(t, withWebhookAllow("http://127.0.0.1:1/hook"))
	var vc api.VaultCreate
	vc.Location = "WestEurope"
	vc.Properties.Sku = &api.Sku{Name: "Premium"}
	vc.Properties.EnablePurgeProtection = ptr(true)
	v, err := e.admin.CreateVault(bg, "mgmtvault", vc)
	require.NoError(t, err)
	assert.Equal(t, "westeurope", v.Location)
	assert.Equal(t, "premium", v.Properties.Sku.Name)
	assert.Equal(t, 90, v.Properties.SoftDeleteRetentionInDays)
	assert.Equal(t, e.s.TenantID(), v.Properties.TenantID)
	require.Len(t, v.Properties.AccessPolicies, 1, "the creator gets a full policy")
	assert.ElementsMatch(t, allKeyPermissions, v.Properties.AccessPolicies[0].Permissions.Keys)
	assert.Equal(t, e.s.BaseURL()+"/vaults/mgmtvault", v.Properties.VaultURI)

	// Purge protection cannot be turned off.
	var vu api.VaultUpdate
	vu.Properties.EnablePurgeProtection = ptr(false)
	_, err = e.admin.UpdateVault(bg, "mgmtvault", vu)
	requireCode(t, err, 400, "BadParameter")

	// Listing: the admin sees its tenant's vaults; the platform sees its
	// own vault; an identity sees vaults where it holds a policy.
	vs, err := e.admin.ListVaults(bg)
	require.NoError(t, err)
	assert.Equal(t, []string{"mgmtvault"}, vaultNames(vs), "the platform vault is not the administrator's")
	pvs, err := e.platform.ListVaults(bg)
	require.NoError(t, err)
	assert.Equal(t, []string{"platform"}, vaultNames(pvs))
	id, idc := e.identity("SystemAssigned", "")
	vs, err = idc.ListVaults(bg)
	require.NoError(t, err)
	assert.Empty(t, vs)
	_, err = idc.GetVault(bg, "mgmtvault")
	requireCode(t, err, 403, "ForbiddenByPolicy")
	_, err = e.admin.SetPolicy(bg, "mgmtvault", id.PrincipalID, []string{"All"})
	require.NoError(t, err)
	vs, err = idc.ListVaults(bg)
	require.NoError(t, err)
	assert.Equal(t, []string{"mgmtvault"}, vaultNames(vs))
	// A policy holder is not a manager; system identities cannot create vaults.
	_, err = idc.SetPolicy(bg, "mgmtvault", id.PrincipalID, []string{"get"})
	requireCode(t, err, 403, "ForbiddenByPolicy")
	_, err = idc.CreateVault(bg, "idvault", api.VaultCreate{})
	requireCode(t, err, 403, "ForbiddenByPolicy")
	// Setting a policy again replaces it.
	v, err = e.admin.SetPolicy(bg, "mgmtvault", id.PrincipalID, []string{"get"})
	require.NoError(t, err)
	require.Len(t, v.Properties.AccessPolicies, 2)
	assert.Equal(t, []string{"get"}, v.Properties.AccessPolicies[1].Permissions.Keys)
	_, err = e.admin.DeletePolicy(bg, "mgmtvault", "nobody")
	requireCode(t, err, 404, "AccessPolicyNotFound")
	_, err = e.admin.GetVault(bg, "nosuchvault")
	requireCode(t, err, 404, "VaultNotFound")
	_, err = e.admin.SetPolicy(bg, "platform", id.PrincipalID, []string{"get"})
	requireCode(t, err, 403, "ForbiddenByPolicy")

	// Identities: read, revoke; only the platform or an admin manage them.
	got, err := e.admin.GetIdentity(bg, id.PrincipalID)
	require.NoError(t, err)
	assert.Equal(t, "SystemAssigned", got.Type)
	assert.Empty(t, got.Token, "a token is shown only at creation")
	self, err := idc.GetIdentity(bg, id.PrincipalID)
	require.NoError(t, err)
	assert.Equal(t, id.PrincipalID, self.PrincipalID)
	_, err = idc.CreateIdentity(bg, "User", "", "")
	requireCode(t, err, 403, "ForbiddenByPolicy")
	_, err = e.platform.CreateIdentity(bg, "Robot", "", "")
	requireCode(t, err, 400, "BadParameter")
	// A user-assigned managed identity uses what its policies grant and,
	// like a system-assigned one, creates no vault.
	ua, uac := e.identity("userassigned", "")
	assert.Equal(t, "UserAssigned", ua.Type)
	_, err = uac.CreateVault(bg, "uavault", api.VaultCreate{})
	requireCode(t, err, 403, "ForbiddenByPolicy")
	_, err = e.admin.SetPolicy(bg, "mgmtvault", ua.PrincipalID, []string{"get"})
	require.NoError(t, err)
	vs, err = uac.ListVaults(bg)
	require.NoError(t, err)
	assert.Equal(t, []string{"mgmtvault"}, vaultNames(vs))
	require.NoError(t, e.platform.DeleteIdentity(bg, id.PrincipalID))
	err = e.platform.DeleteIdentity(bg, id.PrincipalID)
	requireCode(t, err, 404, "IdentityNotFound")
	_, err = idc.ListVaults(bg)
	requireCode(t, err, 401, "Unauthorized")

	// Audit and webhooks are for administrators.
	_, err = e.platform.Audit(bg, 0, "", 0)
	requireCode(t, err, 403, "ForbiddenByPolicy")
	_, err = e.admin.CreateWebhook(bg, "ftp://example", "")
	requireCode(t, err, 400, "BadParameter")
	w, err := e.admin.CreateWebhook(bg, "http://127.0.0.1:1/hook", "mgmtvault")
	require.NoError(t, err)
	require.NoError(t, e.admin.DeleteWebhook(bg, w.ID))
	err = e.admin.DeleteWebhook(bg, w.ID)
	requireCode(t, err, 404, "WebhookNotFound")
}

func TestKeyOperationsMore(t *testing.T) {
	e := startEnv(t)
	e.vault("morevault", "standard")
	tags := map[string]string{"owner": "team"}
	kb, err := e.admin.CreateKey(bg, "morevault", "k", api.KeyCreate{Kty: "rsa", Tags: tags, KeyOps: []string{"wrapkey", "unwrapKey"}})
	require.NoError(t, err)
	assert.Equal(t, "RSA", kb.Key.Kty)
	assert.Equal(t, []string{"wrapKey", "unwrapKey"}, kb.Key.KeyOps)
	assert.Equal(t, tags, kb.Tags)
	assert.Equal(t, "AQAB", kb.Key.E)
	assert.Equal(t, "Recoverable+Purgeable", kb.Attributes.RecoveryLevel)

	// create on an existing name adds a version, as in Key Vault.
	kb2, err := e.admin.CreateKey(bg, "morevault", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	vs, err := e.admin.ListKeyVersions(bg, "morevault", "k")
	require.NoError(t, err)
	require.Len(t, vs, 2)
	cur, err := e.admin.GetKey(bg, "morevault", "k", "")
	require.NoError(t, err)
	assert.Equal(t, kb2.Key.Kid, cur.Key.Kid)
	old, err := e.admin.GetKeyByID(bg, kb.Key.Kid)
	require.NoError(t, err)
	assert.Equal(t, kb.Key.N, old.Key.N)

	// Update key_ops and tags of the old version only.
	up, err := e.admin.UpdateKey(bg, "morevault", "k", versionOf(kb.Key.Kid), api.KeyUpdate{KeyOps: []string{"wrapKey"}, Tags: map[string]string{"a": "b"}})
	require.NoError(t, err)
	assert.Equal(t, []string{"wrapKey"}, up.Key.KeyOps)
	_, err = e.admin.UpdateKey(bg, "morevault", "k", "", api.KeyUpdate{KeyOps: []string{"fly"}})
	requireCode(t, err, 400, "BadParameter")
	_, err = e.admin.UpdateKey(bg, "morevault", "k", "ffff", api.KeyUpdate{Tags: map[string]string{}})
	requireCode(t, err, 404, "KeyNotFound")
	_, _, err = e.admin.UnwrapKey(bg, kb.Key.Kid, api.RSAOAEP256, make([]byte, 256))
	requireCode(t, err, 403, "KeyOperationForbidden")

	// A value wrapped by one version does not unwrap with another.
	_, w, err := e.admin.WrapKey(bg, kb2.Key.Kid, api.RSAOAEP256, []byte("k"))
	require.NoError(t, err)
	_, _, err = e.admin.UnwrapKey(bg, kb2.Key.Kid, api.RSAOAEP, w)
	requireCode(t, err, 400, "BadParameter")
	_, _, err = e.admin.WrapKey(bg, kb2.Key.Kid, api.RSAOAEP256, make([]byte, 600))
	requireCode(t, err, 400, "BadParameter")

	// Keys listing shows version-less ids; deleted keys have their own list.
	items, err := e.admin.ListKeys(bg, "morevault")
	require.NoError(t, err)
	require.Len(t, items, 1)
	assert.Equal(t, e.s.BaseURL()+"/vaults/morevault/keys/k", items[0].Kid)
	_, err = e.admin.DeleteKey(bg, "morevault", "k")
	require.NoError(t, err)
	items, _ = e.admin.ListKeys(bg, "morevault")
	assert.Empty(t, items)
	_, err = e.admin.RotateKey(bg, "morevault", "k")
	requireCode(t, err, 404, "KeyNotFound")
	_, err = e.admin.DeleteKey(bg, "morevault", "k")
	requireCode(t, err, 404, "KeyNotFound")
	_, err = e.admin.RecoverKey(bg, "morevault", "nokey")
	requireCode(t, err, 404, "KeyNotFound")
	require.NoError(t, e.admin.PurgeKey(bg, "morevault", "k"))
	_, err = e.admin.CreateKey(bg, "morevault", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err, "a purged name is free again")

	// Per-permission refusals name the missing permission.
	id, idc := e.identity("SystemAssigned", "")
	_, err = e.admin.SetPolicy(bg, "morevault", id.PrincipalID, []string{"get"})
	require.NoError(t, err)
	for name, call := range map[string]func() error{
		"list":   func() error { _, err := idc.ListKeys(bg, "morevault"); return err },
		"create": func() error { _, err := idc.CreateKey(bg, "morevault", "x", api.KeyCreate{Kty: "RSA"}); return err },
		"update": func() error {
			_, err := idc.UpdateKey(bg, "morevault", "k", "", api.KeyUpdate{Tags: map[string]string{}})
			return err
		},
		"delete":            func() error { _, err := idc.DeleteKey(bg, "morevault", "k"); return err },
		"rotate":            func() error { _, err := idc.RotateKey(bg, "morevault", "k"); return err },
		"backup":            func() error { _, err := idc.BackupKey(bg, "morevault", "k"); return err },
		"restore":           func() error { _, err := idc.RestoreKey(bg, "morevault", "x"); return err },
		"getrotationpolicy": func() error { _, err := idc.GetRotationPolicy(bg, "morevault", "k"); return err },
		"setrotationpolicy": func() error {
			_, err := idc.SetRotationPolicy(bg, "morevault", "k", api.RotationPolicy{})
			return err
		},
	} {
		requireCode(t, call(), 403, "ForbiddenByPolicy")
		assert.True(t, strings.Contains(call().Error(), "'"+name+"'"), "%s: %v", name, call())
	}
	_, err = idc.GetKey(bg, "morevault", "k", "")
	require.NoError(t, err)
}

func vaultNames(vs []api.Vault) []string {
	out := []string{}
	for _, v := range vs {
		out = append(out, v.Name)
	}
	return out
}

func versionOf(kid string) string { return kid[strings.LastIndex(kid, "/")+1:] }
