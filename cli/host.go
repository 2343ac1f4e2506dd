package cli

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"hostcrypt/control/api"
	"hostcrypt/internal/units"
)

// host returns the client of hostcryptd's control API.
func (c *Context) host() (*api.Client, error) {
	if c.hc != nil {
		return c.hc, nil
	}
	sock, err := c.HostSocket()
	if err != nil {
		return nil, err
	}
	c.hc = api.NewClient(sock)
	return c.hc, nil
}

// onHost runs one call of the control API and returns its answer.
func onHost[T any](c *Context, call func(*api.Client) (T, error)) (T, error) {
	h, err := c.host()
	if err != nil {
		var zero T
		return zero, err
	}
	return call(h)
}

// onHostDo is onHost for a call without an answer.
func onHostDo(c *Context, call func(*api.Client) error) error {
	h, err := c.host()
	if err != nil {
		return err
	}
	return call(h)
}

var diskHeader = []string{"NAME", "SIZE", "SKU", "SECTOR", "ENCRYPTION", "STATE", "VM", "KEY", "INTEGRITY-ERRORS", "FAILURE"}

func diskRow(d *api.Disk) []string {
	return []string{d.Name, formatSize(d.DiskSizeBytes), d.Sku.Name, strconv.Itoa(d.LogicalSectorSize),
		d.Encryption.Type, d.DiskState, orDash(d.ManagedBy), d.KeyID, strconv.FormatUint(d.IntegrityErrors, 10), orDash(d.FailureReason)}
}

func (c *Context) showDisk(d *api.Disk) error {
	return c.show(d, diskHeader, [][]string{diskRow(d)})
}

var vmHeader = []string{"NAME", "POWER-STATE", "ENCRYPTION-AT-HOST", "OS-DISK", "DATA-DISKS", "TEMP-DISK", "INTEGRITY-ERRORS", "REASON"}

func vmRow(v *api.VM) []string {
	var dd []string
	for _, d := range v.StorageProfile.DataDisks {
		dd = append(dd, fmt.Sprintf("%d:%s:%s", *d.Lun, d.Name, d.Caching))
	}
	temp := "-"
	if v.TempDiskSizeBytes > 0 {
		temp = formatSize(v.TempDiskSizeBytes)
	}
	return []string{v.Name, v.PowerState, strconv.FormatBool(v.SecurityProfile.EncryptionAtHost),
		v.StorageProfile.OsDisk.Name + ":" + v.StorageProfile.OsDisk.Caching, orDash(strings.Join(dd, ",")), temp, strconv.FormatUint(v.IntegrityErrors, 10), orDash(v.PowerStateReason)}
}

func (c *Context) showVM(v *api.VM) error {
	if !v.SecurityProfile.EncryptionAtHost {
		c.warnf("encryption at host is off for VM %q: its host caches and temp disk are plaintext on this host; only storage is encrypted", v.Name)
	}
	if v.KeyWarning != "" {
		c.warnf("VM %q: %s", v.Name, v.KeyWarning)
	}
	if v.Host != "" {
		return c.show(v, append(slices.Clone(vmHeader), "HOST"), [][]string{append(vmRow(v), v.Host)})
	}
	return c.show(v, vmHeader, [][]string{vmRow(v)})
}

func diskCommands() []Command {
	return []Command{
		{"disk", "create", "create an empty managed disk", diskCreate},
		{"disk", "show", "show a disk", diskShow},
		{"disk", "list", "list disks", diskList},
		{"disk", "update", "grow a disk (also while its VM runs), or switch it between platform and customer keys", diskUpdate},
		{"disk", "delete", "delete a disk: its wrapped keys are destroyed first", diskDelete},
		{"disk", "move", "move a disk to another resource group or subscription (refused for customer-key disks across subscriptions, or while their VM is not deallocated)", diskMove},
	}
}

