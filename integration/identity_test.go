package integration

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type uaJSON struct {
	Name               string   `json:"name"`
	ID                 string   `json:"id"`
	PrincipalID        string   `json:"principalId"`
	ClientID           string   `json:"clientId"`
	TenantID           string   `json:"tenantId"`
	DiskEncryptionSets []string `json:"diskEncryptionSets"`
	Warning            string   `json:"warning"`
}

type desIdentityJSON struct {
	Identity struct {
		Type                   string `json:"type"`
		PrincipalID            string `json:"principalId"`
		UserAssignedIdentities map[string]struct {
			PrincipalID string `json:"principalId"`
		} `json:"userAssignedIdentities"`
	} `json:"identity"`
	KeyAccessIdentity struct {
		Type                 string `json:"type"`
		UserAssignedIdentity string `json:"userAssignedIdentity"`
		PrincipalID          string `json:"principalId"`
	} `json:"keyAccessIdentity"`
	KeyAccess string `json:"keyAccess"`
}

type auditJSON struct {
	Op         string `json:"operationName"`
	Caller     string `json:"callerObjectId"`
	CallerType string `json:"callerType"`
	Kid        string `json:"kid"`
	Result     int    `json:"resultCode"`
}

// TestHostUserAssignedIdentity: a user-assigned identity made once is given
// to a set, which then uses its key only as that identity (the audit log
// names it); revoking its access policy stops the VM as for a
// system-assigned one; the identity cannot go while a set uses it; and
// UltraSSD and PremiumV2 disks refuse a set whose key access goes through
// it, at disk create, disk update and des update.
func TestHostUserAssignedIdentity(t *testing.T) {
	h := newHost(t, startKeystore(t), "--key-check-interval", "1s")
	h.ok("keyvault", "create", "--name", "vault1")
	kid := h.kid("create", "--vault-name", "vault1", "--name", "k1")

	var id1 uaJSON
	h.json(&id1, "identity", "create", "--name", "id1")
	require.NotEmpty(t, id1.PrincipalID)
	require.NotEmpty(t, id1.ClientID)
	require.NotEmpty(t, id1.TenantID)
	require.Contains(t, id1.ID, "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1")

	// The set has no system-assigned identity: its key access is id1's.
	var des desIdentityJSON
	h.json(&des, "des", "create", "--name", "des1", "--key-url", kid, "--mi-user-assigned", "id1", "--mi-system-assigned", "false")
	assert.Equal(t, "UserAssigned", des.Identity.Type)
	assert.Empty(t, des.Identity.PrincipalID, "no system-assigned identity")
	require.Contains(t, des.Identity.UserAssignedIdentities, id1.ID)
	assert.Equal(t, "UserAssigned", des.KeyAccessIdentity.Type)
	assert.Equal(t, id1.ID, des.KeyAccessIdentity.UserAssignedIdentity)
	assert.Equal(t, id1.PrincipalID, des.KeyAccessIdentity.PrincipalID)
	assert.Contains(t, des.KeyAccess, id1.PrincipalID, "not granted yet: the grant names id1's principal")

	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", id1.PrincipalID, "--key-permissions", "get,wrapKey,unwrapKey")
	h.json(&des, "des", "show", "--name", "des1")
	assert.Equal(t, "ok", des.KeyAccess)
	table := h.ok("des", "show", "--name", "des1")
	assert.Contains(t, table, "UserAssigned:id1", "the table says which identity reaches the key")

	var shown uaJSON
	h.json(&shown, "identity", "show", "--name", "id1")
	assert.Equal(t, []string{"des1"}, shown.DiskEncryptionSets)
	var all []uaJSON
	h.json(&all, "identity", "list")
	require.Len(t, all, 1)
	assert.Equal(t, id1.PrincipalID, all[0].PrincipalID)
	msg := h.mustRefuse(t, []string{"des1", "is used by"}, "identity", "delete", "--name", "id1")
	assert.Contains(t, msg, "hostcrypt des update --name des1 --mi-user-assigned")

	// A customer-key disk on a running VM: every key use is id1's.
	h.ok("disk", "create", "--name", "c1", "--size", "16M", "--disk-encryption-set", "des1")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M", "--data-disks", "c1")
	img := h.img("vm1", "data-0.img")
	sum := writePattern(t, img)
	out := h.ok("-o", "json", "keyvault", "audit", "--name", "vault1")
	var recs []auditJSON
	require.NoError(t, json.Unmarshal([]byte(out), &recs))
	var wraps, unwraps int
	for _, r := range recs {
		if r.Kid != kid || r.Result != 200 || (r.Op != "KeyWrap" && r.Op != "KeyUnwrap") {
			continue
		}
		assert.Equal(t, id1.PrincipalID, r.Caller, "%s as the user-assigned identity", r.Op)
		assert.Equal(t, "UserAssigned", r.CallerType)
		if r.Op == "KeyWrap" {
			wraps++
		} else {
			unwraps++
		}
	}
	assert.Positive(t, wraps)
	assert.Positive(t, unwraps, "the VM's start unwrapped c1's key")

	// Revoking id1's access policy stops the VM; the grant brings it back.
	h.ok("keyvault", "delete-policy", "--name", "vault1", "--object-id", id1.PrincipalID)
	vm := h.waitPower(t, "stopped", 15*time.Second)
	assert.Contains(t, vm.Reason, kid)
	h.mustRefuse(t, []string{"ForbiddenByPolicy", id1.PrincipalID}, "vm", "start", "--name", "vm1")
	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", id1.PrincipalID, "--key-permissions", "get,wrapKey,unwrapKey")
	h.ok("vm", "start", "--name", "vm1")
	require.Equal(t, sum, readBack(t, img))

	// Both identities: the key is still reached as the user-assigned one.
	h.json(&des, "des", "update", "--name", "des1", "--mi-system-assigned", "true")
	assert.Equal(t, "SystemAssigned, UserAssigned", des.Identity.Type)
	assert.NotEmpty(t, des.Identity.PrincipalID)
	assert.Equal(t, "UserAssigned", des.KeyAccessIdentity.Type)
	assert.Equal(t, "ok", des.KeyAccess)
	h.mustRefuse(t, []string{"needs an identity"}, "des", "update", "--name", "des1", "--mi-user-assigned", "", "--mi-system-assigned", "false")

	// The Ultra and PremiumV2 rule, at disk create ...
	h.mustRefuse(t, []string{"UltraSSD_LRS and PremiumV2_LRS", "user-assigned identity", "system-assigned"},
		"disk", "create", "--name", "u1", "--size", "16M", "--sku", "UltraSSD_LRS", "--logical-sector-size", "4096", "--disk-encryption-set", "des1")
	// ... at disk update ...
	h.ok("disk", "create", "--name", "v2", "--size", "16M", "--sku", "PremiumV2_LRS")
	h.mustRefuse(t, []string{"PremiumV2_LRS", "user-assigned identity"},
		"disk", "update", "--name", "v2", "--encryption-type", "EncryptionAtRestWithCustomerKey", "--disk-encryption-set", "des1")
	// ... and at des update, for a set an Ultra disk uses.
	var des2 desIdentityJSON
	h.json(&des2, "des", "create", "--name", "des2", "--key-url", kid)
	assert.Equal(t, "SystemAssigned", des2.Identity.Type)
	assert.Equal(t, "SystemAssigned", des2.KeyAccessIdentity.Type)
	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", des2.Identity.PrincipalID, "--key-permissions", "get,wrapKey,unwrapKey")
	h.ok("disk", "create", "--name", "u2", "--size", "16M", "--sku", "UltraSSD_LRS", "--logical-sector-size", "4096", "--disk-encryption-set", "des2")
	h.mustRefuse(t, []string{"u2", "user-assigned identity"}, "des", "update", "--name", "des2", "--mi-user-assigned", "id1")
	h.json(&des2, "des", "show", "--name", "des2")
	assert.Equal(t, "SystemAssigned", des2.Identity.Type, "the refusal changed nothing")

	// Once no set uses it, id1 goes, and its key store principal with it.
	h.ok("vm", "deallocate", "--name", "vm1")
	h.ok("vm", "delete", "--name", "vm1")
	h.ok("disk", "delete", "--name", "c1")
	h.ok("des", "delete", "--name", "des1")
	h.ok("identity", "delete", "--name", "id1")
	_, errOut, code := h.run("identity", "show", "--id", id1.PrincipalID)
	require.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "IdentityNotFound")
}

