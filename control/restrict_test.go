package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/internal/testenv"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type restrictFixture struct {
	*fixture
	clock *testenv.Clock
}

// newRestrictFixture is a host whose key service has identities (each one
// granted its key) and vaults vault1 (local) and vault2 (westeurope).
func newRestrictFixture(t *testing.T, tweak ...func(*Config)) *restrictFixture {
	f := newFixture(t)
	require.NoError(t, f.h.Shutdown())
	rf := &restrictFixture{fixture: f, clock: testenv.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	f.keys.AutoGrant().OnlyVaults(map[string]string{"vault1": "local", "vault2": "westeurope"})
	f.cfg.Now = rf.clock.Now
	for _, tw := range tweak {
		tw(&f.cfg)
	}
	var err error
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { f.h.Shutdown() })
	return rf
}

func kid(vault, key string) string {
	return "https://127.0.0.1:8443/vaults/" + vault + "/keys/" + key + "/0123abcd"
}

// snapshot is everything a refusal must leave alone: the state file, the
// stored disks and what the API shows.
func (f *restrictFixture) snapshot(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	raw, err := os.ReadFile(filepath.Join(f.cfg.StateDir, store.StateFile))
	if errors.Is(err, os.ErrNotExist) {
		raw = nil
	} else {
		require.NoError(t, err)
	}
	objs, err := f.cfg.Storage.List(ctx, "")
	require.NoError(t, err)
	shown, err := json.Marshal([]any{f.disks(t), f.vms(t), f.sets(t), f.tree.list(), f.snapshots(t), f.images(t)})
	require.NoError(t, err)
	return string(raw) + "\n" + fmt.Sprint(objs) + "\n" + string(shown)
}

// refused runs call, which must be refused with status and a message
// holding every one of want, and must change nothing.
func (f *restrictFixture) refused(t *testing.T, status int, call func() error, want ...string) {
	t.Helper()
	before := f.snapshot(t)
	err := call()
	var e *api.Error
	require.True(t, errors.As(err, &e), "want a refusal, got %v", err)
	require.Equal(t, status, e.Status, e.Message)
	for _, w := range want {
		require.Contains(t, e.Message, w)
	}
	require.Equal(t, before, f.snapshot(t), "a refused request changed something")
}

func TestPlacementDefaultsAndIDs(t *testing.T) {
	f := newRestrictFixture(t)
	ctx := context.Background()
	d, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20})
	require.NoError(t, err)
	require.Equal(t, api.DefaultSubscription, d.Subscription)
	require.Equal(t, "hostcrypt", d.ResourceGroup)
	require.Equal(t, "local", d.Location)
	require.Equal(t, "/subscriptions/"+api.DefaultSubscription+"/resourceGroups/hostcrypt/providers/Microsoft.Compute/disks/d1", d.ID)

	sub := "11111111-2222-3333-4444-555555555555"
	d, err = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d2", SizeBytes: 8 << 20, Subscription: sub, ResourceGroup: "rg-A", Location: "WestEurope"})
	require.NoError(t, err)
	require.Equal(t, "westeurope", d.Location)
	require.Equal(t, "/subscriptions/"+sub+"/resourceGroups/rg-A/providers/Microsoft.Compute/disks/d2", d.ID)

	vm, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, Subscription: sub, ResourceGroup: "rg-B", Location: "westeurope"})
	require.NoError(t, err)
	require.Equal(t, "/subscriptions/"+sub+"/resourceGroups/rg-B/providers/Microsoft.Compute/virtualMachines/vm1", vm.ID)
	osd, err := f.h.ShowDisk("vm1_OsDisk")
	require.NoError(t, err)
	require.Equal(t, []string{sub, "rg-B", "westeurope"}, []string{osd.Subscription, osd.ResourceGroup, osd.Location}, "a new OS disk goes where its VM goes")

	des, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k"), ResourceGroup: "keys"})
	require.NoError(t, err)
	require.Equal(t, "/subscriptions/"+api.DefaultSubscription+"/resourceGroups/keys/providers/Microsoft.Compute/diskEncryptionSets/des1", des.ID)
	require.Equal(t, "local", des.Location)

	for _, c := range []struct {
		r    api.CreateDiskRequest
		want string
	}{
		{api.CreateDiskRequest{Name: "x", SizeBytes: 8 << 20, Subscription: "mine"}, "subscription"},
		{api.CreateDiskRequest{Name: "x", SizeBytes: 8 << 20, ResourceGroup: "rg/1"}, "resource group"},
		{api.CreateDiskRequest{Name: "x", SizeBytes: 8 << 20, ResourceGroup: "rg."}, "resource group"},
		{api.CreateDiskRequest{Name: "x", SizeBytes: 8 << 20, Location: "west europe"}, "location"},
	} {
		f.refused(t, http.StatusBadRequest, func() error { _, err := f.h.CreateDisk(ctx, c.r); return err }, c.want)
	}
	// A VM uses disks of its own location and subscription.
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm2", OsDisk: "d1", Location: "westeurope", Subscription: sub})
		return err
	}, "location local", "use a disk in westeurope")
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: "d1"})
		return err
	}, "location")
	// A disk uses a set of its own location.
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "x", SizeBytes: 8 << 20, DiskEncryptionSet: "des1", Location: "westeurope"})
		return err
	}, "serves only its own location")
}

