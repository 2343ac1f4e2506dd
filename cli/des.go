package cli

import (
	"fmt"
	"strconv"

	"hostcrypt/control"
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

func desRow(d *control.DiskEncryptionSet) []string {
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
	var d control.DiskEncryptionSet
	err := c.call("POST", "/des", control.CreateDESRequest{Name: *name, KeyURL: *keyURL, EncryptionType: *enc, EnableAutoKeyRotation: rot.val,
		Subscription: *pl.subscription, ResourceGroup: *pl.resourceGroup, Location: *pl.location}, &d)
	if err != nil {
		return err
	}
	if d.KeyAccess != "ok" {
		c.warnf("the identity %s cannot use the key yet; grant it access: hostcrypt keyvault set-policy --name %s --object-id %s --key-permissions get,wrapKey,unwrapKey",
			d.Identity.PrincipalID, d.ActiveKey.SourceVault.ID, d.Identity.PrincipalID)
	}
	return c.show(&d, desHeader, [][]string{desRow(&d)})
}

func desShow(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk encryption set name")
	if err := f.parse(args); err != nil {
		return err
	}
	var d control.DiskEncryptionSet
	if err := c.call("GET", "/des/"+esc(*name), nil, &d); err != nil {
		return err
	}
	return c.show(&d, desHeader, [][]string{desRow(&d)})
}

func desList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	var ds []control.DiskEncryptionSet
	if err := c.call("GET", "/des", nil, &ds); err != nil {
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
	return c.call("DELETE", "/des/"+esc(*name), nil, nil)
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
	var d control.DiskEncryptionSet
	if err := c.call("PATCH", "/des/"+esc(*name), control.UpdateDESRequest{KeyURL: *keyURL, EnableAutoKeyRotation: rot.ptr()}, &d); err != nil {
		return err
	}
	return c.show(&d, desHeader, [][]string{desRow(&d)})
}