// TestHostSubscriptionTransfer: a subscription moved to another tenant
// leaves its managed identities behind. The VM with a customer-key disk
// stops at the next key check with a reason that names the transfer and the
// fix, and is refused a start; a VM on platform keys keeps running; the fix
// as the message words it (an identity of the new tenant, allowed and
// granted on the vault, given to the set) brings the first VM back with its
// data.
func TestHostSubscriptionTransfer(t *testing.T) {
	const sub = "00000000-0000-0000-0000-000000000000"
	const t2 = "77777777-8888-9999-aaaa-bbbbbbbbbbbb"
	h := newHost(t, startKeystore(t), "--key-check-interval", "1s")
	kid, _ := cmkVM(t, h) // vault1, des1 (system-assigned, granted), c1 on running vm1
	var id0 uaJSON
	h.json(&id0, "identity", "create", "--name", "id0")
	img := h.img("vm1", "data-0.img")
	sum := writePattern(t, img)
	h.ok("disk", "create", "--name", "p2", "--size", "16M")
	h.ok("vm", "create", "--name", "vm2", "--os-disk-size", "8M", "--data-disks", "p2")
	pimg := h.img("vm2", "data-0.img")
	psum := writePattern(t, pimg)

	var s struct {
		ID        string `json:"id"`
		TenantID  string `json:"tenantId"`
		Transfers []struct {
			From string `json:"from"`
			To   string `json:"to"`
		} `json:"transfers"`
		Resources map[string]int `json:"resources"`
	}
	h.json(&s, "subscription", "show", "--name", sub)
	t1 := s.TenantID
	require.NotEmpty(t, t1)
	assert.Equal(t, id0.TenantID, t1, "identities are made in their subscription's tenant")
	assert.Empty(t, s.Transfers)
	assert.Equal(t, 2, s.Resources["vms"])

	h.json(&s, "subscription", "transfer", "--name", sub, "--tenant", t2)
	assert.Equal(t, t2, s.TenantID)
	require.Len(t, s.Transfers, 1)
	assert.Equal(t, t1, s.Transfers[0].From)

	// The customer-key VM stops; the reason names the transfer and the fix.
	vm := h.waitPower(t, "stopped", 15*time.Second)
	assert.Contains(t, vm.Reason, kid)
	assert.Contains(t, vm.Reason, "transferred to tenant "+t2)
	assert.Contains(t, vm.Reason, "hostcrypt identity create")
	msg := h.mustRefuse(t, []string{"transferred to tenant " + t2, "hostcrypt des update --name des1 --mi-user-assigned"}, "vm", "start", "--name", "vm1")
	assert.Contains(t, msg, "--allowed-tenants "+t2)
	var des desIdentityJSON
	h.json(&des, "des", "show", "--name", "des1")
	assert.Contains(t, des.KeyAccess, "transferred")
	var old uaJSON
	h.json(&old, "identity", "show", "--name", "id0")
	assert.Equal(t, t1, old.TenantID, "an identity stays in its tenant")
	assert.Contains(t, old.Warning, "moved to tenant "+t2)

	// The platform-key VM runs on, reads and writes.
	var vm2 vmState
	h.json(&vm2, "vm", "show", "--name", "vm2")
	assert.Equal(t, "running", vm2.PowerState)
	require.Equal(t, psum, readBack(t, pimg))
	psum = writePattern(t, pimg)
	require.Equal(t, psum, readBack(t, pimg))

	// The fix, step by step as the message gives it.
	var id2 uaJSON
	h.json(&id2, "identity", "create", "--name", "id2", "--subscription", sub)
	assert.Equal(t, t2, id2.TenantID, "made in the subscription's new tenant")
	h.ok("keyvault", "update", "--name", "vault1", "--allowed-tenants", t2)
	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", id2.PrincipalID, "--key-permissions", "get,wrapKey,unwrapKey")
	h.json(&des, "des", "update", "--name", "des1", "--mi-user-assigned", "id2")
	assert.Equal(t, "ok", des.KeyAccess)
	assert.Equal(t, id2.PrincipalID, des.KeyAccessIdentity.PrincipalID)
	h.ok("vm", "start", "--name", "vm1")
	require.Equal(t, sum, readBack(t, img))
	time.Sleep(2 * time.Second) // two key checks
	h.json(&vm2, "vm", "show", "--name", "vm1")
	assert.Equal(t, "running", vm2.PowerState, "the key checks pass as the new identity")

	// Its key uses are the new identity's, of the new tenant.
	out := h.ok("-o", "json", "keyvault", "audit", "--name", "vault1", "--last", "20")
	var recs []auditJSON
	require.NoError(t, json.Unmarshal([]byte(out), &recs))
	seen := false
	for _, r := range recs {
		if r.Op == "KeyUnwrap" && r.Result == 200 && r.Caller == id2.PrincipalID {
			seen = true
		}
	}
	assert.True(t, seen, "vm1's start unwrapped as id2")
}