// TestOldStateLoadsWithDefaults: a state file written before resources had a
// placement loads with the defaults, and the ids it holds stay valid.
func TestOldStateLoadsWithDefaults(t *testing.T) {
	f := newRestrictFixture(t)
	require.NoError(t, f.h.Shutdown())
	old := `{"version":1,
	 "disks":{"d1":{"name":"d1","id":"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/hostcrypt/providers/Microsoft.Compute/disks/d1","location":"local","sku":{"name":"Premium_LRS"},"diskSizeBytes":8388608,"logicalSectorSize":512,"encryption":{"type":"EncryptionAtRestWithPlatformKey"},"diskState":"Unattached","storagePrefix":"disks/x"}},
	 "vms":{"vm1":{"name":"vm1","id":"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/hostcrypt/providers/Microsoft.Compute/virtualMachines/vm1","location":"local","powerState":"deallocated","securityProfile":{"encryptionAtHost":true},"storageProfile":{"osDisk":{"name":"d0","caching":"ReadWrite"},"dataDisks":[]}}},
	 "diskEncryptionSets":{"des1":{"name":"des1","id":"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/hostcrypt/providers/Microsoft.Compute/diskEncryptionSets/des1","encryptionType":"EncryptionAtRestWithCustomerKey","activeKey":{"sourceVault":{"id":"vault1"},"keyUrl":"` + kid("vault1", "k") + `"},"previousKeys":[]}},
	 "credentials":{}}`
	require.NoError(t, os.WriteFile(filepath.Join(f.cfg.StateDir, store.StateFile), []byte(old), 0o600))
	h, err := New(f.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { h.Shutdown() })
	d, err := h.ShowDisk("d1")
	require.NoError(t, err)
	defaults := []string{api.DefaultSubscription, api.DefaultResourceGroup, "local"}
	require.Equal(t, defaults, []string{d.Subscription, d.ResourceGroup, d.Location})
	require.False(t, d.ADE)
	vm, err := h.ShowVM("vm1")
	require.NoError(t, err)
	require.Equal(t, defaults, []string{vm.Subscription, vm.ResourceGroup, vm.Location})
	r, err := h.load(context.Background())
	require.NoError(t, err)
	des, ok := desByID(r, resourceID(store.Placement{Subscription: api.DefaultSubscription, ResourceGroup: api.DefaultResourceGroup}, typeDES, "des1"))
	require.True(t, ok, "the id a disk of an old state holds still finds its set")
	require.Equal(t, defaults, []string{des.Subscription, des.ResourceGroup, des.Location}, "the set gets the host's location")
}

