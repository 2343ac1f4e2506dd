package control

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/control/store"
)

// User-assigned managed identities: resources of their own, each backed by
// a key store principal of kind UserAssigned, that disk encryption sets are
// given to use their keys as. A set that has one reaches its key as it;
// otherwise as its system-assigned identity.

// keyIdentity is the identity a set uses its key as.
type keyIdentity struct {
	typ       string // keys.SystemAssigned or keys.UserAssigned
	cred      string // the name its credential is kept under in Secrets
	principal string
	tenant    string
	ua        string // the user-assigned identity's name, or ""
}

// keyIdentityOf returns the identity des uses its key as: its user-assigned
// one when it has one, else its system-assigned one.
func keyIdentityOf(des *store.DES) keyIdentity {
	if ua := des.Identity.UserAssigned; ua != nil {
		return keyIdentity{typ: keys.UserAssigned, cred: store.IdentityCredential(ua.Name), principal: ua.PrincipalID, tenant: ua.TenantID, ua: ua.Name}
	}
	return keyIdentity{typ: keys.SystemAssigned, cred: des.Name, principal: des.Identity.PrincipalID, tenant: des.Identity.TenantID}
}

// identityType is the Azure identity type of a set with or without a
// system-assigned identity and a user-assigned one.
func identityType(system, user bool) string {
	switch {
	case system && user:
		return api.IdentityBoth
	case user:
		return api.IdentityUserAssigned
	}
	return api.IdentitySystemAssigned
}

// identityResourceID is the resource id of user-assigned identity name at p.
func identityResourceID(p store.Placement, name string) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/%s/%s", p.Subscription, p.ResourceGroup, api.UserAssignedIdentityType, name)
}

// identityByRef finds a user-assigned identity by name or resource id.
func identityByRef(r *store.Records, ref string) (*store.ManagedIdentity, bool) {
	if id, ok := r.Identities[ref]; ok {
		return id, true
	}
	for _, id := range r.Identities {
		if strings.EqualFold(id.ID, ref) {
			return id, true
		}
	}
	return nil, false
}

// uaRef is how a set records the user-assigned identity it was given.
func uaRef(id *store.ManagedIdentity) *store.UserAssignedRef {
	return &store.UserAssignedRef{Name: id.Name, ID: id.ID, PrincipalID: id.PrincipalID, ClientID: id.ClientID, TenantID: id.TenantID}
}

// identityUsers names the sets that were given user-assigned identity name.
func identityUsers(r *store.Records, name string) []string {
	var users []string
	for _, d := range r.DES {
		if ua := d.Identity.UserAssigned; ua != nil && ua.Name == name {
			users = append(users, d.Name)
		}
	}
	sort.Strings(users)
	return users
}

// newGUID returns a random GUID in its usual form.
func newGUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// CreateIdentity creates a user-assigned identity: a key store principal
// of kind UserAssigned, in the tenant of the identity's subscription, whose
// credential is kept with the host's secrets. Vault administrators grant
// its principalId access, as for a set's system-assigned identity.
func (h *Host) CreateIdentity(ctx context.Context, req api.CreateIdentityRequest) (*api.UserAssignedIdentity, error) {
	if err := checkName("user-assigned identity", req.Name); err != nil {
		return nil, err
	}
	release, err := h.claim("being created", "identity/"+req.Name)
	if err != nil {
		return nil, err
	}
	defer release()
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := r.Identities[req.Name]; ok {
		return nil, conflict("user-assigned identity %q already exists", req.Name)
	}
	p, err := h.newPlacement(req.Subscription, req.ResourceGroup, req.Location)
	if err != nil {
		return nil, err
	}
	tenant, err := h.subscriptionTenant(ctx, r, p.Subscription)
	if err != nil {
		return nil, err
	}
	p0, undo, err := h.newKeyIdentity(ctx, keys.IdentitySpec{Type: keys.UserAssigned, TenantID: tenant, DisplayName: "identity/" + req.Name},
		store.IdentityCredential(req.Name), fmt.Sprintf("user-assigned identity %q", req.Name))
	if err != nil {
		return nil, err
	}
	mi := &store.ManagedIdentity{
		Name: req.Name, ID: identityResourceID(p, req.Name), Placement: p,
		PrincipalID: p0.PrincipalID, ClientID: newGUID(), TenantID: p0.TenantID, TimeCreated: h.cfg.Now().UTC(),
	}
	r, err = h.update(ctx, func(r *store.Records) error {
		if _, ok := r.Identities[req.Name]; ok {
			return conflict("user-assigned identity %q already exists", req.Name)
		}
		r.Identities[req.Name] = mi
		return nil
	})
	if err != nil {
		return nil, undo(err)
	}
	h.log.Info("user-assigned identity created", "identity", req.Name, "principal", p0.PrincipalID, "tenant", p0.TenantID)
	return identityView(r, mi), nil
}

