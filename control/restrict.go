package control

// The restrictions that come with customer-managed keys, and the resource
// placement (subscription, resource group, location) some of them are about.
// Each check refuses before anything changes, with an error that states the
// rule and what to do instead. The rules are Azure's, as documented for
// managed disks with customer-managed keys, encryption at host and double
// encryption; the README's "Restrictions" section lists them.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/control/store"
)

// Resource types, as they appear in resource ids.
const (
	typeDisks     = "disks"
	typeVMs       = "virtualMachines"
	typeDES       = "diskEncryptionSets"
	typeSnapshots = "snapshots"
	typeImages    = "images"
)

// ultraCutoff is the date from which UltraSSD and PremiumV2 disks with
// 512-byte sectors support encryption at host; older ones need 4 KiB sectors.
var ultraCutoff = time.Date(2023, 5, 13, 0, 0, 0, 0, time.UTC)

// resourceID is the id of a resource of type typ at p.
func resourceID(p store.Placement, typ, name string) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/%s/%s", p.Subscription, p.ResourceGroup, typ, name)
}

// newPlacement checks a create request's placement and fills in the
// defaults: the default subscription, resource group "hostcrypt" and the
// host's location. Subscriptions and locations compare in lower case, as
// Azure's do.
func (h *Host) newPlacement(sub, rg, loc string) (store.Placement, error) {
	p := store.Placement{Subscription: strings.ToLower(sub), ResourceGroup: rg, Location: strings.ToLower(loc)}
	placementDefault(&p, h.cfg.Location)
	if err := checkSubscription(p.Subscription); err != nil {
		return p, err
	}
	if err := checkResourceGroup(p.ResourceGroup); err != nil {
		return p, err
	}
	if err := checkLocation(p.Location); err != nil {
		return p, err
	}
	return p, nil
}

// checkSubscription wants a subscription id in GUID form.
func checkSubscription(s string) error {
	ok := len(s) == 36
	for i := 0; ok && i < len(s); i++ {
		c := s[i]
		if i == 8 || i == 13 || i == 18 || i == 23 {
			ok = c == '-'
		} else {
			ok = c >= '0' && c <= '9' || c >= 'a' && c <= 'f'
		}
	}
	if !ok {
		return badRequest("subscription %q: give a subscription id, e.g. %s", s, api.DefaultSubscription)
	}
	return nil
}

// checkResourceGroup applies Azure's rule: 1-90 letters, digits, '_', '-',
// '.', '(' and ')', not ending with '.'.
func checkResourceGroup(rg string) error {
	ok := len(rg) >= 1 && len(rg) <= 90 && !strings.HasSuffix(rg, ".")
	for _, r := range rg {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-.()", r)) {
			ok = false
		}
	}
	if !ok {
		return badRequest("resource group %q: use 1 to 90 letters, digits, '_', '-', '.', '(' and ')', not ending with '.'", rg)
	}
	return nil
}

// checkLocation wants a region-like name: letters and digits.
func checkLocation(loc string) error {
	ok := len(loc) >= 1 && len(loc) <= 64
	for _, r := range loc {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			ok = false
		}
	}
	if !ok {
		return badRequest("location %q: use a region name of letters and digits, e.g. westeurope", loc)
	}
	return nil
}

func isCMK(encType string) bool {
	return encType == api.EncCustomerKey || encType == api.EncPlatformAndCustomerKey
}

// checkDoubleEncryptionSku: no double encryption on UltraSSD and PremiumV2.
func checkDoubleEncryptionSku(disk, sku string) error {
	if api.IsUltraOrV2(sku) {
		return notAllowed(http.StatusBadRequest, "disk %q is %s: double encryption (%s) is not supported on UltraSSD_LRS and PremiumV2_LRS disks; use %s, or a Premium_LRS disk for double encryption",
			disk, sku, api.EncPlatformAndCustomerKey, api.EncCustomerKey)
	}
	return nil
}

// checkHostEncryptionSku: encryption at host on UltraSSD and PremiumV2
// disks needs 4 KiB sectors, or 512-byte sectors on a disk created on or
// after 2023-05-13.
func checkHostEncryptionSku(d *store.Disk, vm string) error {
	if !api.IsUltraOrV2(d.Sku.Name) || d.LogicalSectorSize == 4096 || !d.TimeCreated.Before(ultraCutoff) {
		return nil
	}
	return notAllowed(http.StatusBadRequest, "VM %q has encryption at host, which %s disks support only with 4096-byte sectors, or 512-byte sectors when created on or after 2023-05-13; disk %q has %d-byte sectors and was created %s: use a disk created with --logical-sector-size 4096, or a VM without encryption at host",
		vm, d.Sku.Name, d.Name, d.LogicalSectorSize, d.TimeCreated.Format("2006-01-02"))
}

