package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Algorithms for WrapKey/UnwrapKey.
const (
	RSAOAEP256 = "RSA-OAEP-256"
	RSAOAEP    = "RSA-OAEP"
	A256KWP    = "A256KWP" // platform keys
)

// PlatformVault is the reserved vault of platform keys.
const PlatformVault = "platform"

func keyPath(vault, name string) string {
	return "/vaults/" + url.PathEscape(vault) + "/keys/" + url.PathEscape(name)
}

func versioned(vault, name, version string) string {
	p := keyPath(vault, name)
	if version != "" {
		p += "/" + url.PathEscape(version)
	}
	return p
}

type opResult struct {
	Kid   string `json:"kid"`
	Value string `json:"value"`
}

// WrapKey wraps key with the key version kid names (a full key id, with or
// without version). It returns the kid actually used.
func (c *Client) WrapKey(ctx context.Context, kid, alg string, key []byte) (string, []byte, error) {
	return c.keyOp(ctx, kid, "wrapkey", alg, key)
}

// UnwrapKey unwraps wrapped with the key version kid names.
func (c *Client) UnwrapKey(ctx context.Context, kid, alg string, wrapped []byte) (string, []byte, error) {
	return c.keyOp(ctx, kid, "unwrapkey", alg, wrapped)
}

func (c *Client) keyOp(ctx context.Context, kid, op, alg string, in []byte) (string, []byte, error) {
	var res opResult
	if err := c.do(ctx, http.MethodPost, strings.TrimRight(kid, "/")+"/"+op, nil, map[string]string{"alg": alg, "value": b64(in)}, &res); err != nil {
		return "", nil, err
	}
	out, err := unb64(res.Value)
	return res.Kid, out, err
}

// GetKeyByID returns the public key and attributes of a kid.
func (c *Client) GetKeyByID(ctx context.Context, kid string) (*KeyBundle, error) {
	var b KeyBundle
	return &b, c.do(ctx, http.MethodGet, kid, nil, nil, &b)
}

// GetKey returns a version (the current one if version is empty).
func (c *Client) GetKey(ctx context.Context, vault, name, version string) (*KeyBundle, error) {
	var b KeyBundle
	return &b, c.do(ctx, http.MethodGet, versioned(vault, name, version), nil, nil, &b)
}

// CreateKey creates a key, or a new version of an existing one.
func (c *Client) CreateKey(ctx context.Context, vault, name string, req KeyCreate) (*KeyBundle, error) {
	var b KeyBundle
	return &b, c.do(ctx, http.MethodPost, keyPath(vault, name)+"/create", nil, req, &b)
}

// ImportKey imports a key with its private parts.
func (c *Client) ImportKey(ctx context.Context, vault, name string, req KeyImport) (*KeyBundle, error) {
	var b KeyBundle
	return &b, c.do(ctx, http.MethodPut, keyPath(vault, name), nil, req, &b)
}

type list[T any] struct {
	Value []T `json:"value"`
}

// ListKeys lists the keys of a vault.
func (c *Client) ListKeys(ctx context.Context, vault string) ([]KeyItem, error) {
	var l list[KeyItem]
	return l.Value, c.do(ctx, http.MethodGet, "/vaults/"+url.PathEscape(vault)+"/keys", nil, nil, &l)
}

// ListKeyVersions lists a key's versions, oldest first.
func (c *Client) ListKeyVersions(ctx context.Context, vault, name string) ([]KeyItem, error) {
	var l list[KeyItem]
	return l.Value, c.do(ctx, http.MethodGet, keyPath(vault, name)+"/versions", nil, nil, &l)
}

// UpdateKey changes a version's attributes (the current one if version is empty).
func (c *Client) UpdateKey(ctx context.Context, vault, name, version string, req KeyUpdate) (*KeyBundle, error) {
	var b KeyBundle
	return &b, c.do(ctx, http.MethodPatch, versioned(vault, name, version), nil, req, &b)
}

// DeleteKey soft-deletes a key.
func (c *Client) DeleteKey(ctx context.Context, vault, name string) (*KeyBundle, error) {
	var b KeyBundle
	return &b, c.do(ctx, http.MethodDelete, keyPath(vault, name), nil, nil, &b)
}

// RotateKey creates a new version like the current one.
func (c *Client) RotateKey(ctx context.Context, vault, name string) (*KeyBundle, error) {
	var b KeyBundle
	return &b, c.do(ctx, http.MethodPost, keyPath(vault, name)+"/rotate", nil, nil, &b)
}

// GetRotationPolicy returns a key's rotation policy (the default if none is set).
func (c *Client) GetRotationPolicy(ctx context.Context, vault, name string) (*RotationPolicy, error) {
	var p RotationPolicy
	return &p, c.do(ctx, http.MethodGet, keyPath(vault, name)+"/rotationpolicy", nil, nil, &p)
}