func identityView(r *store.Records, mi *store.ManagedIdentity) *api.UserAssignedIdentity {
	v := &api.UserAssignedIdentity{
		Name: mi.Name, ID: mi.ID, Type: api.UserAssignedIdentityType,
		Location: mi.Location, Subscription: mi.Subscription, ResourceGroup: mi.ResourceGroup,
		PrincipalID: mi.PrincipalID, ClientID: mi.ClientID, TenantID: mi.TenantID, TimeCreated: mi.TimeCreated,
		DiskEncryptionSets: identityUsers(r, mi.Name),
	}
	if v.DiskEncryptionSets == nil {
		v.DiskEncryptionSets = []string{}
	}
	if s := r.Subscriptions[mi.Subscription]; s != nil && s.TenantID != mi.TenantID {
		v.Warning = fmt.Sprintf("its subscription %s was moved to tenant %s, and a managed identity stays in the tenant it was created in (%s): sets cannot use their keys as it; create a new identity in subscription %s (hostcrypt identity create --name NAME --subscription %s) and give it to the sets",
			mi.Subscription, s.TenantID, mi.TenantID, mi.Subscription, mi.Subscription)
	}
	return v
}

// ShowIdentity returns one user-assigned identity, with the sets that use
// it.
func (h *Host) ShowIdentity(ctx context.Context, name string) (*api.UserAssignedIdentity, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	mi, ok := identityByRef(r, name)
	if !ok {
		return nil, notFound("user-assigned identity", name)
	}
	return identityView(r, mi), nil
}

// ListIdentities returns every user-assigned identity, sorted by name.
func (h *Host) ListIdentities(ctx context.Context) ([]*api.UserAssignedIdentity, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	return sortedViews(r.Identities, func(mi *store.ManagedIdentity) *api.UserAssignedIdentity { return identityView(r, mi) }), nil
}

// DeleteIdentity deletes a user-assigned identity no set uses: the record
// first, in a transaction that checks no set was given it, then its key
// store principal and its credential.
func (h *Host) DeleteIdentity(ctx context.Context, name string) error {
	release, err := h.claim("being deleted", "identity/"+name)
	if err != nil {
		return err
	}
	defer release()
	var mi *store.ManagedIdentity
	if _, err := h.update(ctx, func(r *store.Records) error {
		var ok bool
		if mi, ok = identityByRef(r, name); !ok {
			return notFound("user-assigned identity", name)
		}
		if users := identityUsers(r, mi.Name); len(users) > 0 {
			return conflict("user-assigned identity %q is used by disk encryption sets %s; give them another identity first (hostcrypt des update --name %s --mi-user-assigned ID, or --mi-user-assigned '' to use their system-assigned one)",
				mi.Name, strings.Join(users, ", "), users[0])
		}
		delete(r.Identities, mi.Name)
		return nil
	}); err != nil {
		return err
	}
	if err := h.keys.DeleteIdentity(ctx, mi.PrincipalID); err != nil {
		return fmt.Errorf("user-assigned identity %q is deleted, but its key store principal %s is not: %w; delete it there (hostcrypt identity delete --id %s)",
			mi.Name, mi.PrincipalID, classified(h.keys, err), mi.PrincipalID)
	}
	return h.secrets.DeleteCredential(ctx, store.IdentityCredential(mi.Name))
}