// checkCreateDisk checks a new disk against the restrictions and returns
// where it goes. des is the set the request names, or nil.
func (h *Host) checkCreateDisk(r api.CreateDiskRequest, des *store.DES) (store.Placement, error) {
	p, err := h.newPlacement(r.Subscription, r.ResourceGroup, r.Location)
	if err != nil {
		return p, err
	}
	if r.EncryptionType == api.EncPlatformAndCustomerKey {
		if err := checkDoubleEncryptionSku(r.Name, r.Sku); err != nil {
			return p, err
		}
	}
	if des != nil {
		if r.ADE {
			return p, adeRefusal("disk", r.Name, "customer-managed keys (a disk encryption set)", "leave out --disk-encryption-set")
		}
		if err := checkDESScope("disk", r.Name, p, des); err != nil {
			return p, err
		}
	}
	return p, nil
}

// checkDESScope: a disk uses a set of its own subscription and location.
func checkDESScope(kind, name string, p store.Placement, des *store.DES) error {
	if !strings.EqualFold(p.Location, des.Location) {
		return notAllowed(http.StatusBadRequest, "%s %q is in location %s but disk encryption set %q is in %s; a disk encryption set serves only its own location: use a set in %s",
			kind, name, p.Location, des.Name, des.Location, p.Location)
	}
	if !strings.EqualFold(p.Subscription, des.Subscription) {
		return notAllowed(http.StatusBadRequest, "%s %q is in subscription %s but disk encryption set %q is in %s; a disk encryption set serves only its own subscription: use a set of subscription %s",
			kind, name, p.Subscription, des.Name, des.Subscription, p.Subscription)
	}
	return nil
}

func adeRefusal(kind, name, what, instead string) *api.Error {
	return notAllowed(http.StatusBadRequest, "%s %q has used guest-level disk encryption (ADE); a %s that has ever used it cannot get %s: %s",
		kind, name, kind, what, instead)
}

// checkDiskKeys checks switching disk d to customer keys of des (nil: to
// platform keys).
func checkDiskKeys(r *store.Records, d *store.Disk, des *store.DES) error {
	if des == nil {
		return nil
	}
	if d.ADE {
		return adeRefusal("disk", d.Name, "customer-managed keys", "keep it on platform-managed keys")
	}
	if vm := r.VMs[d.ManagedBy]; vm != nil && vm.ADE {
		return adeRefusal("VM", vm.Name, "customer-managed keys on its disks", "keep disk "+d.Name+" on platform-managed keys, or detach it first")
	}
	return checkDESScope("disk", d.Name, d.Placement, des)
}

// checkDiskADE checks recording that disk d uses guest-level disk
// encryption (ade true) or clearing that record (false, never allowed once
// set).
func checkDiskADE(r *store.Records, d *store.Disk, ade bool) error {
	if !ade {
		if d.ADE {
			return notAllowed(http.StatusBadRequest, "disk %q has used guest-level disk encryption (ADE) and that record cannot be cleared: once used, a disk keeps it; create a new disk if it must get customer-managed keys or encryption at host", d.Name)
		}
		return nil
	}
	if d.ADE {
		return nil
	}
	if isCMK(d.Encryption.Type) {
		return notAllowed(http.StatusBadRequest, "disk %q uses customer-managed keys (%s); guest-level disk encryption (ADE) cannot be used on a disk with customer-managed keys: switch it to platform-managed keys first (hostcrypt disk update --name %s --encryption-type %s)",
			d.Name, d.Encryption.Type, d.Name, api.EncPlatformKey)
	}
	if vm := r.VMs[d.ManagedBy]; vm != nil && vm.SecurityProfile.EncryptionAtHost {
		return notAllowed(http.StatusBadRequest, "disk %q is attached to VM %q, which has encryption at host; guest-level disk encryption (ADE) cannot be used with encryption at host: detach the disk first, or turn encryption at host off (deallocate the VM, then hostcrypt vm update --name %s --encryption-at-host false)",
			d.Name, vm.Name, vm.Name)
	}
	return nil
}

// checkCreateVM checks a new VM and the disks it would get (already known
// to exist and be free) and returns where it goes.
func (h *Host) checkCreateVM(r *store.Records, req api.CreateVMRequest) (store.Placement, error) {
	p, err := h.newPlacement(req.Subscription, req.ResourceGroup, req.Location)
	if err != nil {
		return p, err
	}
	eah := req.EncryptionAtHost == nil || *req.EncryptionAtHost
	if req.ADE && eah {
		return p, notAllowed(http.StatusBadRequest, "VM %q uses guest-level disk encryption (ADE), and a VM that has ever used it cannot get encryption at host: create it with --encryption-at-host false", req.Name)
	}
	vm := &store.VM{Name: req.Name, Placement: p, SecurityProfile: store.SecurityProfile{EncryptionAtHost: eah}, ADE: req.ADE}
	names := []string{}
	if req.OsDisk != "" {
		names = append(names, req.OsDisk)
	}
	for _, dd := range req.DataDisks {
		names = append(names, dd.Name)
	}
	for _, n := range names {
		if err := checkAttach(vm, r.Disks[n]); err != nil {
			return p, err
		}
	}
	return p, nil
}