func TestMoveDisk(t *testing.T) {
	f := newRestrictFixture(t)
	ctx := context.Background()
	other := "11111111-2222-3333-4444-555555555555"
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k")})
	require.NoError(t, err)
	f.mustDisk(t, api.CreateDiskRequest{Name: "cmk", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})
	_, err = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "double", SizeBytes: 8 << 20, DiskEncryptionSet: "des1", EncryptionType: api.EncPlatformAndCustomerKey})
	require.NoError(t, err)
	f.mustDisk(t, api.CreateDiskRequest{Name: "pmk", SizeBytes: 8 << 20})
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "cmk"}, {Name: "pmk"}}})
	move := func(name, rg, sub string) func() error {
		return func() error {
			_, err := f.h.MoveDisk(ctx, name, api.MoveRequest{ResourceGroup: rg, Subscription: sub})
			return err
		}
	}

	// A CMK disk of a running, then a stopped, VM stays in its group.
	f.refused(t, http.StatusConflict, move("cmk", "rg2", ""), "customer-managed keys", `VM "vm1", which is running`, "hostcrypt vm deallocate --name vm1")
	_, err = f.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)
	f.refused(t, http.StatusConflict, move("cmk", "rg2", ""), "which is stopped", "only while unattached or while its VM is deallocated")
	// Never to another subscription, attached or not, single or double.
	f.refused(t, http.StatusBadRequest, move("cmk", "rg2", other), "cannot move to another subscription", "--encryption-type "+api.EncPlatformKey)
	f.refused(t, http.StatusBadRequest, move("double", "rg2", other), "cannot move to another subscription")
	f.refused(t, http.StatusBadRequest, move("double", "hostcrypt", other), "cannot move to another subscription")
	f.refused(t, http.StatusBadRequest, move("pmk", "rg/2", ""), "resource group")
	f.refused(t, http.StatusBadRequest, move("pmk", "", ""), "--resource-group")
	f.refused(t, http.StatusNotFound, move("nope", "rg2", ""))

	// Deallocated: the CMK disk moves; its id follows, its keys stay.
	_, err = f.h.DeallocateVM(ctx, "vm1")
	require.NoError(t, err)
	before, err := f.h.ShowDisk("cmk")
	require.NoError(t, err)
	d, err := f.h.MoveDisk(ctx, "cmk", api.MoveRequest{ResourceGroup: "rg2"})
	require.NoError(t, err)
	require.Equal(t, "rg2", d.ResourceGroup)
	require.Equal(t, "/subscriptions/"+api.DefaultSubscription+"/resourceGroups/rg2/providers/Microsoft.Compute/disks/cmk", d.ID)
	require.Equal(t, before.KeyID, d.KeyID)
	require.Equal(t, before.Encryption, d.Encryption)
	// Unattached, it moves too; the VM starts with its moved disk.
	d, err = f.h.MoveDisk(ctx, "double", api.MoveRequest{ResourceGroup: "rg3"})
	require.NoError(t, err)
	require.Equal(t, "rg3", d.ResourceGroup)
	_, err = f.h.StartVM(ctx, "vm1")
	require.NoError(t, err)

	// Platform-key disks move freely: while their VM runs, and (unattached)
	// to another subscription.
	d, err = f.h.MoveDisk(ctx, "pmk", api.MoveRequest{ResourceGroup: "rg4"})
	require.NoError(t, err)
	require.Equal(t, "rg4", d.ResourceGroup)
	_, err = f.h.DetachDisk(ctx, "vm1", "pmk")
	require.NoError(t, err)
	d, err = f.h.MoveDisk(ctx, "pmk", api.MoveRequest{ResourceGroup: "rg5", Subscription: other})
	require.NoError(t, err)
	require.Equal(t, "/subscriptions/"+other+"/resourceGroups/rg5/providers/Microsoft.Compute/disks/pmk", d.ID)

	// The moves survive a restart.
	f.restart(t, true)
	d, err = f.h.ShowDisk("cmk")
	require.NoError(t, err)
	require.Equal(t, "rg2", d.ResourceGroup)
}

