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
)

// Placement defaults: a resource created without them lands here.
const (
	DefaultSubscription  = "00000000-0000-0000-0000-000000000000"
	DefaultResourceGroup = "hostcrypt"
)

// DefaultDESLimit is how many disk encryption sets one subscription may
// have in one location.
const DefaultDESLimit = 5000

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

// VaultLocations tells in which location a key's vault is. The host's key
// service implements it; a Keys without it (unit tests' fakes) skips the
// vault location rule.
type VaultLocations interface {
	// VaultLocation returns the location of the vault keyURL names, or an
	// error wrapping ErrVaultNotFound when there is no such vault.
	VaultLocation(ctx context.Context, keyURL string) (string, error)
}

// ErrVaultNotFound: the vault a key id names does not exist.
var ErrVaultNotFound = errors.New("vault not found")

// placement is where a resource lives.
type placement struct {
	Subscription, ResourceGroup, Location string
}

func (p placement) id(typ, name string) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/%s/%s", p.Subscription, p.ResourceGroup, typ, name)
}

func (d *Disk) placement() placement {
	return placement{Subscription: d.Subscription, ResourceGroup: d.ResourceGroup, Location: d.Location}
}

func (v *VM) placement() placement {
	return placement{Subscription: v.Subscription, ResourceGroup: v.ResourceGroup, Location: v.Location}
}

func (s *DiskEncryptionSet) placement() placement {
	return placement{Subscription: s.Subscription, ResourceGroup: s.ResourceGroup, Location: s.Location}
}

