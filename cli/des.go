package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"hostcrypt/control/api"
)

func desCommands() []Command {
	return []Command{
		{"des", "create", "create a disk encryption set with a system-assigned identity, a user-assigned one, or both", desCreate},
		{"des", "show", "show a disk encryption set and whether its identity can use its key", desShow},
		{"des", "list", "list disk encryption sets", desList},
		{"des", "update", "switch to another key (version), change auto-rotation or the identities; disks are re-wrapped to a new key", desUpdate},
		{"des", "delete", "delete a disk encryption set no disk uses", desDelete},
	}
}

var desHeader = []string{"NAME", "ENCRYPTION", "ACTIVE-KEY", "AUTO-ROTATION", "IDENTITY", "KEY-ACCESS-AS", "PRINCIPAL", "KEY-ACCESS"}

func desRow(d *api.DiskEncryptionSet) []string {
	access := d.KeyAccess
	if access != "" && access != "ok" {
		access = "no" // why, and the fix, in a warning of its own
	}
	as := d.KeyAccessIdentity.Type
	if ua := d.KeyAccessIdentity.UserAssignedIdentity; ua != "" {
		as += ":" + ua[strings.LastIndex(ua, "/")+1:]
	}
	return []string{d.Name, d.EncryptionType, d.ActiveKey.KeyURL, strconv.FormatBool(d.RotationToLatestKeyVersionEnabled),
		strings.ReplaceAll(d.Identity.Type, " ", ""), orDash(as), orDash(d.KeyAccessIdentity.PrincipalID), orDash(access)}
}

// showDES prints sets as a table, a warning with the fix for each whose
// identity cannot use its key, and for a single set with auto-rotation on,
// when it next looks for a new key version and what it found last.
func (c *Context) showDES(v any, single bool, ds ...*api.DiskEncryptionSet) error {
	rows := make([][]string, 0, len(ds))
	for _, d := range ds {
		if d.KeyAccess != "" && d.KeyAccess != "ok" {
			c.warnf("disk encryption set %s: %s", d.Name, d.KeyAccess)
		}
		rows = append(rows, desRow(d))
	}
	if err := c.show(v, desHeader, rows); err != nil || c.Output != "table" || !single {
		return err
	}
	d := ds[0]
	if !d.RotationToLatestKeyVersionEnabled {
		return nil
	}
	next := "at hostcryptd's next check"
	if d.NextKeyVersionCheck != nil {
		next = d.NextKeyVersionCheck.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(c.Stdout, "auto-rotation: next look for a new key version %s\n", next)
	switch {
	case d.AutoKeyRotationError != "":
		fmt.Fprintf(c.Stdout, "auto-rotation: the last attempt failed: %s\n", d.AutoKeyRotationError)
	case d.LastKeyVersionCheck == nil:
		fmt.Fprintln(c.Stdout, "auto-rotation: has not looked yet")
	default:
		what := "a new version; the set's disks were re-wrapped to it"
		if d.LastKeyVersionFound == d.ActiveKey.KeyURL {
			what = "the active version"
		}
		fmt.Fprintf(c.Stdout, "auto-rotation: last looked at %s and found %s (%s)\n",
			d.LastKeyVersionCheck.UTC().Format(time.RFC3339), d.LastKeyVersionFound, what)
	}
	return nil
}

func desCreate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk encryption set name")
	keyURL := f.requiredString("key-url", "versioned key id, https://HOST/vaults/V/keys/K/VERSION")
	enc := f.String("encryption-type", "EncryptionAtRestWithCustomerKey", "EncryptionAtRestWithCustomerKey or EncryptionAtRestWithPlatformAndCustomerKeys")
	rot := f.boolValue("enable-auto-key-rotation", "re-wrap disks to new key versions automatically (true|false)")
	ua := f.String("mi-user-assigned", "", "a user-assigned identity (name or resource id) the set uses its key as")
	sys := f.boolValue("mi-system-assigned", "give the set a system-assigned identity (true|false; default true)")
	pl := placementFlags(f)
	if err := f.parse(args); err != nil {
		return err
	}
	req := api.CreateDESRequest{Name: *name, KeyURL: *keyURL, EncryptionType: *enc, EnableAutoKeyRotation: rot.val,
		Subscription: *pl.subscription, ResourceGroup: *pl.resourceGroup, Location: *pl.location,
		UserAssignedIdentity: *ua, SystemAssignedIdentity: sys.ptr()}
	d, err := onHost(c, func(h *api.Client) (*api.DiskEncryptionSet, error) { return h.CreateDES(c.Ctx, req) })
	if err != nil {
		return err
	}
	return c.showDES(d, true, d)
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
	return c.showDES(d, true, d)
}

func desList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	ds, err := onHost(c, func(h *api.Client) ([]api.DiskEncryptionSet, error) { return h.ListDES(c.Ctx) })
	if err != nil {
		return err
	}
	ps := make([]*api.DiskEncryptionSet, len(ds))
	for i := range ds {
		ps[i] = &ds[i]
	}
	return c.showDES(ds, false, ps...)
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
	ua := f.String("mi-user-assigned", "", "give the set this user-assigned identity (name or resource id) to use its key as; '' takes it away")
	sys := f.boolValue("mi-system-assigned", "give the set a system-assigned identity (true), or delete the one it has (false)")
	if err := f.parse(args); err != nil {
		return err
	}
	if *keyURL == "" && !rot.set && !f.Changed("mi-user-assigned") && !sys.set {
		return fmt.Errorf("%s: nothing to update; give --key-url, --enable-auto-key-rotation, --mi-user-assigned or --mi-system-assigned", c.Command)
	}
	req := api.UpdateDESRequest{KeyURL: *keyURL, EnableAutoKeyRotation: rot.ptr(), SystemAssignedIdentity: sys.ptr()}
	if f.Changed("mi-user-assigned") {
		req.UserAssignedIdentity = ua
	}
	d, err := onHost(c, func(h *api.Client) (*api.DiskEncryptionSet, error) { return h.UpdateDES(c.Ctx, *name, req) })
	if err != nil {
		return err
	}
	return c.showDES(d, true, d)
}