// TestCMKMoveRule is the move rule on its own, as snapshots and images will
// use it.
func TestCMKMoveRule(t *testing.T) {
	home := store.Placement{Subscription: api.DefaultSubscription, ResourceGroup: "rg1", Location: "local"}
	otherRG := store.Placement{Subscription: api.DefaultSubscription, ResourceGroup: "rg2", Location: "local"}
	otherSub := store.Placement{Subscription: "11111111-2222-3333-4444-555555555555", ResourceGroup: "rg1", Location: "local"}
	running := &store.VM{Name: "vm", PowerState: api.PowerRunning}
	deallocated := &store.VM{Name: "vm", PowerState: api.PowerDeallocated}
	for _, c := range []struct {
		enc    string
		to     store.Placement
		vm     *store.VM
		status int // 0: allowed
	}{
		{api.EncPlatformKey, otherSub, running, 0},
		{api.EncPlatformKey, otherRG, running, 0},
		{api.EncCustomerKey, otherRG, nil, 0},
		{api.EncCustomerKey, otherRG, deallocated, 0},
		{api.EncCustomerKey, otherRG, running, http.StatusConflict},
		{api.EncPlatformAndCustomerKey, otherRG, running, http.StatusConflict},
		{api.EncCustomerKey, otherSub, nil, http.StatusBadRequest},
		{api.EncPlatformAndCustomerKey, otherSub, deallocated, http.StatusBadRequest},
	} {
		err := checkCMKMove("snapshot", "s1", c.enc, home, c.to, c.vm)
		if c.status == 0 {
			require.NoError(t, err, "%+v", c)
			continue
		}
		requireCode(t, err, c.status)
		require.Contains(t, err.Error(), `snapshot "s1"`)
	}
}

func TestDESVaultLocation(t *testing.T) {
	f := newRestrictFixture(t)
	ctx := context.Background()
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault2", "k")})
		return err
	}, `key vault "vault2" is in location westeurope`, `disk encryption set "des1" is in local`, "same location", "--location")
	// An unknown vault is refused too.
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("novault", "k")})
		return err
	}, `the vault "novault"`, "does not exist")

	des, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault2", "k"), Location: "westeurope"})
	require.NoError(t, err)
	require.Equal(t, "westeurope", des.Location)
	f.mustDES(t, api.CreateDESRequest{Name: "des2", KeyURL: kid("vault1", "k")})
	f.mustDisk(t, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "des2"})

	// Switching a set's key to a vault elsewhere is refused; within the
	// vault, or to another vault of the same location, it is not.
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.UpdateDES(ctx, "des2", api.UpdateDESRequest{KeyURL: kid("vault2", "k")})
		return err
	}, `key vault "vault2" is in location westeurope`, "switch to a key of a vault in local")
	f.keys.SetVault("vault3", "LOCAL")
	des, err = f.h.UpdateDES(ctx, "des2", api.UpdateDESRequest{KeyURL: kid("vault3", "k")})
	require.NoError(t, err)
	require.Equal(t, kid("vault3", "k"), des.ActiveKey.KeyURL)
	d, err := f.h.ShowDisk("c1")
	require.NoError(t, err)
	require.Equal(t, kid("vault3", "k"), d.KeyID)
}

func TestDESLimit(t *testing.T) {
	f := newRestrictFixture(t, func(c *Config) { c.DESLimit = 2 })
	ctx := context.Background()
	for _, n := range []string{"des1", "des2"} {
		_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: n, KeyURL: kid("vault1", "k")})
		require.NoError(t, err)
	}
	f.refused(t, http.StatusConflict, func() error {
		_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des3", KeyURL: kid("vault1", "k")})
		return err
	}, "already has 2 disk encryption sets in location local", "the most allowed per location and subscription", "hostcrypt des delete")
	// The limit is per location and per subscription.
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des3", KeyURL: kid("vault2", "k"), Location: "westeurope"})
	require.NoError(t, err)
	f.mustDES(t, api.CreateDESRequest{Name: "des4", KeyURL: kid("vault1", "k"), Subscription: "11111111-2222-3333-4444-555555555555"})
	// Deleting one makes room.
	require.NoError(t, f.h.DeleteDES(ctx, "des1"))
	f.mustDES(t, api.CreateDESRequest{Name: "des5", KeyURL: kid("vault1", "k")})
}

