package cli

import (
	"fmt"
	"path/filepath"

	"hostcrypt/control/api"
)

func diskTransferCommands() []Command {
	return []Command{
		{"disk", "import", "create an encrypted disk from a raw or qcow2 image file", diskImport},
		{"disk", "export", "write a disk's plaintext to a raw image file (unencrypted!)", diskExport},
	}
}

// absPath makes a path absolute: hostcryptd opens the file itself, from its
// own working directory.
func absPath(flag, p string) (string, error) {
	if p == "" {
		return "", nil
	}
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("--%s %q: %w", flag, p, err)
	}
	return a, nil
}

func diskImport(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "name of the new disk")
	source := f.requiredString("source", "image file to import, raw or qcow2 (detected); its virtual size, rounded up to the sector size, is the disk's size")
	sku := f.String("sku", api.DefaultSku, "Standard_LRS, StandardSSD_LRS, Premium_LRS, PremiumV2_LRS or UltraSSD_LRS")
	sector := f.Int("logical-sector-size", api.DefaultSectorSize, "512 or 4096")
	des := f.String("disk-encryption-set", "", "disk encryption set (customer-managed key)")
	enc := f.String("encryption-type", "", "EncryptionAtRestWithPlatformKey (default), …WithCustomerKey or …WithPlatformAndCustomerKeys")
	if err := f.parse(args); err != nil {
		return err
	}
	src, err := absPath("source", *source)
	if err != nil {
		return err
	}
	req := api.ImportDiskRequest{Source: src, CreateDiskRequest: api.CreateDiskRequest{Name: *name, Sku: *sku,
		LogicalSectorSize: *sector, EncryptionType: *enc, DiskEncryptionSet: *des}}
	return c.transfer("importing "+*name, func(h *api.Client, p func(api.Progress)) (*api.Disk, error) {
		return h.ImportDisk(c.Ctx, req, p)
	})
}

func diskExport(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk to export")
	target := f.requiredString("target", "raw image file to write; it holds the disk's PLAINTEXT, unencrypted (created 0600, owned by root)")
	force := f.boolValue("force", "replace the target if it exists (true|false, default false)")
	if err := f.parse(args); err != nil {
		return err
	}
	dst, err := absPath("target", *target)
	if err != nil {
		return err
	}
	req := api.ExportDiskRequest{Target: dst, Force: force.val}
	if err := c.transfer("exporting "+*name, func(h *api.Client, p func(api.Progress)) (*api.Disk, error) {
		return h.ExportDisk(c.Ctx, *name, req, p)
	}); err != nil {
		return err
	}
	if c.Output == "table" {
		fmt.Fprintf(c.Stdout, "wrote the plaintext of disk %s to %s (raw, sparse, mode 0600)\n", *name, dst)
	}
	return nil
}

// transfer runs an import or export, drawing its progress on stderr.
// Interrupting the CLI cancels it: hostcryptd removes what it had made.
func (c *Context) transfer(label string, call func(*api.Client, func(api.Progress)) (*api.Disk, error)) error {
	h, err := c.host()
	if err != nil {
		return err
	}
	bar := newProgressBar(c.Stderr, label)
	d, err := call(h, func(p api.Progress) { bar.update(p.Done, p.Total) })
	if err != nil {
		bar.finish()
		if c.Ctx.Err() != nil {
			return fmt.Errorf("%s: interrupted; hostcryptd cancels it and removes what it had written", label)
		}
		return err
	}
	bar.done()
	return c.showDisk(d)
}