func diskCreate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk name")
	size := f.size("size", "size with a binary unit, e.g. 512M or 8G (required)")
	sku := f.String("sku", api.DefaultSku, "Standard_LRS, StandardSSD_LRS, Premium_LRS, PremiumV2_LRS or UltraSSD_LRS")
	sector := f.Int("logical-sector-size", 512, "512 or 4096")
	des := f.String("disk-encryption-set", "", "disk encryption set (customer-managed key)")
	enc := f.String("encryption-type", "", "EncryptionAtRestWithPlatformKey (default), …WithCustomerKey or …WithPlatformAndCustomerKeys")
	src := f.String("source", "", "a snapshot, an image or a gallery image version (GALLERY/DEFINITION/VERSION or its id) to copy (the disk gets its own key; --size defaults to the source's)")
	pl := placementFlags(f)
	ade := f.boolValue("ade", "the disk uses guest-level disk encryption (true|false); recorded for good")
	if err := f.parse(args); err != nil {
		return err
	}
	if !f.Changed("size") && *src == "" {
		return fmt.Errorf("%s: --size is required (or --source)", c.Command)
	}
	if !f.Changed("logical-sector-size") && *src != "" {
		*sector = 0 // the source's
	}
	if f.Changed("size") {
		if err := checkDiskSize("size", size.v, *sector, *sku); err != nil {
			return fmt.Errorf("%s: %w", c.Command, err)
		}
	}
	req := api.CreateDiskRequest{Name: *name, SizeBytes: size.v, Sku: *sku,
		LogicalSectorSize: *sector, EncryptionType: *enc, DiskEncryptionSet: *des, Source: *src,
		Subscription: *pl.subscription, ResourceGroup: *pl.resourceGroup, Location: *pl.location, ADE: ade.val}
	d, err := withProgress(c, api.KindDisks, *name, func(h *api.Client) (*api.Disk, error) { return h.CreateDisk(c.Ctx, req) })
	if err != nil {
		return err
	}
	return c.showDisk(d)
}

func diskShow(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk name")
	if err := f.parse(args); err != nil {
		return err
	}
	d, err := onHost(c, func(h *api.Client) (*api.Disk, error) { return h.ShowDisk(c.Ctx, *name) })
	if err != nil {
		return err
	}
	return c.showDisk(d)
}

func diskList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	ds, err := onHost(c, func(h *api.Client) ([]api.Disk, error) { return h.ListDisks(c.Ctx) })
	if err != nil {
		return err
	}
	return showList(c, ds, diskHeader, diskRow)
}

func diskUpdate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk name")
	size := f.size("size", "new size, larger than the current one")
	des := f.String("disk-encryption-set", "", "move the disk to this disk encryption set (customer-managed key)")
	enc := f.String("encryption-type", "", "EncryptionAtRestWithPlatformKey (back to a platform key) or EncryptionAtRestWithPlatformAndCustomerKeys (double encryption; re-encrypts the disk, with progress)")
	ade := f.boolValue("ade", "true records that the disk uses guest-level disk encryption; the record cannot be cleared")
	if err := f.parse(args); err != nil {
		return err
	}
	if !f.Changed("size") && *des == "" && *enc == "" && !ade.set {
		return fmt.Errorf("%s: nothing to update; give --size, --disk-encryption-set, --encryption-type or --ade", c.Command)
	}
	if f.Changed("size") {
		// The disk's sku and sector size are the host's to check.
		if err := checkDiskSize("size", size.v, 0, ""); err != nil {
			return fmt.Errorf("%s: %w", c.Command, err)
		}
	}
	req := api.UpdateDiskRequest{SizeBytes: size.v, DiskEncryptionSet: *des, EncryptionType: *enc, ADE: ade.ptr()}
	d, err := onHost(c, func(h *api.Client) (*api.Disk, error) { return h.UpdateDisk(c.Ctx, *name, req) })
	if err != nil {
		return err
	}
	if d.Conversion != nil {
		if err := c.waitConversion(d); err != nil {
			return err
		}
	}
	return c.showDisk(d)
}