// TestDESLimitDefault: without the test hook the limit is 5000.
func TestDESLimitDefault(t *testing.T) {
	f := newRestrictFixture(t)
	ctx := context.Background()
	// 4999 sets, put in place directly: creating them one by one would
	// only test the loop.
	f.setRecords(t, func(r *store.Records) {
		for i := range DefaultDESLimit - 1 {
			n := fmt.Sprintf("bulk%04d", i)
			r.DES[n] = &store.DES{Name: n, Placement: store.Placement{Location: "local", Subscription: api.DefaultSubscription, ResourceGroup: api.DefaultResourceGroup}}
		}
	})
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "last", KeyURL: kid("vault1", "k")})
	require.NoError(t, err, "the 5000th set is allowed")
	_, err = f.h.CreateDES(ctx, api.CreateDESRequest{Name: "over", KeyURL: kid("vault1", "k")})
	requireCode(t, err, http.StatusConflict)
	require.ErrorContains(t, err, "already has 5000 disk encryption sets")
}

func TestUltraAndPremiumV2(t *testing.T) {
	f := newRestrictFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k")})
	require.NoError(t, err)
	f.mustDES(t, api.CreateDESRequest{Name: "dbl", KeyURL: kid("vault1", "k"), EncryptionType: api.EncPlatformAndCustomerKey})

	// No double encryption, at create (explicit, or from the set) or later.
	for _, sku := range []string{"UltraSSD_LRS", "PremiumV2_LRS"} {
		f.refused(t, http.StatusBadRequest, func() error {
			_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "u", SizeBytes: 8 << 20, Sku: sku, DiskEncryptionSet: "des1", EncryptionType: api.EncPlatformAndCustomerKey})
			return err
		}, sku, "double encryption", "use "+api.EncCustomerKey)
		f.refused(t, http.StatusBadRequest, func() error {
			_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "u", SizeBytes: 8 << 20, Sku: sku, DiskEncryptionSet: "dbl"})
			return err
		}, "double encryption")
	}
	f.mustDisk(t, api.CreateDiskRequest{Name: "u1", SizeBytes: 8 << 20, Sku: "UltraSSD_LRS", DiskEncryptionSet: "des1"})
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.UpdateDisk(ctx, "u1", api.UpdateDiskRequest{EncryptionType: api.EncPlatformAndCustomerKey})
		return err
	}, "double encryption", "UltraSSD_LRS")

	// Encryption at host: 4 KiB sectors, or 512-byte sectors from 2023-05-13.
	f.clock.Set(time.Date(2023, 5, 12, 23, 59, 0, 0, time.UTC))
	for _, c := range []struct {
		name, sku string
		sector    int
	}{{"old512", "UltraSSD_LRS", 512}, {"oldv2", "PremiumV2_LRS", 512}, {"old4k", "UltraSSD_LRS", 4096}} {
		_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: c.name, SizeBytes: 8 << 20, Sku: c.sku, LogicalSectorSize: c.sector})
		require.NoError(t, err)
	}
	f.clock.Set(time.Date(2023, 5, 13, 0, 0, 0, 0, time.UTC))
	f.mustDisk(t, api.CreateDiskRequest{Name: "new512", SizeBytes: 8 << 20, Sku: "PremiumV2_LRS"})
	f.clock.Set(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))

	for _, n := range []string{"old512", "oldv2"} {
		f.refused(t, http.StatusBadRequest, func() error {
			_, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: n}}})
			return err
		}, `disk "`+n+`" has 512-byte sectors and was created 2023-05-12`, "on or after 2023-05-13", "--logical-sector-size 4096")
		f.refused(t, http.StatusBadRequest, func() error {
			_, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDisk: n})
			return err
		}, "encryption at host")
	}
	vm, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "old4k"}, {Name: "new512"}}})
	require.NoError(t, err)
	require.True(t, vm.SecurityProfile.EncryptionAtHost)
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: "old512"})
		return err
	}, "encryption at host", "old512")
}

