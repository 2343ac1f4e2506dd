package cli

import (
	"fmt"
	"strings"

	"hostcrypt/control/api"
	ksapi "hostcrypt/keystore/api"
)

// The identity group serves two kinds of identity: user-assigned managed
// identities, resources of hostcryptd named by --name (as az identity names
// them), and bare key store principals named by --id (--type on create).
func identityCommands() []Command {
	return []Command{
		{"identity", "create", "create a user-assigned managed identity (--name), or a bare key store principal (--type; prints its token once)", identityCreate},
		{"identity", "show", "show a user-assigned identity (--name) or a key store principal (--id)", identityShow},
		{"identity", "list", "list user-assigned identities and the disk encryption sets using each", identityList},
		{"identity", "delete", "delete a user-assigned identity no set uses (--name), or revoke a key store principal (--id)", identityDelete},
	}
}

var identityHeader = []string{"PRINCIPAL-ID", "TENANT", "TYPE", "NAME", "TOKEN"}

func identityRow(id *ksapi.Identity) []string {
	return []string{id.PrincipalID, id.TenantID, id.Type, orDash(id.DisplayName), orDash(id.Token)}
}

var uaHeader = []string{"NAME", "RESOURCE-GROUP", "PRINCIPAL-ID", "CLIENT-ID", "TENANT", "USED-BY"}

func uaRow(id *api.UserAssignedIdentity) []string {
	return []string{id.Name, id.ResourceGroup, id.PrincipalID, id.ClientID, id.TenantID, orDash(strings.Join(id.DiskEncryptionSets, ","))}
}

// showUA prints user-assigned identities, with a warning for each that
// cannot be used.
func (c *Context) showUA(v any, ids ...*api.UserAssignedIdentity) error {
	rows := make([][]string, 0, len(ids))
	for _, id := range ids {
		if id.Warning != "" {
			c.warnf("user-assigned identity %s: %s", id.Name, id.Warning)
		}
		rows = append(rows, uaRow(id))
	}
	return c.show(v, uaHeader, rows)
}

// nameOrID checks that exactly one of --name and --id was given.
func nameOrID(c *Context, f *flags) error {
	if f.Changed("name") == f.Changed("id") {
		return fmt.Errorf("%s: give --name (a user-assigned identity) or --id (a key store principal)", c.Command)
	}
	return nil
}

func identityCreate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.String("name", "", "name of a new user-assigned managed identity (kept by hostcryptd)")
	pl := placementFlags(f)
	typ := f.String("type", "SystemAssigned", "for a bare key store principal: SystemAssigned, UserAssigned, User or Host (a host's own identity, for hostcryptd --host-token-file; an administrator's)")
	group := f.String("host-group", "", "for a Host: the group of hosts it belongs to (the hosts sharing one pool); its hosts act for the identities created for the group")
	tenant := f.String("tenant", "", "for a bare key store principal: tenant id (default: the caller's)")
	display := f.String("display-name", "", "for a bare key store principal: display name")
	tokenOut := f.String("token-out", "", "for a bare key store principal: write its token to this file (0600) instead of printing it")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.Changed("name") {
		for _, k := range []string{"type", "tenant", "display-name", "token-out", "host-group"} {
			if f.Changed(k) {
				return fmt.Errorf("%s: --%s is for a bare key store principal, not a user-assigned identity (--name); its tenant is its subscription's and its credential stays with hostcryptd", c.Command, k)
			}
		}
		req := api.CreateIdentityRequest{Name: *name, Subscription: *pl.subscription, ResourceGroup: *pl.resourceGroup, Location: *pl.location}
		id, err := onHost(c, func(h *api.Client) (*api.UserAssignedIdentity, error) { return h.CreateIdentity(c.Ctx, req) })
		if err != nil {
			return err
		}
		return c.showUA(id, id)
	}
	for _, k := range []string{"subscription", "resource-group", "location"} {
		if f.Changed(k) {
			return fmt.Errorf("%s: --%s is for a user-assigned identity: give --name too", c.Command, k)
		}
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	id, err := ks.CreateIdentityWith(c.Ctx, ksapi.IdentityCreate{Type: *typ, TenantID: *tenant, DisplayName: *display, HostGroup: *group})
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
	name := f.String("name", "", "user-assigned identity name or resource id")
	id := f.String("id", "", "principal id of a key store principal")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := nameOrID(c, f); err != nil {
		return err
	}
	if f.Changed("name") {
		ua, err := onHost(c, func(h *api.Client) (*api.UserAssignedIdentity, error) { return h.ShowIdentity(c.Ctx, *name) })
		if err != nil {
			return err
		}
		return c.showUA(ua, ua)
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

func identityList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	ids, err := onHost(c, func(h *api.Client) ([]api.UserAssignedIdentity, error) { return h.ListIdentities(c.Ctx) })
	if err != nil {
		return err
	}
	ps := make([]*api.UserAssignedIdentity, len(ids))
	for i := range ids {
		ps[i] = &ids[i]
	}
	return c.showUA(ids, ps...)
}

func identityDelete(c *Context, args []string) error {
	f := newFlags(c)
	name := f.String("name", "", "user-assigned identity name or resource id")
	id := f.String("id", "", "principal id of a key store principal")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := nameOrID(c, f); err != nil {
		return err
	}
	if f.Changed("name") {
		return onHostDo(c, func(h *api.Client) error { return h.DeleteIdentity(c.Ctx, *name) })
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	return ks.DeleteIdentity(c.Ctx, *id)
}
