package cli

import ksapi "hostcrypt/keystore/api"

func identityCommands() []Command {
	return []Command{
		{"identity", "create", "create an identity (prints its token once)", identityCreate},
		{"identity", "show", "show an identity", identityShow},
		{"identity", "delete", "delete (revoke) an identity", identityDelete},
	}
}

var identityHeader = []string{"PRINCIPAL-ID", "TENANT", "TYPE", "NAME", "TOKEN"}

func identityRow(id *ksapi.Identity) []string {
	return []string{id.PrincipalID, id.TenantID, id.Type, orDash(id.DisplayName), orDash(id.Token)}
}

func identityCreate(c *Context, args []string) error {
	f := newFlags(c)
	typ := f.String("type", "SystemAssigned", "SystemAssigned or User")
	tenant := f.String("tenant", "", "tenant id (default: the caller's)")
	name := f.String("display-name", "", "display name")
	tokenOut := f.String("token-out", "", "write the new identity's token to this file (0600) instead of printing it")
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	id, err := ks.CreateIdentity(c.Ctx, *typ, *tenant, *name)
	if err != nil {
		return err
	}
	if *tokenOut != "" {
		if err := writeSecret(*tokenOut, id.Token+"\n"); err != nil {
			return err
		}
		id.Token = ""
	}
	return c.show(id, identityHeader, [][]string{identityRow(id)})
}

func identityShow(c *Context, args []string) error {
	f := newFlags(c)
	id := f.requiredString("id", "principal id")
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	out, err := ks.GetIdentity(c.Ctx, *id)
	if err != nil {
		return err
	}
	return c.show(out, identityHeader, [][]string{identityRow(out)})
}

func identityDelete(c *Context, args []string) error {
	f := newFlags(c)
	id := f.requiredString("id", "principal id")
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	return ks.DeleteIdentity(c.Ctx, *id)
}
