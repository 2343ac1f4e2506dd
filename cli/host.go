package cli

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"hostcrypt/control"
)

func (e *Env) host() (*control.Client, error) {
	if e.HostSocket == "" {
		return nil, usagef("no hostcryptd socket: pass --host-socket PATH or set HOSTCRYPT_SOCKET (make run prints the export line)")
	}
	return control.NewClient(e.HostSocket), nil
}

// call sends one request to hostcryptd.
func (e *Env) call(ctx context.Context, method, path string, in, out any) error {
	c, err := e.host()
	if err != nil {
		return err
	}
	return c.Do(ctx, method, path, in, out)
}

func esc(s string) string { return url.PathEscape(s) }

func diskTable(ds ...*control.Disk) table {
	t := table{headers: []string{"Name", "Size", "Sku", "Sector", "Encryption", "State", "VM", "Key", "IntegrityErrors"}}
	for _, d := range ds {
		t.rows = append(t.rows, []string{d.Name, formatSize(d.DiskSizeBytes), d.Sku.Name, strconv.Itoa(d.LogicalSectorSize),
			d.Encryption.Type, d.DiskState, d.ManagedBy, d.KeyID, strconv.FormatUint(d.IntegrityErrors, 10)})
	}
	return t
}

func vmTable(vms ...*control.VM) table {
	t := table{headers: []string{"Name", "PowerState", "EncryptionAtHost", "OsDisk", "DataDisks", "TempDisk", "Reason"}}
	for _, v := range vms {
		var dd []string
		for _, d := range v.StorageProfile.DataDisks {
			dd = append(dd, fmt.Sprintf("%d:%s:%s", *d.Lun, d.Name, d.Caching))
		}
		temp := "-"
		if v.TempDiskSizeBytes > 0 {
			temp = formatSize(v.TempDiskSizeBytes)
		}
		t.rows = append(t.rows, []string{v.Name, v.PowerState, strconv.FormatBool(v.SecurityProfile.EncryptionAtHost),
			v.StorageProfile.OsDisk.Name + ":" + v.StorageProfile.OsDisk.Caching, strings.Join(dd, ","), temp, v.PowerStateReason})
	}
	return t
}

func diskCommands() []Command {
	return []Command{
		{Path: "disk create", Short: "create an empty managed disk", Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
			name := fl.String("name", "", "disk name")
			size := sizeFlag(fl, "size", "size with a binary unit, e.g. 512M or 8G")
			sku := fl.String("sku", "Premium_LRS", "Standard_LRS, StandardSSD_LRS, Premium_LRS, PremiumV2_LRS or UltraSSD_LRS")
			sector := fl.Int("logical-sector-size", 512, "512 or 4096")
			des := fl.String("disk-encryption-set", "", "disk encryption set (customer-managed key)")
			enc := fl.String("encryption-type", "", "EncryptionAtRestWithPlatformKey (default), …WithCustomerKey or …WithPlatformAndCustomerKeys")
			return func(ctx context.Context, e *Env) error {
				if err := need("name", *name); err != nil {
					return err
				}
				if *size == 0 {
					return usagef("--size is required and must be at least 1M")
				}
				var d control.Disk
				err := e.call(ctx, "POST", "/disks", control.CreateDiskRequest{Name: *name, SizeBytes: *size, Sku: *sku,
					LogicalSectorSize: *sector, EncryptionType: *enc, DiskEncryptionSet: *des}, &d)
				if err != nil {
					return err
				}
				return e.print(&d, diskTable(&d))
			}
		}},
		{Path: "disk show", Short: "show a disk", Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
			name := fl.String("name", "", "disk name")
			return func(ctx context.Context, e *Env) error {
				if err := need("name", *name); err != nil {
					return err
				}
				var d control.Disk
				if err := e.call(ctx, "GET", "/disks/"+esc(*name), nil, &d); err != nil {
					return err
				}
				return e.print(&d, diskTable(&d))
			}
		}},
		{Path: "disk list", Short: "list disks", Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
			return func(ctx context.Context, e *Env) error {
				var ds []*control.Disk
				if err := e.call(ctx, "GET", "/disks", nil, &ds); err != nil {
					return err
				}
				return e.print(ds, diskTable(ds...))
			}
		}},
		{Path: "disk update", Short: "grow a disk", Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
			name := fl.String("name", "", "disk name")
			size := sizeFlag(fl, "size", "new size, larger than the current one")
			return func(ctx context.Context, e *Env) error {
				if err := need("name", *name); err != nil {
					return err
				}
				if *size == 0 {
					return usagef("nothing to update: give --size")
				}
				var d control.Disk
				if err := e.call(ctx, "PATCH", "/disks/"+esc(*name), control.UpdateDiskRequest{SizeBytes: *size}, &d); err != nil {
					return err
				}
				return e.print(&d, diskTable(&d))
			}
		}},
		{Path: "disk delete", Short: "delete a disk (its keys are destroyed first)", Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
			name := fl.String("name", "", "disk name")
			return func(ctx context.Context, e *Env) error {
				if err := need("name", *name); err != nil {
					return err
				}
				return e.call(ctx, "DELETE", "/disks/"+esc(*name), nil, nil)
			}
		}},
	}
}