// checkAttach checks that disk d may be attached to vm.
func checkAttach(vm *store.VM, d *store.Disk) error {
	if d == nil {
		return nil // reported as not found by the caller's own checks
	}
	if !strings.EqualFold(d.Location, vm.Location) {
		return notAllowed(http.StatusBadRequest, "disk %q is in location %s and VM %q in %s; a VM uses disks of its own location: use a disk in %s", d.Name, d.Location, vm.Name, vm.Location, vm.Location)
	}
	if !strings.EqualFold(d.Subscription, vm.Subscription) {
		return notAllowed(http.StatusBadRequest, "disk %q is in subscription %s and VM %q in %s; a VM uses disks of its own subscription: move the disk there first (hostcrypt disk move --name %s --resource-group RG --subscription %s)",
			d.Name, d.Subscription, vm.Name, vm.Subscription, d.Name, vm.Subscription)
	}
	if vm.SecurityProfile.EncryptionAtHost {
		if d.ADE {
			return adeRefusal("disk", d.Name, "encryption at host", "attach it to a VM without encryption at host")
		}
		if err := checkHostEncryptionSku(d, vm.Name); err != nil {
			return err
		}
	}
	if vm.ADE && isCMK(d.Encryption.Type) {
		return adeRefusal("VM", vm.Name, "disks with customer-managed keys", "use disk "+d.Name+" with platform-managed keys (hostcrypt disk update --name "+d.Name+" --encryption-type "+api.EncPlatformKey+")")
	}
	return nil
}

// checkDESLimit: a subscription has at most DESLimit sets per location.
// It runs inside the transaction that adds a set, so it holds over every
// writer of the store.
func (h *Host) checkDESLimit(r *store.Records, p store.Placement) error {
	n := 0
	for _, d := range r.DES {
		if strings.EqualFold(d.Location, p.Location) && strings.EqualFold(d.Subscription, p.Subscription) {
			n++
		}
	}
	if n >= h.cfg.DESLimit {
		return errorf(http.StatusConflict, api.CodeQuotaExceeded, "subscription %s already has %d disk encryption sets in location %s, the most allowed per location and subscription; delete sets no disk uses (hostcrypt des delete), or share one set between disks",
			p.Subscription, n, p.Location)
	}
	return nil
}

// checkDESKeySwitch checks switching a set to a key of another vault.
func (h *Host) checkDESKeySwitch(ctx context.Context, des *store.DES, vault, keyURL string) error {
	if vault == des.ActiveKey.SourceVault.ID {
		return nil
	}
	return h.checkVaultLocation(ctx, des.Name, des.Location, keyURL,
		fmt.Sprintf("switch to a key of a vault in %s", des.Location))
}

// checkVaultLocation: a set and the vault of its key share a location.
func (h *Host) checkVaultLocation(ctx context.Context, des, loc, keyURL, instead string) error {
	vloc, err := h.keys.VaultLocation(ctx, keyURL)
	if errors.Is(err, keys.ErrVaultNotFound) {
		vault, _ := parseKeyURL(keyURL)
		return badRequest("the vault %q of key %s does not exist: check the key id (hostcrypt key show prints it as kid)", vault, keyURL)
	}
	if err != nil {
		return fmt.Errorf("finding the location of the vault of key %s: %w", keyURL, classified(h.keys, err))
	}
	if !strings.EqualFold(vloc, loc) {
		vault, _ := parseKeyURL(keyURL)
		return notAllowed(http.StatusBadRequest, "key vault %q is in location %s but disk encryption set %q is in %s; a disk encryption set and the vault of its key must be in the same location: %s",
			vault, vloc, des, loc, instead)
	}
	return nil
}