func TestGuestEncryptionFlag(t *testing.T) {
	f := newRestrictFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k")})
	require.NoError(t, err)

	// Disk create: no set for a disk with the flag.
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "a", SizeBytes: 8 << 20, ADE: true, DiskEncryptionSet: "des1"})
		return err
	}, "guest-level disk encryption (ADE)", "customer-managed keys", "leave out --disk-encryption-set")
	d, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "ade1", SizeBytes: 8 << 20, ADE: true})
	require.NoError(t, err)
	require.True(t, d.ADE)
	f.mustDisk(t, api.CreateDiskRequest{Name: "ade2", SizeBytes: 8 << 20})
	d, err = f.h.UpdateDisk(ctx, "ade2", api.UpdateDiskRequest{ADE: ptr(true)})
	require.NoError(t, err)
	require.True(t, d.ADE)

	// Never cleared; no customer keys later; no encryption at host.
	for _, n := range []string{"ade1", "ade2"} {
		f.refused(t, http.StatusBadRequest, func() error {
			_, err := f.h.UpdateDisk(ctx, n, api.UpdateDiskRequest{ADE: ptr(false)})
			return err
		}, "cannot be cleared")
		f.refused(t, http.StatusBadRequest, func() error {
			_, err := f.h.UpdateDisk(ctx, n, api.UpdateDiskRequest{DiskEncryptionSet: "des1"})
			return err
		}, "has ever used it cannot get customer-managed keys")
		f.refused(t, http.StatusBadRequest, func() error {
			_, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDisk: n})
			return err
		}, "cannot get encryption at host", "a VM without encryption at host")
	}
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20})
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: "ade1"})
		return err
	}, `disk "ade1" has used guest-level disk encryption`, "encryption at host")
	// The flag cannot go on a disk with customer keys, or one attached to a
	// VM with encryption at host.
	f.mustDisk(t, api.CreateDiskRequest{Name: "cmk", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.UpdateDisk(ctx, "cmk", api.UpdateDiskRequest{ADE: ptr(true)})
		return err
	}, "uses customer-managed keys", "--encryption-type "+api.EncPlatformKey)
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.UpdateDisk(ctx, "vm1_OsDisk", api.UpdateDiskRequest{ADE: ptr(true)})
		return err
	}, `attached to VM "vm1", which has encryption at host`)
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.UpdateDisk(ctx, "ade1", api.UpdateDiskRequest{ADE: ptr(true), SizeBytes: 16 << 20})
		return err
	}, "an update of its own")

	// A VM with the flag: no encryption at host, no disks with customer keys.
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm2", OsDiskSizeBytes: 8 << 20, ADE: true})
		return err
	}, `VM "vm2" uses guest-level disk encryption`, "--encryption-at-host false")
	// Without encryption at host, a VM with the record is created.
	vm, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm2", OsDiskSizeBytes: 8 << 20, ADE: true, EncryptionAtHost: ptr(false)})
	require.NoError(t, err)
	require.True(t, vm.ADE)
	osd, err := f.h.ShowDisk("vm2_OsDisk")
	require.NoError(t, err)
	require.True(t, osd.ADE, "the new OS disk of an ADE VM is an ADE disk")
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.AttachDisk(ctx, "vm2", api.AttachRequest{Disk: "cmk"})
		return err
	}, `VM "vm2" has used guest-level disk encryption`, "customer-managed keys")
	_, err = f.h.AttachDisk(ctx, "vm2", api.AttachRequest{Disk: "ade1"})
	require.NoError(t, err, "an ADE disk goes on a VM without encryption at host")
	f.mustDisk(t, api.CreateDiskRequest{Name: "plain", SizeBytes: 8 << 20})
	_, err = f.h.AttachDisk(ctx, "vm2", api.AttachRequest{Disk: "plain"})
	require.NoError(t, err)
	_, err = f.h.DeallocateVM(ctx, "vm2")
	require.NoError(t, err)
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.UpdateDisk(ctx, "plain", api.UpdateDiskRequest{DiskEncryptionSet: "des1"})
		return err
	}, `VM "vm2" has used guest-level disk encryption`)

	// VM update: encryption at host stays off, the record stays.
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.UpdateVM(ctx, "vm2", api.UpdateVMRequest{EncryptionAtHost: ptr(true)})
		return err
	}, "cannot get encryption at host")
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.UpdateVM(ctx, "vm2", api.UpdateVMRequest{ADE: ptr(false)})
		return err
	}, "cannot be cleared")
	// vm1 (encryption at host) gets the record only with encryption at host
	// turned off in the same update.
	_, err = f.h.DeallocateVM(ctx, "vm1")
	require.NoError(t, err)
	f.refused(t, http.StatusBadRequest, func() error {
		_, err := f.h.UpdateVM(ctx, "vm1", api.UpdateVMRequest{ADE: ptr(true)})
		return err
	}, "--encryption-at-host false")
	vm, err = f.h.UpdateVM(ctx, "vm1", api.UpdateVMRequest{ADE: ptr(true), EncryptionAtHost: ptr(false)})
	require.NoError(t, err)
	require.True(t, vm.ADE)
	require.False(t, vm.SecurityProfile.EncryptionAtHost)

	// The record survives a restart.
	f.restart(t, true)
	d, err = f.h.ShowDisk("ade2")
	require.NoError(t, err)
	require.True(t, d.ADE)
	require.True(t, strings.HasSuffix(d.ID, "/disks/ade2"))
	vm, err = f.h.ShowVM("vm2")
	require.NoError(t, err)
	require.True(t, vm.ADE)
}

