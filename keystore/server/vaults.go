package server

import (
	"hostcrypt/keystore/api"

	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"

	bolt "go.etcd.io/bbolt"
)

var vaultNameRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$`)

// idRE is what a tenant or object id may be: ids end up in URLs, in the
// host's records and in messages, so they are plain identifiers (UUIDs
// and names like tenant-b), never paths.
var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`)

func checkID(field, id string) error {
	if !idRE.MatchString(id) {
		return badParam("%s %q is not valid: 1-64 letters, digits and hyphens, starting with a letter or digit (a UUID, for example)", field, id)
	}
	return nil
}

func checkTenants(field string, ids []string) error {
	for i, id := range ids {
		if err := checkID(fmt.Sprintf("%s[%d]", field, i), id); err != nil {
			return err
		}
	}
	return nil
}

func checkVaultName(name string) error {
	if !vaultNameRE.MatchString(name) || strings.Contains(name, "--") {
		return badParam("vault name %q is not valid: 3-24 letters, digits and single hyphens, starting with a letter and ending with a letter or digit", name)
	}
	return nil
}

func (s *Server) vaultJSON(v *vault) api.Vault {
	aps := []api.AccessPolicy{}
	for _, ap := range v.AccessPolicies {
		aps = append(aps, api.AccessPolicy{TenantID: ap.TenantID, ObjectID: ap.ObjectID, Permissions: api.Permissions{Keys: ap.Permissions.Keys}})
	}
	allowed := v.AllowedTenants
	if allowed == nil {
		allowed = []string{}
	}
	return api.Vault{
		ID: "/vaults/" + v.Name, Name: v.Name, Type: "Microsoft.KeyVault/vaults", Location: v.Location,
		Properties: api.VaultProperties{
			TenantID: v.TenantID, Sku: api.Sku{Family: "A", Name: v.Sku}, AccessPolicies: aps,
			EnableSoftDelete: true, SoftDeleteRetentionInDays: v.SoftDeleteRetentionInDays,
			EnablePurgeProtection: v.EnablePurgeProtection, AllowedTenants: allowed,
			VaultURI: s.baseURL + "/vaults/" + v.Name,
		},
	}
}

func loadVault(tx *bolt.Tx, name string) (*vault, error) {
	var v vault
	ok, err := getJSON(tx, bucketVaults, name, &v)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, vaultNotFound(name)
	}
	return &v, nil
}

// canManage says whether the caller may manage the vault itself: an
// administrator of its tenant or its creator.
func (c *call) canManage(v *vault) error {
	if v.Name == PlatformVault {
		return forbiddenByPolicy("vault %s is reserved for the platform and has no access policies", v.Name)
	}
	if (c.p.Kind == kindAdmin && c.p.TenantID == v.TenantID) || v.CreatedBy == c.p.ObjectID {
		return nil
	}
	return forbiddenByPolicy("caller %s may not manage vault %s; an administrator of tenant %s can", c.p.ObjectID, v.Name, v.TenantID)
}

// authorize checks that the caller may perform perm on keys of vault v:
// the platform vault only for the platform principal; otherwise the
// caller's tenant must be the vault's or one it allows, and an access
// policy must grant perm.
func (c *call) authorize(v *vault, perm string) error {
	if v.Name == PlatformVault {
		if c.p.Kind == kindPlatform {
			return nil
		}
		return forbiddenByPolicy("vault %s is reserved for the platform principal; caller %s may not use it", v.Name, c.p.ObjectID)
	}
	if !v.tenantAllowed(c.p.TenantID) {
		return errf(http.StatusForbidden, "Forbidden", "TenantNotAllowed",
			"caller %s belongs to tenant %s but vault %s is in tenant %s; its owner can allow the tenant with `hostcrypt keyvault update --name %s --allowed-tenants %s`",
			c.p.ObjectID, c.p.TenantID, v.Name, v.TenantID, v.Name, c.p.TenantID)
	}
	if ap := v.policyFor(c.p.ObjectID); ap != nil {
		for _, k := range ap.Permissions.Keys {
			if k == perm {
				return nil
			}
		}
	}
	return forbiddenByPolicy("caller %s does not have key permission '%s' on vault %s; grant it with `hostcrypt keyvault set-policy --name %s --object-id %s --key-permissions %s`",
		c.p.ObjectID, perm, v.Name, v.Name, c.p.ObjectID, perm)
}