// checkCMKMove is the move rule of resources encrypted with customer-managed
// keys (disks; snapshots and images use it too): never to another
// subscription, and to another resource group only while unattached or while
// the VM they are attached to (vm, nil for none) is deallocated. Resources on
// platform-managed keys move freely.
func checkCMKMove(kind, name, encType string, from, to store.Placement, vm *store.VM) error {
	if !isCMK(encType) {
		return nil
	}
	if !strings.EqualFold(from.Subscription, to.Subscription) {
		if kind == "image" {
			// An image keeps the keys it was made with: it has no update.
			return notAllowed(http.StatusBadRequest, "image %q uses customer-managed keys (%s), and resources with customer-managed keys cannot move to another subscription: make the image again in subscription %s, from a disk or snapshot there",
				name, encType, to.Subscription)
		}
		return notAllowed(http.StatusBadRequest, "%s %q uses customer-managed keys (%s), and resources with customer-managed keys cannot move to another subscription: switch it to platform-managed keys first (hostcrypt %s update --name %s --encryption-type %s), move it, then give it a disk encryption set of subscription %s",
			kind, name, encType, kind, name, api.EncPlatformKey, to.Subscription)
	}
	if !strings.EqualFold(from.ResourceGroup, to.ResourceGroup) && vm != nil && vm.PowerState != api.PowerDeallocated {
		return notAllowed(http.StatusConflict, "%s %q uses customer-managed keys (%s) and is attached to VM %q, which is %s; a %s with customer-managed keys moves to another resource group only while unattached or while its VM is deallocated: deallocate the VM first (hostcrypt vm deallocate --name %s)",
			kind, name, encType, vm.Name, vm.PowerState, kind, vm.Name)
	}
	return nil
}

// moveTarget checks a move request and returns where the resource goes.
func (h *Host) moveTarget(kind, name string, from store.Placement, encType string, r api.MoveRequest, vm *store.VM) (store.Placement, error) {
	if r.ResourceGroup == "" {
		return from, badRequest("give the resource group to move %s %q to (--resource-group)", kind, name)
	}
	if r.Subscription == "" {
		r.Subscription = from.Subscription
	}
	to, err := h.newPlacement(r.Subscription, r.ResourceGroup, from.Location)
	if err != nil {
		return from, err
	}
	return to, checkCMKMove(kind, name, encType, from, to, vm)
}

// MoveDisk moves a disk to another resource group and, optionally, another
// subscription; its resource id changes with it, its data and keys do not.
func (h *Host) MoveDisk(ctx context.Context, name string, req api.MoveRequest) (*api.Disk, error) {
	var moved *store.Disk
	_, err := h.update(ctx, func(r *store.Records) error {
		d, ok := r.Disks[name]
		if !ok {
			return notFound("disk", name)
		}
		if err := converting(d); err != nil {
			return err
		}
		vm := r.VMs[d.ManagedBy]
		to, err := h.moveTarget("disk", name, d.Placement, d.Encryption.Type, req, vm)
		if err != nil {
			return err
		}
		if vm != nil && !strings.EqualFold(vm.Subscription, to.Subscription) {
			return notAllowed(http.StatusConflict, "disk %q is attached to VM %q of subscription %s, and a VM uses disks of its own subscription only: detach it first (hostcrypt vm disk detach --vm-name %s --name %s)",
				name, vm.Name, vm.Subscription, vm.Name, name)
		}
		d.Placement, d.ID = to, resourceID(to, typeDisks, name)
		moved = d
		return nil
	})
	if err != nil {
		return nil, err
	}
	h.log.Info("disk moved", "disk", name, "subscription", moved.Subscription, "resourceGroup", moved.ResourceGroup)
	return diskView(moved, h.liveNow()), nil
}

// checkVMUpdate checks changing a VM's encryption at host and its ADE record
// (nil: unchanged) against the restrictions, for a VM update: encryption at
// host not on a VM that has used ADE nor with an UltraSSD/PremiumV2 disk it
// does not support; ADE never cleared, and not set on a VM with encryption
// at host or with disks on customer-managed keys. UpdateVM applies the
// change when this returns nil.
func checkVMUpdate(r *store.Records, vm *store.VM, encryptionAtHost, ade *bool) error {
	next := *vm
	if encryptionAtHost != nil {
		next.SecurityProfile.EncryptionAtHost = *encryptionAtHost
	}
	if ade != nil {
		if vm.ADE && !*ade {
			return notAllowed(http.StatusBadRequest, "VM %q has used guest-level disk encryption (ADE) and that record cannot be cleared: once used, a VM keeps it", vm.Name)
		}
		next.ADE = vm.ADE || *ade
	}
	if next.ADE && next.SecurityProfile.EncryptionAtHost {
		if vm.ADE {
			return adeRefusal("VM", vm.Name, "encryption at host", "leave encryption at host off")
		}
		return notAllowed(http.StatusBadRequest, "VM %q has encryption at host; guest-level disk encryption (ADE) cannot be used with it: turn encryption at host off in the same update (--encryption-at-host false)", vm.Name)
	}
	for _, n := range vm.DiskNames() {
		if d := r.Disks[n]; d != nil {
			if err := checkAttach(&next, d); err != nil {
				return err
			}
		}
	}
	return nil
}