// checkIdentityTenant: a set is given only a user-assigned identity of its
// subscription's tenant now; one of another tenant could never reach a key
// for it.
func (h *Host) checkIdentityTenant(ctx context.Context, r *store.Records, des string, p store.Placement, ua *store.UserAssignedRef) error {
	if ua == nil {
		return nil
	}
	tenant, err := h.subscriptionTenant(ctx, r, p.Subscription)
	if err != nil {
		return err
	}
	if ua.TenantID == tenant {
		return nil
	}
	return badRequest("user-assigned identity %q is in tenant %s, and disk encryption set %q is in subscription %s of tenant %s; a set uses identities of its own tenant: create one there (hostcrypt identity create --name NAME --subscription %s)",
		ua.Name, ua.TenantID, des, p.Subscription, tenant, p.Subscription)
}

// checkUltraUserAssigned: a customer-key UltraSSD or PremiumV2 disk cannot
// use a set whose key access goes through a user-assigned identity.
func checkUltraUserAssigned(disk, sku string, des *store.DES) error {
	if des == nil || !api.IsUltraOrV2(sku) || des.Identity.UserAssigned == nil {
		return nil
	}
	return notAllowed(http.StatusBadRequest, "disk %q is %s and disk encryption set %q uses its key as user-assigned identity %q; UltraSSD_LRS and PremiumV2_LRS disks with customer-managed keys cannot use a set whose key access goes through a user-assigned identity: use a set that uses its system-assigned identity, or a Premium_LRS disk",
		disk, sku, des.Name, des.Identity.UserAssigned.Name)
}

// ultraUsers names the UltraSSD and PremiumV2 disks that use set des.
func ultraUsers(r *store.Records, des *store.DES) []string {
	var out []string
	for _, d := range r.Disks {
		if d.Encryption.DiskEncryptionSetID == des.ID && api.IsUltraOrV2(d.Sku.Name) {
			out = append(out, d.Name)
		}
	}
	sort.Strings(out)
	return out
}