// SetRotationPolicy replaces a key's rotation policy.
func (c *Client) SetRotationPolicy(ctx context.Context, vault, name string, p RotationPolicy) (*RotationPolicy, error) {
	var out RotationPolicy
	return &out, c.do(ctx, http.MethodPut, keyPath(vault, name)+"/rotationpolicy", nil, p, &out)
}

// BackupKey returns an opaque, encrypted backup of a key.
func (c *Client) BackupKey(ctx context.Context, vault, name string) (string, error) {
	var out struct {
		Value string `json:"value"`
	}
	return out.Value, c.do(ctx, http.MethodPost, keyPath(vault, name)+"/backup", nil, nil, &out)
}

// RestoreKey restores a backup into a vault of the same tenant.
func (c *Client) RestoreKey(ctx context.Context, vault, blob string) (*KeyBundle, error) {
	var b KeyBundle
	return &b, c.do(ctx, http.MethodPost, "/vaults/"+url.PathEscape(vault)+"/keys/restore", nil, map[string]string{"value": blob}, &b)
}

// ListDeletedKeys lists a vault's soft-deleted keys.
func (c *Client) ListDeletedKeys(ctx context.Context, vault string) ([]KeyItem, error) {
	var l list[KeyItem]
	return l.Value, c.do(ctx, http.MethodGet, "/vaults/"+url.PathEscape(vault)+"/deletedkeys", nil, nil, &l)
}

// RecoverKey recovers a soft-deleted key.
func (c *Client) RecoverKey(ctx context.Context, vault, name string) (*KeyBundle, error) {
	var b KeyBundle
	return &b, c.do(ctx, http.MethodPost, "/vaults/"+url.PathEscape(vault)+"/deletedkeys/"+url.PathEscape(name)+"/recover", nil, nil, &b)
}

// PurgeKey destroys a soft-deleted key for good.
func (c *Client) PurgeKey(ctx context.Context, vault, name string) error {
	return c.do(ctx, http.MethodDelete, "/vaults/"+url.PathEscape(vault)+"/deletedkeys/"+url.PathEscape(name), nil, nil, nil)
}

// CreateVault creates a vault; the caller gets a full access policy.
func (c *Client) CreateVault(ctx context.Context, name string, req VaultCreate) (*Vault, error) {
	var v Vault
	return &v, c.do(ctx, http.MethodPut, "/vaults/"+url.PathEscape(name), nil, req, &v)
}

// GetVault returns a vault.
func (c *Client) GetVault(ctx context.Context, name string) (*Vault, error) {
	var v Vault
	return &v, c.do(ctx, http.MethodGet, "/vaults/"+url.PathEscape(name), nil, nil, &v)
}

// ListVaults lists the vaults the caller can see.
func (c *Client) ListVaults(ctx context.Context) ([]Vault, error) {
	var l list[Vault]
	return l.Value, c.do(ctx, http.MethodGet, "/vaults", nil, nil, &l)
}

// UpdateVault changes purge protection or the allowed tenants.
func (c *Client) UpdateVault(ctx context.Context, name string, req VaultUpdate) (*Vault, error) {
	var v Vault
	return &v, c.do(ctx, http.MethodPatch, "/vaults/"+url.PathEscape(name), nil, req, &v)
}

// SetPolicy sets the key permissions of objectID on a vault.
func (c *Client) SetPolicy(ctx context.Context, vault, objectID string, keyPerms []string) (*Vault, error) {
	var v Vault
	body := map[string]any{"permissions": map[string][]string{"keys": keyPerms}}
	return &v, c.do(ctx, http.MethodPut, "/vaults/"+url.PathEscape(vault)+"/accessPolicies/"+url.PathEscape(objectID), nil, body, &v)
}

// DeletePolicy removes the access policy of objectID.
func (c *Client) DeletePolicy(ctx context.Context, vault, objectID string) (*Vault, error) {
	var v Vault
	return &v, c.do(ctx, http.MethodDelete, "/vaults/"+url.PathEscape(vault)+"/accessPolicies/"+url.PathEscape(objectID), nil, nil, &v)
}

// CreateIdentity creates an identity; typ is "SystemAssigned" (for a disk
// encryption set) or "User"; tenant "" means the caller's. The answer
// carries the identity's bearer token, shown only this once.
func (c *Client) CreateIdentity(ctx context.Context, typ, tenant, displayName string) (*Identity, error) {
	var id Identity
	return &id, c.do(ctx, http.MethodPost, "/identities", nil, map[string]string{"type": typ, "tenantId": tenant, "displayName": displayName}, &id)
}

