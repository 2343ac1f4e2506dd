package integration

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// mustRefuse runs the CLI, which must fail with every one of want on
// stderr; it returns stderr.
func (h *host) mustRefuse(t *testing.T, want []string, args ...string) string {
	t.Helper()
	out, errOut, code := h.run(args...)
	require.NotEqual(t, 0, code, "hostcrypt %s succeeded:\n%s", strings.Join(args, " "), out)
	for _, w := range want {
		require.Contains(t, errOut, w, "hostcrypt %s", strings.Join(args, " "))
	}
	return errOut
}

type placedJSON struct {
	Name          string `json:"name"`
	ID            string `json:"id"`
	Subscription  string `json:"subscription"`
	ResourceGroup string `json:"resourceGroup"`
	Location      string `json:"location"`
	ADE           bool   `json:"ade"`
}

// TestHostRestrictions walks the customer-key restrictions through the real
// CLI, daemon and key store: each refusal says the rule and what to do, and
// leaves the resources as they were.
func TestHostRestrictions(t *testing.T) {
	h := newHost(t, startKeystore(t))
	kid, _ := cmkVM(t, h) // vault1 (local), des1, CMK disk c1 on running vm1
	other := "11111111-2222-3333-4444-555555555555"
	show := func(name string) placedJSON {
		t.Helper()
		var d placedJSON
		h.json(&d, "disk", "show", "--name", name)
		return d
	}
	listNames := func(args ...string) string {
		t.Helper()
		var items []placedJSON
		h.json(&items, args...)
		var names []string
		for _, it := range items {
			names = append(names, it.Name)
		}
		return strings.Join(names, ",")
	}

	// RSA sizes and HSM keys: refused by the key store, nothing created.
	h.mustRefuse(t, []string{"2048, 3072 or 4096"}, "key", "create", "--vault-name", "vault1", "--name", "small", "--size", "1024")
	h.mustRefuse(t, []string{"premium"}, "key", "create", "--vault-name", "vault1", "--name", "hsm", "--kty", "RSA-HSM")
	keys := h.ok("-o", "json", "key", "list", "--vault-name", "vault1")
	require.Contains(t, keys, "/keys/k1")
	require.NotContains(t, keys, "/keys/small")
	require.NotContains(t, keys, "/keys/hsm")

	// A set in another location than its key's vault.
	h.ok("keyvault", "create", "--name", "farvault", "--location", "westeurope")
	farKid := h.kid("create", "--vault-name", "farvault", "--name", "k2")
	h.mustRefuse(t, []string{`key vault "farvault" is in location westeurope`, "same location"}, "des", "create", "--name", "des2", "--key-url", farKid)
	h.mustRefuse(t, []string{"same location", "switch to a key of a vault in local"}, "des", "update", "--name", "des1", "--key-url", farKid)
	h.mustRefuse(t, []string{`the vault "novault"`, "does not exist"}, "des", "create", "--name", "des2", "--key-url", strings.Replace(kid, "/vault1/", "/novault/", 1))
	require.Equal(t, "des1", listNames("des", "list"))
	var des struct {
		ActiveKey struct {
			KeyURL string `json:"keyUrl"`
		} `json:"activeKey"`
	}
	h.json(&des, "des", "show", "--name", "des1")
	require.Equal(t, kid, des.ActiveKey.KeyURL)
	var d2 placedJSON
	h.json(&d2, "des", "create", "--name", "des2", "--key-url", farKid, "--location", "westeurope", "--resource-group", "keys")
	require.Equal(t, "westeurope", d2.Location)
	require.Contains(t, d2.ID, "/resourceGroups/keys/providers/Microsoft.Compute/diskEncryptionSets/des2")

	// Moving the CMK disk of a running VM, or to another subscription.
	before := show("c1")
	require.Equal(t, "hostcrypt", before.ResourceGroup)
	h.mustRefuse(t, []string{"customer-managed keys", "hostcrypt vm deallocate --name vm1"}, "disk", "move", "--name", "c1", "--resource-group", "rg2")
	h.mustRefuse(t, []string{"cannot move to another subscription"}, "disk", "move", "--name", "c1", "--resource-group", "rg2", "--subscription", other)
	require.Equal(t, before, show("c1"))
	h.ok("vm", "deallocate", "--name", "vm1")
	h.mustRefuse(t, []string{"cannot move to another subscription"}, "disk", "move", "--name", "c1", "--resource-group", "rg2", "--subscription", other)
	moved := placedJSON{}
	h.json(&moved, "disk", "move", "--name", "c1", "--resource-group", "rg2")
	require.Equal(t, "rg2", moved.ResourceGroup)
	require.Contains(t, moved.ID, "/resourceGroups/rg2/providers/Microsoft.Compute/disks/c1")
	h.ok("vm", "start", "--name", "vm1")
	// A platform-key disk moves to another subscription.
	h.ok("disk", "create", "--name", "p1", "--size", "16M")
	h.json(&moved, "disk", "move", "--name", "p1", "--resource-group", "other-rg", "--subscription", other)
	require.Equal(t, "/subscriptions/"+other+"/resourceGroups/other-rg/providers/Microsoft.Compute/disks/p1", moved.ID)

	// No double encryption on UltraSSD.
	h.mustRefuse(t, []string{"double encryption", "UltraSSD_LRS"}, "disk", "create", "--name", "u1", "--size", "16M", "--sku", "UltraSSD_LRS",
		"--disk-encryption-set", "des1", "--encryption-type", "EncryptionAtRestWithPlatformAndCustomerKeys")
	// Guest-level encryption: recorded, never cleared, no encryption at host.
	var a placedJSON
	h.json(&a, "disk", "create", "--name", "a1", "--size", "16M", "--ade", "true")
	require.True(t, a.ADE)
	h.mustRefuse(t, []string{"guest-level disk encryption", "encryption at host"}, "vm", "disk", "attach", "--vm-name", "vm1", "--name", "a1")
	h.mustRefuse(t, []string{"cannot be cleared"}, "disk", "update", "--name", "a1", "--ade", "false")
	h.mustRefuse(t, []string{"cannot get customer-managed keys"}, "disk", "update", "--name", "a1", "--disk-encryption-set", "des1")
	require.Equal(t, "a1,c1,p1,vm1_OsDisk", listNames("disk", "list"))
	a = show("a1")
	require.True(t, a.ADE)
	// A VM with the record runs without encryption at host, takes the ADE
	// disk, and never gets encryption at host.
	h.mustRefuse(t, []string{"--encryption-at-host false"}, "vm", "create", "--name", "vm2", "--os-disk-size", "8M", "--ade", "true")
	h.ok("vm", "create", "--name", "vm2", "--os-disk-size", "8M", "--ade", "true", "--encryption-at-host", "false")
	h.ok("vm", "disk", "attach", "--vm-name", "vm2", "--name", "a1")
	h.ok("vm", "deallocate", "--name", "vm2")
	h.mustRefuse(t, []string{"cannot get encryption at host"}, "vm", "update", "--name", "vm2", "--encryption-at-host", "true")
	var vm2 struct {
		placedJSON
		SecurityProfile struct {
			EncryptionAtHost bool `json:"encryptionAtHost"`
		} `json:"securityProfile"`
	}
	h.json(&vm2, "vm", "show", "--name", "vm2")
	require.True(t, vm2.ADE)
	require.False(t, vm2.SecurityProfile.EncryptionAtHost)

	// All of it survives a restart.
	h.stop(15)
	h.start()
	require.Equal(t, "rg2", show("c1").ResourceGroup)
	require.True(t, show("a1").ADE)
}
