package cli

import (
	"fmt"
	"strconv"

	"hostcrypt/control/api"
)

func desCommands() []Command {
	return []Command{
		{"des", "create", "create a disk encryption set and its identity", desCreate},
		{"des", "show", "show a disk encryption set and whether its identity can use its key", desShow},
		{"des", "list", "list disk encryption sets", desList},
		{"des", "update", "switch to another key (version) or change auto-rotation; disks are re-wrapped", desUpdate},
		{"des", "delete", "delete a disk encryption set no disk uses", desDelete},
	}
}

var desHeader = []string{"NAME", "ENCRYPTION", "ACTIVE-KEY", "AUTO-ROTATION", "PRINCIPAL", "KEY-ACCESS"}

func desRow(d *api.DiskEncryptionSet) []string {
	return []string{d.Name, d.EncryptionType, d.ActiveKey.KeyURL, strconv.FormatBool(d.RotationToLatestKeyVersionEnabled),
		d.Identity.PrincipalID, orDash(d.KeyAccess)}
}

func desCreate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk encryption set name")
	keyURL := f.requiredString("key-url", "versioned key id, https://HOST/vaults/V/keys/K/VERSION")
	enc := f.String("encryption-type", "EncryptionAtRestWithCustomerKey", "EncryptionAtRestWithCustomerKey or EncryptionAtRestWithPlatformAndCustomerKeys")
	rot := f.boolValue("enable-auto-key-rotation", "re-wrap disks to new key versions automatically (true|false)")
	pl := placementFlags(f)
	if err := f.parse(args); err != nil {
		return err
	}
	req := api.CreateDESRequest{Name: *name, KeyURL: *keyURL, EncryptionType: *enc, EnableAutoKeyRotation: rot.val,
		Subscription: *pl.subscription, ResourceGroup: *pl.resourceGroup, Location: *pl.location}
	d, err := onHost(c, func(h *api.Client) (*api.DiskEncryptionSet, error) { return h.CreateDES(c.Ctx, req) })
	if err != nil {
		return err
	}
	if d.KeyAccess != "ok" {
		c.warnf("the identity %s cannot use the key yet; grant it access: hostcrypt keyvault set-policy --name %s --object-id %s --key-permissions get,wrapKey,unwrapKey",
			d.Identity.PrincipalID, d.ActiveKey.SourceVault.ID, d.Identity.PrincipalID)
	}
	return c.show(d, desHeader, [][]string{desRow(d)})
}

func desShow(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk encryption set name")
	if err := f.parse(args); err != nil {
		return err
	}
	d, err := onHost(c, func(h *api.Client) (*api.DiskEncryptionSet, error) { return h.ShowDES(c.Ctx, *name) })
	if err != nil {
		return err
	}
	return c.show(d, desHeader, [][]string{desRow(d)})
}

func desList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	ds, err := onHost(c, func(h *api.Client) ([]api.DiskEncryptionSet, error) { return h.ListDES(c.Ctx) })
	if err != nil {
		return err
	}
	return showList(c, ds, desHeader, desRow)
}

func desDelete(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk encryption set name")
	if err := f.parse(args); err != nil {
		return err
	}
	return onHostDo(c, func(h *api.Client) error { return h.DeleteDES(c.Ctx, *name) })
}

func desUpdate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk encryption set name")
	keyURL := f.String("key-url", "", "versioned key id to switch to")
	rot := f.boolValue("enable-auto-key-rotation", "re-wrap disks to new key versions automatically (true|false)")
	if err := f.parse(args); err != nil {
		return err
	}
	if *keyURL == "" && !rot.set {
		return fmt.Errorf("%s: nothing to update; give --key-url or --enable-auto-key-rotation", c.Command)
	}
	req := api.UpdateDESRequest{KeyURL: *keyURL, EnableAutoKeyRotation: rot.ptr()}
	d, err := onHost(c, func(h *api.Client) (*api.DiskEncryptionSet, error) { return h.UpdateDES(c.Ctx, *name, req) })
	if err != nil {
		return err
	}
	return c.show(d, desHeader, [][]string{desRow(d)})
}