// newPlacement checks a create request's placement and fills in the
// defaults: the default subscription, resource group "hostcrypt" and the
// host's location. Subscriptions and locations compare in lower case, as
// Azure's do.
func (h *Host) newPlacement(sub, rg, loc string) (placement, error) {
	p := placement{Subscription: strings.ToLower(sub), ResourceGroup: rg, Location: strings.ToLower(loc)}
	if p.Subscription == "" {
		p.Subscription = DefaultSubscription
	}
	if p.ResourceGroup == "" {
		p.ResourceGroup = DefaultResourceGroup
	}
	if p.Location == "" {
		p.Location = h.cfg.Location
	}
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
		return badRequest("subscription %q: give a subscription id, e.g. %s", s, DefaultSubscription)
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

// fillPlacement gives the resources of a state file written before they had
// a placement the defaults, which are also what their ids already say.
func (s *state) fillPlacement(loc string) {
	fill := func(sub, rg, l *string) {
		if *sub == "" {
			*sub = DefaultSubscription
		}
		if *rg == "" {
			*rg = DefaultResourceGroup
		}
		if *l == "" {
			*l = loc
		}
	}
	for _, d := range s.Disks {
		fill(&d.Subscription, &d.ResourceGroup, &d.Location)
	}
	for _, v := range s.VMs {
		fill(&v.Subscription, &v.ResourceGroup, &v.Location)
	}
	for _, d := range s.DES {
		fill(&d.Subscription, &d.ResourceGroup, &d.Location)
	}
}

func notAllowed(status int, format string, args ...any) *Error {
	return errorf(status, "OperationNotAllowed", format, args...)
}

func isCMK(encType string) bool {
	return encType == EncCustomerKey || encType == EncPlatformAndCustomerKey
}

func isUltraOrV2(sku string) bool { return sku == "UltraSSD_LRS" || sku == "PremiumV2_LRS" }

// checkDoubleEncryptionSku: no double encryption on UltraSSD and PremiumV2.
func checkDoubleEncryptionSku(disk, sku string) error {
	if isUltraOrV2(sku) {
		return notAllowed(http.StatusBadRequest, "disk %q is %s: double encryption (%s) is not supported on UltraSSD_LRS and PremiumV2_LRS disks; use %s, or a Premium_LRS disk for double encryption",
			disk, sku, EncPlatformAndCustomerKey, EncCustomerKey)
	}
	return nil
}

// checkHostEncryptionSku: encryption at host on UltraSSD and PremiumV2
// disks needs 4 KiB sectors, or 512-byte sectors on a disk created on or
// after 2023-05-13.
func checkHostEncryptionSku(d *Disk, vm string) error {
	if !isUltraOrV2(d.Sku.Name) || d.LogicalSectorSize == 4096 || !d.TimeCreated.Before(ultraCutoff) {
		return nil
	}
	return notAllowed(http.StatusBadRequest, "VM %q has encryption at host, which %s disks support only with 4096-byte sectors, or 512-byte sectors when created on or after 2023-05-13; disk %q has %d-byte sectors and was created %s: use a disk created with --logical-sector-size 4096, or a VM without encryption at host",
		vm, d.Sku.Name, d.Name, d.LogicalSectorSize, d.TimeCreated.Format("2006-01-02"))
}

// checkCreateDisk checks a new disk against the restrictions and returns
// where it goes. des is the set the request names, or nil.
func (h *Host) checkCreateDisk(r CreateDiskRequest, des *DiskEncryptionSet) (placement, error) {
	p, err := h.newPlacement(r.Subscription, r.ResourceGroup, r.Location)
	if err != nil {
		return p, err
	}
	if r.EncryptionType == EncPlatformAndCustomerKey {
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
func checkDESScope(kind, name string, p placement, des *DiskEncryptionSet) error {
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

func adeRefusal(kind, name, what, instead string) *Error {
	return notAllowed(http.StatusBadRequest, "%s %q has used guest-level disk encryption (ADE); a %s that has ever used it cannot get %s: %s",
		kind, name, kind, what, instead)
}

// checkDiskKeys checks switching disk d to customer keys of des (nil: to
// platform keys).
func (h *Host) checkDiskKeys(d *Disk, des *DiskEncryptionSet) error {
	if des == nil {
		return nil
	}
	if d.ADE {
		return adeRefusal("disk", d.Name, "customer-managed keys", "keep it on platform-managed keys")
	}
	if vm := h.st.VMs[d.ManagedBy]; vm != nil && vm.ADE {
		return adeRefusal("VM", vm.Name, "customer-managed keys on its disks", "keep disk "+d.Name+" on platform-managed keys, or detach it first")
	}
	return checkDESScope("disk", d.Name, d.placement(), des)
}

// setDiskADE records that a disk uses guest-level disk encryption. The flag
// is never cleared: once used, a disk counts as an ADE disk for good.
func (h *Host) setDiskADE(d *Disk, ade bool) (*Disk, error) {
	if !ade {
		if d.ADE {
			return nil, notAllowed(http.StatusBadRequest, "disk %q has used guest-level disk encryption (ADE) and that record cannot be cleared: once used, a disk keeps it; create a new disk if it must get customer-managed keys or encryption at host", d.Name)
		}
		return h.showDisk(d), nil
	}
	if d.ADE {
		return h.showDisk(d), nil
	}
	if isCMK(d.Encryption.Type) {
		return nil, notAllowed(http.StatusBadRequest, "disk %q uses customer-managed keys (%s); guest-level disk encryption (ADE) cannot be used on a disk with customer-managed keys: switch it to platform-managed keys first (hostcrypt disk update --name %s --encryption-type %s)",
			d.Name, d.Encryption.Type, d.Name, EncPlatformKey)
	}
	if vm := h.st.VMs[d.ManagedBy]; vm != nil && vm.SecurityProfile.EncryptionAtHost {
		return nil, notAllowed(http.StatusBadRequest, "disk %q is attached to VM %q, which has encryption at host; guest-level disk encryption (ADE) cannot be used with encryption at host: detach the disk first, or turn encryption at host off (deallocate the VM, then hostcrypt vm update --name %s --encryption-at-host false)",
			d.Name, vm.Name, vm.Name)
	}
	d.ADE = true
	if err := h.save(); err != nil {
		d.ADE = false
		return nil, err
	}
	h.log.Info("disk marked as using guest-level encryption", "disk", d.Name)
	return h.showDisk(d), nil
}

// checkCreateVM checks a new VM and the disks it would get (already known
// to exist and be free) and returns where it goes.
func (h *Host) checkCreateVM(r CreateVMRequest) (placement, error) {
	p, err := h.newPlacement(r.Subscription, r.ResourceGroup, r.Location)
	if err != nil {
		return p, err
	}
	eah := r.EncryptionAtHost == nil || *r.EncryptionAtHost
	if r.ADE && eah {
		return p, notAllowed(http.StatusBadRequest, "VM %q uses guest-level disk encryption (ADE), and a VM that has ever used it cannot get encryption at host: create it with --encryption-at-host false", r.Name)
	}
	vm := &VM{Name: r.Name, Subscription: p.Subscription, ResourceGroup: p.ResourceGroup, Location: p.Location,
		SecurityProfile: SecurityProfile{EncryptionAtHost: eah}, ADE: r.ADE}
	names := []string{}
	if r.OsDisk != "" {
		names = append(names, r.OsDisk)
	}
	for _, dd := range r.DataDisks {
		names = append(names, dd.Name)
	}
	for _, n := range names {
		if err := h.checkAttach(vm, h.st.Disks[n]); err != nil {
			return p, err
		}
	}
	return p, nil
}

// checkAttach checks that disk d may be attached to vm.
func (h *Host) checkAttach(vm *VM, d *Disk) error {
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
		return adeRefusal("VM", vm.Name, "disks with customer-managed keys", "use disk "+d.Name+" with platform-managed keys (hostcrypt disk update --name "+d.Name+" --encryption-type "+EncPlatformKey+")")
	}
	return nil
}

// checkCreateDES checks a new disk encryption set over a key of vault and
// returns where it goes.
func (h *Host) checkCreateDES(ctx context.Context, r CreateDESRequest) (placement, error) {
	p, err := h.newPlacement(r.Subscription, r.ResourceGroup, r.Location)
	if err != nil {
		return p, err
	}
	limit := h.cfg.DESLimit
	if limit <= 0 {
		limit = DefaultDESLimit
	}
	n := 0
	for _, d := range h.st.DES {
		if strings.EqualFold(d.Location, p.Location) && strings.EqualFold(d.Subscription, p.Subscription) {
			n++
		}
	}
	if n >= limit {
		return p, errorf(http.StatusConflict, "QuotaExceeded", "subscription %s already has %d disk encryption sets in location %s, the most allowed per location and subscription; delete sets no disk uses (hostcrypt des delete), or share one set between disks",
			p.Subscription, n, p.Location)
	}
	return p, h.checkVaultLocation(ctx, r.Name, p.Location, r.KeyURL,
		fmt.Sprintf("use a key of a vault in %s, or create the set in the vault's location (--location)", p.Location))
}

// checkDESKeySwitch checks switching a set to a key of another vault.
func (h *Host) checkDESKeySwitch(ctx context.Context, des *DiskEncryptionSet, vault, keyURL string) error {
	if vault == des.ActiveKey.SourceVault.ID {
		return nil
	}
	return h.checkVaultLocation(ctx, des.Name, des.Location, keyURL,
		fmt.Sprintf("switch to a key of a vault in %s", des.Location))
}

// checkVaultLocation: a set and the vault of its key share a location.
func (h *Host) checkVaultLocation(ctx context.Context, des, loc, keyURL, instead string) error {
	vl, ok := h.cfg.Keys.(VaultLocations)
	if !ok {
		return nil
	}
	vloc, err := vl.VaultLocation(ctx, keyURL)
	if errors.Is(err, ErrVaultNotFound) {
		vault, _ := parseKeyURL(keyURL)
		return badRequest("the vault %q of key %s does not exist: check the key id (hostcrypt key show prints it as kid)", vault, keyURL)
	}
	if err != nil {
		return fmt.Errorf("finding the location of the vault of key %s: %w", keyURL, err)
	}
	if !strings.EqualFold(vloc, loc) {
		vault, _ := parseKeyURL(keyURL)
		return notAllowed(http.StatusBadRequest, "key vault %q is in location %s but disk encryption set %q is in %s; a disk encryption set and the vault of its key must be in the same location: %s",
			vault, vloc, des, loc, instead)
	}
	return nil
}

// MoveRequest moves a resource to another resource group, and optionally
// another subscription.
type MoveRequest struct {
	ResourceGroup string `json:"resourceGroup"`
	Subscription  string `json:"subscription,omitempty"`
}

// checkCMKMove is the move rule of resources encrypted with customer-managed
// keys (disks; snapshots and images use it too): never to another
// subscription, and to another resource group only while unattached or while
// the VM they are attached to (vm, nil for none) is deallocated. Resources on
// platform-managed keys move freely.
func checkCMKMove(kind, name, encType string, from, to placement, vm *VM) error {
	if !isCMK(encType) {
		return nil
	}
	if !strings.EqualFold(from.Subscription, to.Subscription) {
		return notAllowed(http.StatusBadRequest, "%s %q uses customer-managed keys (%s), and resources with customer-managed keys cannot move to another subscription: switch it to platform-managed keys first (hostcrypt %s update --name %s --encryption-type %s), move it, then give it a disk encryption set of subscription %s",
			kind, name, encType, kind, name, EncPlatformKey, to.Subscription)
	}
	if !strings.EqualFold(from.ResourceGroup, to.ResourceGroup) && vm != nil && vm.PowerState != PowerDeallocated {
		return notAllowed(http.StatusConflict, "%s %q uses customer-managed keys (%s) and is attached to VM %q, which is %s; a %s with customer-managed keys moves to another resource group only while unattached or while its VM is deallocated: deallocate the VM first (hostcrypt vm deallocate --name %s)",
			kind, name, encType, vm.Name, vm.PowerState, kind, vm.Name)
	}
	return nil
}

// MoveDisk moves a disk to another resource group and, optionally, another
// subscription; its resource id changes with it, its data and keys do not.
func (h *Host) MoveDisk(ctx context.Context, name string, r MoveRequest) (*Disk, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.st.Disks[name]
	if !ok {
		return nil, notFound("disk", name)
	}
	if r.ResourceGroup == "" {
		return nil, badRequest("give the resource group to move disk %q to (--resource-group)", name)
	}
	if r.Subscription == "" {
		r.Subscription = d.Subscription
	}
	to, err := h.newPlacement(r.Subscription, r.ResourceGroup, d.Location)
	if err != nil {
		return nil, err
	}
	if err := converting(d); err != nil {
		return nil, err
	}
	from := d.placement()
	if err := checkCMKMove("disk", name, d.Encryption.Type, from, to, h.st.VMs[d.ManagedBy]); err != nil {
		return nil, err
	}
	if vm := h.st.VMs[d.ManagedBy]; vm != nil && !strings.EqualFold(vm.Subscription, to.Subscription) {
		return nil, notAllowed(http.StatusConflict, "disk %q is attached to VM %q of subscription %s, and a VM uses disks of its own subscription only: detach it first (hostcrypt vm disk detach --vm-name %s --name %s)",
			name, vm.Name, vm.Subscription, vm.Name, name)
	}
	if from == to {
		return h.showDisk(d), nil
	}
	old := *d
	d.Subscription, d.ResourceGroup, d.ID = to.Subscription, to.ResourceGroup, to.id(typeDisks, name)
	if err := h.save(); err != nil {
		d.Subscription, d.ResourceGroup, d.ID = old.Subscription, old.ResourceGroup, old.ID
		return nil, err
	}
	h.log.Info("disk moved", "disk", name, "subscription", to.Subscription, "resourceGroup", to.ResourceGroup)
	return h.showDisk(d), nil
}

// checkVMUpdate checks changing a VM's encryption at host and its ADE record
// (nil: unchanged) against the restrictions, for a VM update: encryption at
// host not on a VM that has used ADE nor with an UltraSSD/PremiumV2 disk it
// does not support; ADE never cleared, and not set on a VM with encryption
// at host or with disks on customer-managed keys. UpdateVM applies the
// change when this returns nil.
func (h *Host) checkVMUpdate(vm *VM, encryptionAtHost, ade *bool) error {
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
	for _, n := range vmDiskNames(vm) {
		if d := h.st.Disks[n]; d != nil {
			if err := h.checkAttach(&next, d); err != nil {
				return err
			}
		}
	}
	return nil
}