// waitConversion follows a disk's re-encryption, drawing its progress on
// stderr, until it finishes. Interrupting the CLI does not stop it: the
// daemon carries on (and resumes after a restart).
func (c *Context) waitConversion(d *api.Disk) error {
	last := ""
	for d.Conversion != nil {
		cv := d.Conversion
		if cv.Error != "" {
			return fmt.Errorf("converting disk %s stopped: %s", d.Name, cv.Error)
		}
		pct := 100 * cv.NextChunk / max(cv.TotalChunks, 1)
		bar := strings.Repeat("#", int(pct/5)) + strings.Repeat(".", 20-int(pct/5))
		line := fmt.Sprintf("\rconverting %s to %s [%s] %3d%% (%d/%d chunks)", d.Name, cv.TargetEncryptionType, bar, pct, cv.NextChunk, cv.TotalChunks)
		if line != last {
			fmt.Fprint(c.Stderr, line)
			last = line
		}
		select {
		case <-c.Ctx.Done():
			fmt.Fprintln(c.Stderr)
			return c.Ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
		// A fresh value: a field the answer leaves out must not keep its old value.
		fresh, err := onHost(c, func(h *api.Client) (*api.Disk, error) { return h.ShowDisk(c.Ctx, d.Name) })
		if err != nil {
			return err
		}
		*d = *fresh
	}
	fmt.Fprintf(c.Stderr, "\rconverting %s: done%s\n", d.Name, strings.Repeat(" ", 50))
	return nil
}

func diskDelete(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk name")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := onHostDo(c, func(h *api.Client) error { return h.DeleteDisk(c.Ctx, *name) }); err != nil {
		return err
	}
	c.deleted("disk %s: its wrapped keys, then its data", *name)
	return nil
}

func vmCommands() []Command {
	return []Command{
		{"vm", "create", "create and start a VM", vmCreate},
		{"vm", "start", "start a VM; its images appear in the mount", vmAction((*api.Client).StartVM)},
		{"vm", "stop", "stop a VM; its disks are flushed, its keys wiped, its images gone", vmAction((*api.Client).StopVM)},
		{"vm", "deallocate", "stop a VM and destroy its temp disk", vmAction((*api.Client).DeallocateVM)},
		{"vm", "show", "show a VM", vmAction((*api.Client).ShowVM)},
		{"vm", "list", "list VMs", vmList},
		{"vm", "update", "change encryption at host or disk caching of a deallocated VM", vmUpdate},
		{"vm", "encryption-report", "show what is encrypted where: storage layers, host caches, temp disk", vmEncryptionReport},
		{"vm", "delete", "delete a VM that is not running (its disks stay)", vmDelete},
		{"vm", "disk attach", "attach a data disk (at once on a running VM)", vmDiskAttach},
		{"vm", "disk detach", "detach a data disk (flushed first)", vmDiskDetach},
	}
}

// parseDataDisks reads --data-disks d1,d2:ReadOnly (LUNs 0, 1, … in order).
func parseDataDisks(s string) ([]api.AttachedDisk, error) {
	items, err := list("data-disks", s)
	if err != nil {
		return nil, err
	}
	var out []api.AttachedDisk
	for _, it := range items {
		name, mode, _ := strings.Cut(it, ":")
		out = append(out, api.AttachedDisk{Name: name, Caching: mode})
	}
	return out, nil
}

