package control

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/control/store"
)

// CreateDES creates a disk encryption set and its system-assigned identity.
// It succeeds before the identity has access to the key: the vault's
// administrator grants get, wrapKey and unwrapKey to the principalId shown.
// The set's record is committed in a transaction that checks the limit of
// sets per subscription and location; the identity's credential is kept
// with the host's secrets, never in the records.
func (h *Host) CreateDES(ctx context.Context, req api.CreateDESRequest) (*api.DiskEncryptionSet, error) {
	if err := checkName("disk encryption set", req.Name); err != nil {
		return nil, err
	}
	release, err := h.claim("being created", "des/"+req.Name)
	if err != nil {
		return nil, err
	}
	defer release()
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := r.DES[req.Name]; ok {
		return nil, conflict("disk encryption set %q already exists", req.Name)
	}
	vault, err := parseKeyURL(req.KeyURL)
	if err != nil {
		return nil, err
	}
	if req.EncryptionType == "" {
		req.EncryptionType = api.EncCustomerKey
	}
	if req.EncryptionType != api.EncCustomerKey && req.EncryptionType != api.EncPlatformAndCustomerKey {
		return nil, badRequest("encryption type %q for a disk encryption set: use %s or %s", req.EncryptionType, api.EncCustomerKey, api.EncPlatformAndCustomerKey)
	}
	p, err := h.newPlacement(req.Subscription, req.ResourceGroup, req.Location)
	if err != nil {
		return nil, err
	}
	if err := h.checkDESLimit(r, p); err != nil {
		return nil, err
	}
	if err := h.checkVaultLocation(ctx, req.Name, p.Location, req.KeyURL,
		fmt.Sprintf("use a key of a vault in %s, or create the set in the vault's location (--location)", p.Location)); err != nil {
		return nil, err
	}
	system := req.SystemAssignedIdentity == nil || *req.SystemAssignedIdentity
	var ua *store.UserAssignedRef
	if req.UserAssignedIdentity != "" {
		mi, ok := identityByRef(r, req.UserAssignedIdentity)
		if !ok {
			return nil, badRequest("user-assigned identity %q does not exist: create it first (hostcrypt identity create --name NAME), or leave out --mi-user-assigned", req.UserAssignedIdentity)
		}
		ua = uaRef(mi)
	} else if !system {
		return nil, badRequest("disk encryption set %q needs an identity to use its key as: give --mi-user-assigned, or leave --mi-system-assigned true", req.Name)
	}
	if err := h.checkIdentityTenant(ctx, r, req.Name, p, ua); err != nil {
		return nil, err
	}
	var id keys.Identity
	undo := func(err error) error { return err }
	if system {
		tenant, err := h.subscriptionTenant(ctx, r, p.Subscription)
		if err != nil {
			return nil, err
		}
		if id, undo, err = h.newKeyIdentity(ctx, keys.IdentitySpec{Type: keys.SystemAssigned, TenantID: tenant, DisplayName: "des/" + req.Name},
			req.Name, fmt.Sprintf("the identity of disk encryption set %q", req.Name)); err != nil {
			return nil, err
		}
	}
	des := &store.DES{
		Name: req.Name, ID: resourceID(p, typeDES, req.Name), Placement: p,
		EncryptionType:                    req.EncryptionType,
		ActiveKey:                         store.KeyForDES{SourceVault: store.SourceVault{ID: vault}, KeyURL: req.KeyURL},
		PreviousKeys:                      []store.KeyForDES{},
		RotationToLatestKeyVersionEnabled: req.EnableAutoKeyRotation,
		Identity:                          store.Identity{Type: identityType(system, ua != nil), PrincipalID: id.PrincipalID, TenantID: id.TenantID, UserAssigned: ua},
	}
	if _, err := h.update(ctx, func(r *store.Records) error {
		if _, ok := r.DES[req.Name]; ok {
			return conflict("disk encryption set %q already exists", req.Name)
		}
		if err := h.checkDESLimit(r, p); err != nil {
			return err
		}
		if ua != nil && r.Identities[ua.Name] == nil {
			return conflict("user-assigned identity %q was deleted meanwhile; create it again, or give another", ua.Name)
		}
		r.DES[req.Name] = des
		return nil
	}); err != nil {
		return nil, undo(err)
	}
	h.log.Info("disk encryption set created", "des", req.Name, "key", req.KeyURL, "identity", des.Identity.Type, "principal", keyIdentityOf(des).principal)
	return h.showDES(ctx, des), nil
}

func (h *Host) showDES(ctx context.Context, des *store.DES) *api.DiskEncryptionSet {
	v := desView(des)
	if err := h.checkAccess(ctx, des); err != nil {
		v.KeyAccess = asError(err, h.log, "des", des.Name).Message
	} else {
		v.KeyAccess = "ok"
	}
	if next := h.nextKeyCheck.Load(); des.RotationToLatestKeyVersionEnabled && next != 0 {
		t := time.Unix(0, next).UTC()
		v.NextKeyVersionCheck = &t
	}
	return v
}

// ShowDES returns one disk encryption set, with whether its identity can use
// its key right now.
func (h *Host) ShowDES(ctx context.Context, name string) (*api.DiskEncryptionSet, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	des, ok := r.DES[name]
	if !ok {
		return nil, notFound("disk encryption set", name)
	}
	return h.showDES(ctx, des), nil
}

// ListDES returns every disk encryption set, sorted by name, each with
// whether its identity can use its key right now.
func (h *Host) ListDES(ctx context.Context) ([]*api.DiskEncryptionSet, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	return sortedViews(r.DES, func(d *store.DES) *api.DiskEncryptionSet { return h.showDES(ctx, d) }), nil
}

// DeleteDES deletes a disk encryption set no disk uses, and its
// system-assigned identity; a user-assigned one stays.
func (h *Host) DeleteDES(ctx context.Context, name string) error {
	release, err := h.claim("being deleted", "des/"+name)
	if err != nil {
		return err
	}
	defer release()
	// The record first, in a transaction that checks no disk uses it; then
	// the identity, whose credential no record can lead to any more.
	var des *store.DES
	if _, err := h.update(ctx, func(r *store.Records) error {
		var ok bool
		if des, ok = r.DES[name]; !ok {
			return notFound("disk encryption set", name)
		}
		var users []string
		for _, d := range r.Disks {
			if d.Encryption.DiskEncryptionSetID == des.ID {
				users = append(users, d.Name)
			}
		}
		if len(users) > 0 {
			sort.Strings(users)
			return conflict("disk encryption set %q is used by disks %s; delete them or move them to other keys first", name, strings.Join(users, ", "))
		}
		delete(r.DES, name)
		return nil
	}); err != nil {
		return err
	}
	if des.Identity.PrincipalID == "" {
		return nil // only a user-assigned identity, which stays
	}
	if err := h.keys.DeleteIdentity(ctx, des.Identity.PrincipalID); err != nil {
		return fmt.Errorf("disk encryption set %q is deleted, but its identity %s is not: %w; delete it in the key store (hostcrypt identity delete --id %s)",
			name, des.Identity.PrincipalID, classified(h.keys, err), des.Identity.PrincipalID)
	}
	return h.secrets.DeleteCredential(ctx, name)
}