// TestVMUpdateRule is the check a VM update runs before it turns encryption
// at host on or records ADE.
func TestVMUpdateRule(t *testing.T) {
	f := newRestrictFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k")})
	require.NoError(t, err)
	f.mustDisk(t, api.CreateDiskRequest{Name: "cmk", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})
	f.clock.Set(time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC))
	f.mustDisk(t, api.CreateDiskRequest{Name: "ultra", SizeBytes: 8 << 20, Sku: "UltraSSD_LRS"})
	_, err = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "ade", SizeBytes: 8 << 20, ADE: true})
	require.NoError(t, err)
	yes, no := ptr(true), ptr(false)
	vm := func(eah, ade bool, disks ...string) *store.VM {
		v := &store.VM{Name: "vm", Placement: store.Placement{Location: "local", Subscription: api.DefaultSubscription, ResourceGroup: api.DefaultResourceGroup},
			SecurityProfile: store.SecurityProfile{EncryptionAtHost: eah}, ADE: ade,
			StorageProfile: store.StorageProfile{OsDisk: store.AttachedDisk{Name: disks[0]}}}
		for _, d := range disks[1:] {
			v.StorageProfile.DataDisks = append(v.StorageProfile.DataDisks, store.AttachedDisk{Name: d})
		}
		return v
	}
	r := f.records(t)
	for _, c := range []struct {
		name     string
		vm       *store.VM
		eah, ade *bool
		want     string // "" allowed
	}{
		{"eah on, plain disks", vm(false, false, "cmk"), yes, nil, ""},
		{"eah on, ADE VM", vm(false, true, "cmk"), yes, nil, "cannot get encryption at host"},
		{"eah on, ADE disk", vm(false, false, "ade"), yes, nil, `disk "ade" has used guest-level disk encryption`},
		{"eah on, old ultra 512", vm(false, false, "ultra"), yes, nil, "on or after 2023-05-13"},
		{"ADE on an eah VM", vm(true, false, "ultra"), nil, yes, "turn encryption at host off"},
		{"ADE with eah off together", vm(true, false, "ade"), no, yes, ""},
		{"ADE on a VM with a CMK disk", vm(false, false, "ade", "cmk"), nil, yes, "disks with customer-managed keys"},
		{"ADE cleared", vm(false, true, "ade"), nil, no, "cannot be cleared"},
		{"ADE set again", vm(false, true, "ade"), nil, yes, ""},
	} {
		err := checkVMUpdate(r, c.vm, c.eah, c.ade)
		if c.want == "" {
			require.NoError(t, err, c.name)
			continue
		}
		requireCode(t, err, http.StatusBadRequest)
		require.ErrorContains(t, err, c.want, c.name)
	}
}