// updateDESIdentity gives set des (claimed by the caller) the identities
// req asks for: another user-assigned one or none, a system-assigned one
// or none. A set keeps at least one. The keys' wraps do not change: they
// are the vault key's, whoever asks for them.
func (h *Host) updateDESIdentity(ctx context.Context, r *store.Records, des *store.DES, req api.UpdateDESRequest) error {
	ua := des.Identity.UserAssigned
	if req.UserAssignedIdentity != nil {
		ua = nil
		if ref := *req.UserAssignedIdentity; ref != "" {
			mi, ok := identityByRef(r, ref)
			if !ok {
				return badRequest("user-assigned identity %q does not exist: create it first (hostcrypt identity create --name NAME)", ref)
			}
			ua = uaRef(mi)
		}
	}
	hadSystem := des.Identity.PrincipalID != ""
	system := hadSystem
	if req.SystemAssignedIdentity != nil {
		system = *req.SystemAssignedIdentity
	}
	if !system && ua == nil {
		return badRequest("disk encryption set %q needs an identity to use its key as: keep its system-assigned identity (--mi-system-assigned true), or give a user-assigned one (--mi-user-assigned ID)", des.Name)
	}
	if req.UserAssignedIdentity != nil {
		if err := h.checkIdentityTenant(ctx, r, des.Name, des.Placement, ua); err != nil {
			return err
		}
	}
	if ua != nil {
		if users := ultraUsers(r, des); len(users) > 0 {
			return notAllowed(http.StatusBadRequest, "disk encryption set %q is used by UltraSSD_LRS or PremiumV2_LRS disks %s; such disks with customer-managed keys cannot use a set whose key access goes through a user-assigned identity: keep the set on its system-assigned identity, or move those disks to other keys first (hostcrypt disk update --name %s --encryption-type %s)",
				des.Name, strings.Join(users, ", "), users[0], api.EncPlatformKey)
		}
	}
	id := keys.Identity{PrincipalID: des.Identity.PrincipalID, TenantID: des.Identity.TenantID}
	undo := func(err error) error { return err }
	if system && !hadSystem {
		tenant, err := h.subscriptionTenant(ctx, r, des.Subscription)
		if err != nil {
			return err
		}
		if id, undo, err = h.newKeyIdentity(ctx, keys.IdentitySpec{Type: keys.SystemAssigned, TenantID: tenant, DisplayName: "des/" + des.Name},
			des.Name, fmt.Sprintf("the system-assigned identity of disk encryption set %q", des.Name)); err != nil {
			return err
		}
	}
	if !system {
		id = keys.Identity{}
	}
	if _, err := h.update(ctx, func(r *store.Records) error {
		d, ok := r.DES[des.Name]
		if !ok {
			return notFound("disk encryption set", des.Name)
		}
		if ua != nil && r.Identities[ua.Name] == nil {
			return conflict("user-assigned identity %q was deleted meanwhile; create it again, or give another", ua.Name)
		}
		d.Identity = store.Identity{Type: identityType(system, ua != nil), PrincipalID: id.PrincipalID, TenantID: id.TenantID, UserAssigned: ua}
		return nil
	}); err != nil {
		return undo(err)
	}
	h.log.Info("disk encryption set identities changed", "des", des.Name, "type", identityType(system, ua != nil))
	if hadSystem && !system {
		if err := h.keys.DeleteIdentity(ctx, des.Identity.PrincipalID); err != nil {
			return fmt.Errorf("disk encryption set %q no longer has its system-assigned identity, but the identity %s is not deleted: %w; delete it in the key store (hostcrypt identity delete --id %s)",
				des.Name, des.Identity.PrincipalID, classified(h.keys, err), des.Identity.PrincipalID)
		}
		return h.secrets.DeleteCredential(ctx, des.Name)
	}
	return nil
}

// newKeyIdentity creates a managed identity in the key store. On a host's
// own store its credential is kept in Secrets under credName; on a shared
// one (Config.HostIdentity) the identity is created for this host's group
// and has none: every host of the group acts for it. what names it in
// errors. undo deletes it again.
func (h *Host) newKeyIdentity(ctx context.Context, spec keys.IdentitySpec, credName, what string) (keys.Identity, func(error) error, error) {
	if hi := h.cfg.HostIdentity; hi != nil {
		spec.HostGroup = hi.Group()
	}
	id, cred, err := h.keys.CreateIdentity(ctx, spec)
	if err != nil {
		return id, nil, fmt.Errorf("creating %s in the key store: %w", what, classified(h.keys, err))
	}
	undo := func(err error) error {
		ctx := context.WithoutCancel(ctx)
		return errors.Join(err, h.secrets.DeleteCredential(ctx, credName), classified(h.keys, h.keys.DeleteIdentity(ctx, id.PrincipalID)))
	}
	switch {
	case spec.HostGroup != "" && cred != "":
		return id, nil, undo(fmt.Errorf("%s was made for host group %s, yet the key store gave it a credential: a key store older than this host's; upgrade keystored", what, spec.HostGroup))
	case spec.HostGroup != "":
		return id, undo, nil
	}
	if err := h.secrets.SetCredential(ctx, credName, cred); err != nil {
		return id, nil, undo(fmt.Errorf("keeping the credential of %s: %w", what, err))
	}
	return id, undo, nil
}
