package cli

import (
	ksapi "hostcrypt/keystore/api"
	"strconv"
	"strings"
)

func keyvaultCommands() []Command {
	return []Command{
		{"keyvault", "create", "create a vault (the creator gets a full access policy)", keyvaultCreate},
		{"keyvault", "show", "show a vault", keyvaultShow},
		{"keyvault", "list", "list the vaults the caller can see", keyvaultList},
		{"keyvault", "update", "turn on purge protection or allow other tenants", keyvaultUpdate},
		{"keyvault", "set-policy", "grant a principal key permissions", keyvaultSetPolicy},
		{"keyvault", "delete-policy", "remove a principal's access policy", keyvaultDeletePolicy},
		{"keyvault", "audit", "read the audit log (--last N), print its head (--head) or verify its hash chain (--verify)", keyvaultAudit},
	}
}

var vaultHeader = []string{"NAME", "LOCATION", "SKU", "TENANT", "RETENTION-DAYS", "PURGE-PROTECTION", "POLICIES"}

func vaultRow(v *ksapi.Vault) []string {
	p := v.Properties
	return []string{v.Name, v.Location, p.Sku.Name, p.TenantID, strconv.Itoa(p.SoftDeleteRetentionInDays), strconv.FormatBool(p.EnablePurgeProtection), strconv.Itoa(len(p.AccessPolicies))}
}

func (c *Context) showVault(v *ksapi.Vault) error {
	return c.show(v, vaultHeader, [][]string{vaultRow(v)})
}

func keyvaultCreate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "vault name")
	location := f.String("location", "", "location (default local)")
	sku := f.String("sku", "standard", "standard or premium (premium for RSA-HSM keys)")
	retention := f.Int("retention-days", 90, "soft-delete retention, 7 to 90 days")
	purge := f.boolValue("enable-purge-protection", "refuse purges until the retention ends")
	tenants := f.String("allowed-tenants", "", "other tenants whose principals may be granted access, comma-separated")
	if err := f.parse(args); err != nil {
		return err
	}
	var req ksapi.VaultCreate
	req.Location = *location
	req.Properties.Sku = &ksapi.Sku{Name: *sku}
	if f.Changed("retention-days") {
		req.Properties.SoftDeleteRetentionInDays = retention
	}
	req.Properties.EnablePurgeProtection = purge.ptr()
	var err error
	if req.Properties.AllowedTenants, err = list("allowed-tenants", *tenants); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	v, err := ks.CreateVault(c.Ctx, *name, req)
	if err != nil {
		return err
	}
	return c.showVault(v)
}

func keyvaultShow(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "vault name")
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	v, err := ks.GetVault(c.Ctx, *name)
	if err != nil {
		return err
	}
	if c.Output == "json" {
		return c.showVault(v)
	}
	if err := c.showVault(v); err != nil {
		return err
	}
	c.Stdout.Write([]byte("\n"))
	return showList(c, v.Properties.AccessPolicies, []string{"OBJECT-ID", "TENANT", "KEY-PERMISSIONS"}, func(p *ksapi.AccessPolicy) []string {
		return []string{p.ObjectID, p.TenantID, strings.Join(p.Permissions.Keys, ",")}
	})
}

func keyvaultList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	vs, err := ks.ListVaults(c.Ctx)
	if err != nil {
		return err
	}
	return showList(c, vs, vaultHeader, vaultRow)
}

func keyvaultUpdate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "vault name")
	purge := f.boolValue("enable-purge-protection", "turn purge protection on (it cannot be turned off)")
	tenants := f.String("allowed-tenants", "", "replace the allowed other tenants, comma-separated")
	if err := f.parse(args); err != nil {
		return err
	}
	var req ksapi.VaultUpdate
	req.Properties.EnablePurgeProtection = purge.ptr()
	if f.Changed("allowed-tenants") {
		ts, err := list("allowed-tenants", *tenants)
		if err != nil {
			return err
		}
		if ts == nil {
			ts = []string{}
		}
		req.Properties.AllowedTenants = &ts
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	v, err := ks.UpdateVault(c.Ctx, *name, req)
	if err != nil {
		return err
	}
	return c.showVault(v)
}

func keyvaultSetPolicy(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "vault name")
	object := f.requiredString("object-id", "principal id to grant")
	perms := f.requiredString("key-permissions", "comma-separated: get,list,create,update,import,delete,recover,purge,wrapKey,unwrapKey,rotate,getrotationpolicy,setrotationpolicy,backup,restore or all")
	if err := f.parse(args); err != nil {
		return err
	}
	ps, err := list("key-permissions", *perms)
	if err != nil {
		return err
	}
	if ps == nil {
		ps = []string{}
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	v, err := ks.SetPolicy(c.Ctx, *name, *object, ps)
	if err != nil {
		return err
	}
	return c.showVault(v)
}

func keyvaultDeletePolicy(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "vault name")
	object := f.requiredString("object-id", "principal id whose policy to remove")
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	v, err := ks.DeletePolicy(c.Ctx, *name, *object)
	if err != nil {
		return err
	}
	return c.showVault(v)
}