func vmCreate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "VM name")
	osDisk := f.String("os-disk", "", "an existing disk to boot from")
	osSize := f.size("os-disk-size", "size of a new OS disk (instead of --os-disk)")
	osCaching := f.String("os-disk-caching", api.DefaultOsDiskCaching, "None, ReadOnly or ReadWrite")
	data := f.String("data-disks", "", "data disks, LUN 0, 1, … in order, e.g. d1,d2:ReadOnly")
	temp := f.size("temp-disk-size", "size of the temp disk (none if not given)")
	eah := f.boolValue("encryption-at-host", "encrypt the host cache and the temp disk (true|false, default true)")
	pl := placementFlags(f)
	ade := f.boolValue("ade", "the VM uses guest-level disk encryption (true|false); recorded for good")
	if err := f.parse(args); err != nil {
		return err
	}
	if (*osDisk == "") == !f.Changed("os-disk-size") {
		return fmt.Errorf("%s: give exactly one of --os-disk or --os-disk-size", c.Command)
	}
	if f.Changed("os-disk-size") {
		// A new OS disk has the default sku and 512-byte sectors.
		if err := checkDiskSize("os-disk-size", osSize.v, api.DefaultSectorSize, api.DefaultSku); err != nil {
			return fmt.Errorf("%s: %w", c.Command, err)
		}
	}
	if temp.v != 0 { // 0: no temp disk
		if err := checkTempSize("temp-disk-size", temp.v); err != nil {
			return fmt.Errorf("%s: %w", c.Command, err)
		}
	}
	dds, err := parseDataDisks(*data)
	if err != nil {
		return err
	}
	req := api.CreateVMRequest{Name: *name, OsDisk: *osDisk, OsDiskSizeBytes: osSize.v,
		OsDiskCaching: *osCaching, DataDisks: dds, TempDiskSize: temp.v, EncryptionAtHost: eah.ptr(),
		Subscription: *pl.subscription, ResourceGroup: *pl.resourceGroup, Location: *pl.location, ADE: ade.val}
	vm, err := onHost(c, func(h *api.Client) (*api.VM, error) { return h.CreateVM(c.Ctx, req) })
	if err != nil {
		return err
	}
	return c.showVM(vm)
}

func vmAction(call func(*api.Client, context.Context, string) (*api.VM, error)) func(*Context, []string) error {
	return func(c *Context, args []string) error {
		f := newFlags(c)
		name := f.requiredString("name", "VM name")
		if err := f.parse(args); err != nil {
			return err
		}
		vm, err := onHost(c, func(h *api.Client) (*api.VM, error) { return call(h, c.Ctx, *name) })
		if err != nil {
			return err
		}
		return c.showVM(vm)
	}
}

func vmList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	vms, err := onHost(c, func(h *api.Client) ([]api.VM, error) { return h.ListVMs(c.Ctx) })
	if err != nil {
		return err
	}
	// On a store that several hosts share, each running VM names its host.
	if slices.ContainsFunc(vms, func(v api.VM) bool { return v.Host != "" }) {
		return showList(c, vms, append(slices.Clone(vmHeader), "HOST"), func(v *api.VM) []string { return append(vmRow(v), orDash(v.Host)) })
	}
	return showList(c, vms, vmHeader, vmRow)
}

func vmDelete(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "VM name")
	if err := f.parse(args); err != nil {
		return err
	}
	vm, err := onHost(c, func(h *api.Client) (*api.VM, error) { return h.ShowVM(c.Ctx, *name) })
	if err != nil {
		return err
	}
	if err := onHostDo(c, func(h *api.Client) error { return h.DeleteVM(c.Ctx, *name) }); err != nil {
		return err
	}
	disks := []string{vm.StorageProfile.OsDisk.Name}
	for _, d := range vm.StorageProfile.DataDisks {
		disks = append(disks, d.Name)
	}
	temp := ""
	if vm.TempDiskSizeBytes > 0 {
		temp = " and its temp disk"
	}
	c.deleted("VM %s%s; its disks stay, unattached: %s (hostcrypt disk delete --name DISK deletes one)", vm.Name, temp, strings.Join(disks, ", "))
	return nil
}

