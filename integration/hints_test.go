package integration

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRestrictionHintsWork meets every refusal of the restrictions whose
// message suggests a command, runs that command as printed, and then does
// what was refused: each hint is one a user can follow as it is written.
func TestRestrictionHintsWork(t *testing.T) {
	h := newHost(t, startKeystore(t))
	cmkVM(t, h) // vault1, des1 granted, CMK disk c1 on running vm1
	const other = "11111111-2222-3333-4444-555555555555"
	const def = "00000000-0000-0000-0000-000000000000"
	follow := func(want string, args ...string) {
		t.Helper()
		h.runHint(t, h.mustRefuse(t, []string{want}, args...))
	}

	// A customer-key disk of a running VM changes resource group only once
	// the VM is deallocated.
	follow("moves to another resource group only while", "disk", "move", "--name", "c1", "--resource-group", "rg2")
	h.ok("disk", "move", "--name", "c1", "--resource-group", "rg2")

	// To another subscription: platform keys first (which needs the VM
	// deallocated, as it is), and out of the VM of the old subscription.
	follow("cannot move to another subscription", "disk", "move", "--name", "c1", "--resource-group", "rg2", "--subscription", other)
	follow("a VM uses disks of its own subscription only", "disk", "move", "--name", "c1", "--resource-group", "rg2", "--subscription", other)
	h.ok("disk", "move", "--name", "c1", "--resource-group", "rg2", "--subscription", other)

	// Its keys change only while its VM is deallocated.
	h.ok("disk", "create", "--name", "c2", "--size", "16M", "--disk-encryption-set", "des1")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "c2")
	h.ok("vm", "start", "--name", "vm1")
	follow("to change its keys", "disk", "update", "--name", "c2", "--encryption-type", "EncryptionAtRestWithPlatformKey")
	h.ok("disk", "update", "--name", "c2", "--encryption-type", "EncryptionAtRestWithPlatformKey")

	// A disk in another subscription joins a VM once moved there.
	h.ok("disk", "create", "--name", "p3", "--size", "16M", "--subscription", other)
	follow("a VM uses disks of its own subscription", "vm", "disk", "attach", "--vm-name", "vm1", "--name", "p3")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "p3")

	// A customer-key snapshot moves to another subscription once on
	// platform keys.
	h.ok("disk", "create", "--name", "c4", "--size", "16M", "--disk-encryption-set", "des1")
	h.ok("snapshot", "create", "--name", "s4", "--source", "c4")
	follow("cannot move to another subscription", "snapshot", "move", "--name", "s4", "--resource-group", "rg2", "--subscription", other)
	h.ok("snapshot", "move", "--name", "s4", "--resource-group", "rg2", "--subscription", other)

	// Guest-level encryption: not on a customer-key disk (switch it to
	// platform keys first) ...
	follow("guest-level disk encryption (ADE) cannot be used on a disk with customer-managed keys", "disk", "update", "--name", "c4", "--ade", "true")
	h.ok("disk", "update", "--name", "c4", "--ade", "true")
	// ... nor on a disk of a VM with encryption at host (turned off while
	// deallocated).
	h.ok("disk", "create", "--name", "d5", "--size", "16M")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "d5")
	msg := h.mustRefuse(t, []string{"turn encryption at host off"}, "disk", "update", "--name", "d5", "--ade", "true")
	h.ok("vm", "deallocate", "--name", "vm1")
	h.runHint(t, msg)
	h.ok("disk", "update", "--name", "d5", "--ade", "true")
	// A VM that uses ADE takes no customer-key disk: platform keys first.
	h.ok("vm", "update", "--name", "vm1", "--ade", "true")
	h.ok("disk", "create", "--name", "c6", "--size", "16M", "--disk-encryption-set", "des1")
	follow("disks with customer-managed keys", "vm", "disk", "attach", "--vm-name", "vm1", "--name", "c6")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "c6")

	var d struct {
		Subscription string `json:"subscription"`
	}
	h.json(&d, "disk", "show", "--name", "p3")
	require.Equal(t, def, d.Subscription, "the hint moved p3 into the VM's subscription")
}