func (s *Server) createVault(c *call) (any, error) {
	var req api.VaultCreate
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	name := c.r.PathValue("vault")
	if err := checkVaultName(name); err != nil {
		return nil, err
	}
	// Vault names are case-insensitive, as in Key Vault: PLATFORM is the
	// platform's vault as much as platform is.
	if strings.EqualFold(name, PlatformVault) {
		return nil, errf(http.StatusConflict, "VaultNameReserved", "", "vault name %s is reserved for the platform (in any case); choose another name", name)
	}
	if c.p.Kind != kindAdmin && c.p.Kind != kindUser {
		return nil, forbiddenByPolicy("caller %s (%s) may not create vaults; an administrator or user can", c.p.ObjectID, c.p.Kind)
	}
	p := req.Properties
	v := vault{Name: name, Location: strings.ToLower(req.Location), TenantID: c.p.TenantID, Sku: "standard",
		SoftDeleteRetentionInDays: 90, CreatedBy: c.p.ObjectID, Created: s.clock.Now().UTC()}
	if v.Location == "" {
		v.Location = "local"
	}
	if p.TenantID != "" && p.TenantID != c.p.TenantID {
		return nil, badParam("properties.tenantId %s is not the caller's tenant %s; a vault belongs to its creator's tenant", p.TenantID, c.p.TenantID)
	}
	if p.Sku != nil {
		sku, ok := canonical([]string{"standard", "premium"}, p.Sku.Name)
		if !ok {
			return nil, badParam("sku %q is not valid; use standard or premium (premium for RSA-HSM keys)", p.Sku.Name)
		}
		v.Sku = sku
	}
	if p.EnableSoftDelete != nil && !*p.EnableSoftDelete {
		return nil, badParam("soft delete cannot be turned off; it is always on, as in Key Vault")
	}
	if p.SoftDeleteRetentionInDays != nil {
		d := *p.SoftDeleteRetentionInDays
		if d < 7 || d > 90 {
			return nil, badParam("softDeleteRetentionInDays %d is out of range; use 7 to 90 days", d)
		}
		v.SoftDeleteRetentionInDays = d
	}
	if p.EnablePurgeProtection != nil {
		v.EnablePurgeProtection = *p.EnablePurgeProtection
	}
	if err := checkTenants("properties.allowedTenants", p.AllowedTenants); err != nil {
		return nil, err
	}
	v.AllowedTenants = p.AllowedTenants
	v.AccessPolicies = []accessPolicy{{TenantID: c.p.TenantID, ObjectID: c.p.ObjectID, Permissions: permissions{Keys: append([]string(nil), allKeyPermissions...)}}}
	err := s.db.Update(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketVaults).ForEach(func(k, _ []byte) error {
			if strings.EqualFold(string(k), name) {
				return errf(http.StatusConflict, "VaultAlreadyExists", "", "vault %s already exists (vault names are case-insensitive); choose another name or use `hostcrypt keyvault show --name %s`", k, k)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return putJSON(tx, bucketVaults, name, v)
	})
	if err != nil {
		return nil, err
	}
	c.status = http.StatusCreated
	return s.vaultJSON(&v), nil
}

func (s *Server) getVault(c *call) (any, error) {
	var out api.Vault
	err := s.db.View(func(tx *bolt.Tx) error {
		v, err := loadVault(tx, c.vault)
		if err != nil {
			return err
		}
		// The platform reads any vault's metadata: the host needs a vault's
		// location to keep a disk encryption set in the same location as
		// the vault of its key. It does not see who holds access.
		platformRead := c.p.Kind == kindPlatform && v.Name != PlatformVault
		if c.canManage(v) != nil && v.policyFor(c.p.ObjectID) == nil && !(v.Name == PlatformVault && c.p.Kind == kindPlatform) && !platformRead {
			return forbiddenByPolicy("caller %s has no access to vault %s", c.p.ObjectID, v.Name)
		}
		out = s.vaultJSON(v)
		if platformRead {
			out.Properties.AccessPolicies = []api.AccessPolicy{}
		}
		return nil
	})
	return out, err
}

func (s *Server) listVaults(c *call) (any, error) {
	out := []api.Vault{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVaults).ForEach(func(k, raw []byte) error {
			v, err := loadVault(tx, string(k))
			if err != nil {
				return err
			}
			if c.canManage(v) == nil || v.policyFor(c.p.ObjectID) != nil || (v.Name == PlatformVault && c.p.Kind == kindPlatform) {
				out = append(out, s.vaultJSON(v))
			}
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return api.List[api.Vault]{Value: out}, err
}

func (s *Server) updateVault(c *call) (any, error) {
	var req api.VaultUpdate
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	var out api.Vault
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, err := loadVault(tx, c.vault)
		if err != nil {
			return err
		}
		if err := c.canManage(v); err != nil {
			return err
		}
		if pp := req.Properties.EnablePurgeProtection; pp != nil {
			if !*pp && v.EnablePurgeProtection {
				return badParam("purge protection of vault %s cannot be turned off once on, as in Key Vault", v.Name)
			}
			v.EnablePurgeProtection = *pp
		}
		if at := req.Properties.AllowedTenants; at != nil {
			if err := checkTenants("properties.allowedTenants", *at); err != nil {
				return err
			}
			v.AllowedTenants = *at
		}
		out = s.vaultJSON(v)
		return putJSON(tx, bucketVaults, v.Name, v)
	})
	return out, err
}

func (s *Server) setPolicy(c *call) (any, error) {
	var req api.PolicySet
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	objectID := c.r.PathValue("objectId")
	if err := checkID("object id", objectID); err != nil {
		return nil, err
	}
	if req.TenantID != "" {
		if err := checkID("tenantId", req.TenantID); err != nil {
			return nil, err
		}
	}
	perms := []string{}
	for _, p := range req.Permissions.Keys {
		if strings.EqualFold(p, "all") {
			perms = append([]string(nil), allKeyPermissions...)
			break
		}
		cp, ok := canonical(allKeyPermissions, p)
		if !ok {
			return nil, badParam("key permission %q is not known; use any of %s", p, strings.Join(allKeyPermissions, ","))
		}
		perms = append(perms, cp)
	}
	var out api.Vault
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, err := loadVault(tx, c.vault)
		if err != nil {
			return err
		}
		if err := c.canManage(v); err != nil {
			return err
		}
		tenant := req.TenantID
		if tenant == "" {
			var p principal
			if ok, _ := getJSON(tx, bucketPrincipals, objectID, &p); ok {
				tenant = p.TenantID
			} else {
				tenant = v.TenantID
			}
		}
		if ap := v.policyFor(objectID); ap != nil {
			ap.TenantID, ap.Permissions.Keys = tenant, perms
		} else {
			v.AccessPolicies = append(v.AccessPolicies, accessPolicy{TenantID: tenant, ObjectID: objectID, Permissions: permissions{Keys: perms}})
		}
		if err := putJSON(tx, bucketVaults, v.Name, v); err != nil {
			return err
		}
		out = s.vaultJSON(v)
		return s.appendEvent(tx, "VaultAccessPolicyChanged", v.Name, v.Name, api.EventData{Id: s.baseURL + "/vaults/" + v.Name, VaultName: v.Name, ObjectType: "Vault", ObjectName: v.Name})
	})
	return out, err
}

func (s *Server) deletePolicy(c *call) (any, error) {
	objectID := c.r.PathValue("objectId")
	var out api.Vault
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, err := loadVault(tx, c.vault)
		if err != nil {
			return err
		}
		if err := c.canManage(v); err != nil {
			return err
		}
		kept := v.AccessPolicies[:0]
		for _, ap := range v.AccessPolicies {
			if ap.ObjectID != objectID {
				kept = append(kept, ap)
			}
		}
		if len(kept) == len(v.AccessPolicies) {
			return errf(http.StatusNotFound, "AccessPolicyNotFound", "", "vault %s has no access policy for object id %s", v.Name, objectID)
		}
		v.AccessPolicies = kept
		if err := putJSON(tx, bucketVaults, v.Name, v); err != nil {
			return err
		}
		out = s.vaultJSON(v)
		return s.appendEvent(tx, "VaultAccessPolicyChanged", v.Name, v.Name, api.EventData{Id: s.baseURL + "/vaults/" + v.Name, VaultName: v.Name, ObjectType: "Vault", ObjectName: v.Name})
	})
	return out, err
}