// parseDataDisks reads --data-disks d1,d2:ReadOnly (LUNs 0, 1, … in order).
func parseDataDisks(s string) ([]control.AttachedDisk, error) {
	items, err := splitList("data-disks", s)
	if err != nil {
		return nil, err
	}
	var out []control.AttachedDisk
	for _, it := range items {
		name, mode, _ := strings.Cut(it, ":")
		out = append(out, control.AttachedDisk{Name: name, Caching: mode})
	}
	return out, nil
}

func vmByName(path, short, method, suffix string) Command {
	return Command{Path: path, Short: short, Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
		name := fl.String("name", "", "VM name")
		return func(ctx context.Context, e *Env) error {
			if err := need("name", *name); err != nil {
				return err
			}
			var vm control.VM
			if err := e.call(ctx, method, "/vms/"+esc(*name)+suffix, nil, &vm); err != nil {
				return err
			}
			return e.print(&vm, vmTable(&vm))
		}
	}}
}

func vmCommands() []Command {
	return []Command{
		{Path: "vm create", Short: "create and start a VM", Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
			name := fl.String("name", "", "VM name")
			osDisk := fl.String("os-disk", "", "an existing disk to boot from")
			osSize := sizeFlag(fl, "os-disk-size", "size of a new OS disk (instead of --os-disk)")
			osCaching := fl.String("os-disk-caching", "ReadWrite", "None, ReadOnly or ReadWrite")
			data := fl.String("data-disks", "", "data disks, LUN 0, 1, … in order: d1,d2:ReadOnly")
			temp := sizeFlag(fl, "temp-disk-size", "size of the temp disk (none if 0)")
			eah := optBool(fl, "encryption-at-host", true, "encrypt the host cache and the temp disk (true|false)")
			return func(ctx context.Context, e *Env) error {
				if err := need("name", *name); err != nil {
					return err
				}
				if (*osDisk == "") == (*osSize == 0) {
					return usagef("give exactly one of --os-disk or --os-disk-size")
				}
				dds, err := parseDataDisks(*data)
				if err != nil {
					return err
				}
				v, _ := eah()
				var vm control.VM
				err = e.call(ctx, "POST", "/vms", control.CreateVMRequest{Name: *name, OsDisk: *osDisk, OsDiskSizeBytes: *osSize,
					OsDiskCaching: *osCaching, DataDisks: dds, TempDiskSize: *temp, EncryptionAtHost: &v}, &vm)
				if err != nil {
					return err
				}
				return e.print(&vm, vmTable(&vm))
			}
		}},
		vmByName("vm start", "start a VM; its images appear in the mount", "POST", "/start"),
		vmByName("vm stop", "stop a VM; its disks are flushed and its images disappear", "POST", "/stop"),
		vmByName("vm deallocate", "stop a VM and destroy its temp disk", "POST", "/deallocate"),
		vmByName("vm show", "show a VM", "GET", ""),
		{Path: "vm list", Short: "list VMs", Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
			return func(ctx context.Context, e *Env) error {
				var vms []*control.VM
				if err := e.call(ctx, "GET", "/vms", nil, &vms); err != nil {
					return err
				}
				return e.print(vms, vmTable(vms...))
			}
		}},
		{Path: "vm delete", Short: "delete a stopped VM (its disks stay)", Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
			name := fl.String("name", "", "VM name")
			return func(ctx context.Context, e *Env) error {
				if err := need("name", *name); err != nil {
					return err
				}
				return e.call(ctx, "DELETE", "/vms/"+esc(*name), nil, nil)
			}
		}},
		{Path: "vm disk attach", Short: "attach a data disk (at once on a running VM)", Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
			vmName := fl.String("vm-name", "", "VM name")
			name := fl.String("name", "", "disk name")
			lun := fl.Int("lun", -1, "LUN (default: the lowest free one)")
			caching := fl.String("caching", "None", "None, ReadOnly or ReadWrite")
			return func(ctx context.Context, e *Env) error {
				if err := need("vm-name", *vmName); err != nil {
					return err
				}
				if err := need("name", *name); err != nil {
					return err
				}
				req := control.AttachRequest{Disk: *name, Caching: *caching}
				if fl.Changed("lun") {
					req.Lun = lun
				}
				var vm control.VM
				if err := e.call(ctx, "POST", "/vms/"+esc(*vmName)+"/disks", req, &vm); err != nil {
					return err
				}
				return e.print(&vm, vmTable(&vm))
			}
		}},
		{Path: "vm disk detach", Short: "detach a data disk (flushed first)", Setup: func(fl *pflag.FlagSet) func(context.Context, *Env) error {
			vmName := fl.String("vm-name", "", "VM name")
			name := fl.String("name", "", "disk name")
			return func(ctx context.Context, e *Env) error {
				if err := need("vm-name", *vmName); err != nil {
					return err
				}
				if err := need("name", *name); err != nil {
					return err
				}
				var vm control.VM
				if err := e.call(ctx, "DELETE", "/vms/"+esc(*vmName)+"/disks/"+esc(*name), nil, &vm); err != nil {
					return err
				}
				return e.print(&vm, vmTable(&vm))
			}
		}},
	}
}