func vmDiskAttach(c *Context, args []string) error {
	f := newFlags(c)
	vmName := f.requiredString("vm-name", "VM name")
	name := f.requiredString("name", "disk name")
	lun := f.Int("lun", 0, "LUN (default: the lowest free one)")
	caching := f.String("caching", api.DefaultDataDiskCaching, "None, ReadOnly or ReadWrite")
	if err := f.parse(args); err != nil {
		return err
	}
	req := api.AttachRequest{Disk: *name, Caching: *caching}
	if f.Changed("lun") {
		req.Lun = lun
	}
	vm, err := onHost(c, func(h *api.Client) (*api.VM, error) { return h.AttachDisk(c.Ctx, *vmName, req) })
	if err != nil {
		return err
	}
	return c.showVM(vm)
}

func vmDiskDetach(c *Context, args []string) error {
	f := newFlags(c)
	vmName := f.requiredString("vm-name", "VM name")
	name := f.requiredString("name", "disk name")
	if err := f.parse(args); err != nil {
		return err
	}
	vm, err := onHost(c, func(h *api.Client) (*api.VM, error) { return h.DetachDisk(c.Ctx, *vmName, *name) })
	if err != nil {
		return err
	}
	return c.showVM(vm)
}

func vmUpdate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "VM name")
	eah := f.boolValue("encryption-at-host", "encrypt the host caches and the temp disk (true|false)")
	osCaching := f.String("os-disk-caching", "", "None, ReadOnly or ReadWrite")
	data := f.String("data-disk-caching", "", "data disks' caching, e.g. d1:ReadOnly,d2:None")
	ade := f.boolValue("ade", "true records that the VM uses guest-level disk encryption; the record cannot be cleared")
	if err := f.parse(args); err != nil {
		return err
	}
	req := api.UpdateVMRequest{EncryptionAtHost: eah.ptr(), OsDiskCaching: *osCaching, ADE: ade.ptr()}
	items, err := list("data-disk-caching", *data)
	if err != nil {
		return err
	}
	for _, it := range items {
		d, mode, ok := strings.Cut(it, ":")
		if !ok || d == "" || mode == "" {
			return fmt.Errorf("%s: --data-disk-caching %q: give DISK:MODE, e.g. d1:ReadOnly", c.Command, it)
		}
		if req.DataDiskCaching == nil {
			req.DataDiskCaching = map[string]string{}
		}
		req.DataDiskCaching[d] = mode
	}
	vm, err := onHost(c, func(h *api.Client) (*api.VM, error) { return h.UpdateVM(c.Ctx, *name, req) })
	if err != nil {
		return err
	}
	return c.showVM(vm)
}

var reportHeader = []string{"DISK", "IMAGE", "LAYER", "ENCRYPTED", "BY", "ALGORITHM", "KEY", "CACHING", "DIRTY", "LOCATION"}

func vmEncryptionReport(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "VM name")
	if err := f.parse(args); err != nil {
		return err
	}
	rep, err := onHost(c, func(h *api.Client) (*api.EncryptionReport, error) { return h.EncryptionReport(c.Ctx, *name) })
	if err != nil {
		return err
	}
	if rep.Warning != "" {
		c.warnf("%s", rep.Warning)
	}
	rows := make([][]string, 0, len(rep.Entries))
	for _, e := range rep.Entries {
		enc := "no (plaintext)"
		switch {
		case e.Encrypted:
			enc = "yes"
		case e.Layer == "host cache" && e.Caching == api.CacheNone:
			enc = "- (no cache)" // nothing is kept on the host
		}
		dirty := "-"
		if e.Open && e.Layer == "host cache" {
			dirty = units.FormatSize(e.DirtyBytes)
		}
		rows = append(rows, []string{e.Disk, e.Image, e.Layer, enc, orDash(e.EncryptedBy), orDash(e.Algorithm),
			orDash(e.Key), orDash(e.Caching), dirty, orDash(e.Location)})
	}
	return c.show(rep, reportHeader, rows)
}
