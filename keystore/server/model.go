package server

import (
	"strings"
	"time"
)

// Principal kinds.
const (
	kindAdmin    = "Admin"
	kindPlatform = "Platform"
	kindSystem   = "SystemAssigned"
	kindUser     = "User"
	// kindUserAssigned is a user-assigned managed identity: like a
	// system-assigned one it only uses keys its access policies grant, but
	// it is a resource of its own that several disk encryption sets share.
	kindUserAssigned = "UserAssigned"
	// kindHost is a host's own identity: it uses no key as itself, but
	// acts for the SystemAssigned and UserAssigned identities created for
	// its host group (see actFor).
	kindHost = "Host"
)

// PlatformVault is the reserved vault holding the platform's AES keys; only
// the platform principal may use it.
const PlatformVault = "platform"

// principal is a caller the store knows. Only the SHA-256 of its bearer
// token is stored.
type principal struct {
	ObjectID    string `json:"objectId"`
	TenantID    string `json:"tenantId"`
	Kind        string `json:"type"`
	DisplayName string `json:"displayName,omitempty"`
	// HostGroup is a Host's group, or the group whose hosts act for a
	// managed identity; a managed identity with one has no token.
	HostGroup string    `json:"hostGroup,omitempty"`
	TokenHash string    `json:"tokenHash"`
	Created   time.Time `json:"created"`
}

// accessPolicy grants a principal key permissions on a vault.
type accessPolicy struct {
	TenantID    string      `json:"tenantId"`
	ObjectID    string      `json:"objectId"`
	Permissions permissions `json:"permissions"`
}

type permissions struct {
	Keys []string `json:"keys"`
}

// vault is the stored form of a vault.
type vault struct {
	Name                      string         `json:"name"`
	Location                  string         `json:"location"`
	TenantID                  string         `json:"tenantId"`
	Sku                       string         `json:"sku"`
	SoftDeleteRetentionInDays int            `json:"softDeleteRetentionInDays"`
	EnablePurgeProtection     bool           `json:"enablePurgeProtection"`
	AllowedTenants            []string       `json:"allowedTenants,omitempty"`
	AccessPolicies            []accessPolicy `json:"accessPolicies"`
	CreatedBy                 string         `json:"createdBy"`
	Created                   time.Time      `json:"created"`
}

func (v *vault) policyFor(objectID string) *accessPolicy {
	for i := range v.AccessPolicies {
		if v.AccessPolicies[i].ObjectID == objectID {
			return &v.AccessPolicies[i]
		}
	}
	return nil
}

func (v *vault) tenantAllowed(tenant string) bool {
	if tenant == v.TenantID {
		return true
	}
	for _, t := range v.AllowedTenants {
		if t == tenant {
			return true
		}
	}
	return false
}

// keyVersion is one version of a key. Private holds the private key (or
// the AES key of a platform key) sealed under the master key.
type keyVersion struct {
	Version  string            `json:"version"`
	Kty      string            `json:"kty"`
	Size     int               `json:"size"`
	N        []byte            `json:"n,omitempty"`
	E        int               `json:"e,omitempty"`
	Private  []byte            `json:"private"`
	KeyOps   []string          `json:"keyOps"`
	Enabled  bool              `json:"enabled"`
	NBF      *time.Time        `json:"nbf,omitempty"`
	EXP      *time.Time        `json:"exp,omitempty"`
	Created  time.Time         `json:"created"`
	Updated  time.Time         `json:"updated"`
	Tags     map[string]string `json:"tags,omitempty"`
	Notified bool              `json:"nearExpiryNotified,omitempty"`
	Expired  bool              `json:"expiredNotified,omitempty"`
}

func (kv *keyVersion) hasOp(op string) bool {
	for _, o := range kv.KeyOps {
		if o == op {
			return true
		}
	}
	return false
}

// key is every version of one key plus its rotation policy and deletion
// state. It is stored as one record so that one transaction changes it.
type key struct {
	Vault      string          `json:"vault"`
	Name       string          `json:"name"`
	Versions   []*keyVersion   `json:"versions"` // oldest first; the last is current
	Policy     *rotationPolicy `json:"rotationPolicy,omitempty"`
	Deleted    *time.Time      `json:"deletedDate,omitempty"`
	PurgeAfter *time.Time      `json:"scheduledPurgeDate,omitempty"`
}

func (k *key) current() *keyVersion { return k.Versions[len(k.Versions)-1] }

func (k *key) version(v string) *keyVersion {
	if v == "" {
		return k.current()
	}
	for _, kv := range k.Versions {
		if strings.EqualFold(kv.Version, v) {
			return kv
		}
	}
	return nil
}

// Key permissions, as Key Vault names them.
var allKeyPermissions = []string{
	"get", "list", "create", "update", "import", "delete", "recover", "purge",
	"wrapKey", "unwrapKey", "rotate", "getrotationpolicy", "setrotationpolicy",
	"backup", "restore",
}

// Key operations a version may allow.
var allKeyOps = []string{"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"}

func canonical(list []string, word string) (string, bool) {
	for _, w := range list {
		if strings.EqualFold(w, word) {
			return w, true
		}
	}
	return "", false
}