// GetIdentity returns an identity (without its token).
func (c *Client) GetIdentity(ctx context.Context, principalID string) (*Identity, error) {
	var id Identity
	return &id, c.do(ctx, http.MethodGet, "/identities/"+url.PathEscape(principalID), nil, nil, &id)
}

// DeleteIdentity revokes an identity.
func (c *Client) DeleteIdentity(ctx context.Context, principalID string) error {
	return c.do(ctx, http.MethodDelete, "/identities/"+url.PathEscape(principalID), nil, nil, nil)
}

// Audit reads audit records after seq, optionally of one vault.
func (c *Client) Audit(ctx context.Context, after uint64, vault string, limit int) ([]AuditRecord, error) {
	q := url.Values{"after": {strconv.FormatUint(after, 10)}}
	if vault != "" {
		q.Set("vault", vault)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var l list[AuditRecord]
	return l.Value, c.do(ctx, http.MethodGet, "/audit", q, nil, &l)
}

// AuditQuery reads the audit records q selects.
func (c *Client) AuditQuery(ctx context.Context, q AuditQuery) (*AuditPage, error) {
	v := url.Values{"after": {strconv.FormatUint(q.After, 10)}}
	if q.Vault != "" {
		v.Set("vault", q.Vault)
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Last > 0 {
		v.Set("last", strconv.Itoa(q.Last))
	}
	if len(q.ExcludeOps) > 0 {
		v.Set("excludeOp", strings.Join(q.ExcludeOps, ","))
	}
	if q.HidePolling {
		v.Set("polling", "false")
	}
	var p AuditPage
	return &p, c.do(ctx, http.MethodGet, "/audit", v, nil, &p)
}

// AuditHead returns the head of the audit log's hash chain.
func (c *Client) AuditHead(ctx context.Context) (*AuditHead, error) {
	var h AuditHead
	return &h, c.do(ctx, http.MethodGet, "/audit/head", nil, nil, &h)
}

// AuditVerify has the key store verify its audit log's chain, and the log
// against sinceHead (SEQ:HASH) if it is not empty.
func (c *Client) AuditVerify(ctx context.Context, sinceHead string) (*AuditVerification, error) {
	var q url.Values
	if sinceHead != "" {
		q = url.Values{"sinceHead": {sinceHead}}
	}
	var r AuditVerification
	return &r, c.do(ctx, http.MethodGet, "/audit/verify", q, nil, &r)
}

// Events long-polls for events after seq: it returns once there are some,
// or empty after wait.
func (c *Client) Events(ctx context.Context, after uint64, wait time.Duration) ([]Event, error) {
	return c.EventsOf(ctx, after, wait, "")
}

// EventsOf is Events restricted to one vault ("" for all).
func (c *Client) EventsOf(ctx context.Context, after uint64, wait time.Duration, vault string) ([]Event, error) {
	q := url.Values{"after": {strconv.FormatUint(after, 10)}, "wait": {wait.String()}}
	if vault != "" {
		q.Set("vault", vault)
	}
	var l list[Event]
	return l.Value, c.do(ctx, http.MethodGet, "/events", q, nil, &l)
}

// CreateWebhook registers a URL that receives events from now on.
func (c *Client) CreateWebhook(ctx context.Context, u, vault string) (*Webhook, error) {
	var w Webhook
	return &w, c.do(ctx, http.MethodPost, "/webhooks", nil, map[string]string{"url": u, "vault": vault}, &w)
}

// DeleteWebhook removes a webhook.
func (c *Client) DeleteWebhook(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/webhooks/"+url.PathEscape(id), nil, nil, nil)
}

// CreatePlatformKey creates an AES-256 platform key (platform principal only).
func (c *Client) CreatePlatformKey(ctx context.Context, name string) (*KeyBundle, error) {
	return c.CreateKey(ctx, PlatformVault, name, KeyCreate{Kty: "oct-HSM", KeySize: 256})
}

// PlatformWrap wraps a data key with a platform key (AES key wrap with padding).
func (c *Client) PlatformWrap(ctx context.Context, name, version string, key []byte) (string, []byte, error) {
	return c.keyOp(ctx, c.base.String()+versioned(PlatformVault, name, version), "wrapkey", A256KWP, key)
}

// PlatformUnwrap unwraps a data key wrapped by PlatformWrap.
func (c *Client) PlatformUnwrap(ctx context.Context, kid string, wrapped []byte) ([]byte, error) {
	_, out, err := c.keyOp(ctx, kid, "unwrapkey", A256KWP, wrapped)
	return out, err
}

// AdvanceClock moves the server's clock forward; only servers built with
// -tags testhooks have this endpoint.
func (c *Client) AdvanceClock(ctx context.Context, d time.Duration) error {
	return c.do(ctx, http.MethodPost, "/testhooks/clock", nil, map[string]string{"advance": d.String()}, nil)
}
