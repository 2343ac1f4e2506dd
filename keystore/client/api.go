package client

import (
	"context"
	"hostcrypt/keystore/api"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

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
	var res api.KeyOperationResult
	if err := c.do(ctx, http.MethodPost, strings.TrimRight(kid, "/")+"/"+op, nil, api.KeyOperation{Alg: alg, Value: b64(in)}, &res); err != nil {
		return "", nil, err
	}
	out, err := unb64(res.Value)
	return res.Kid, out, err
}

// GetKeyByID returns the public key and attributes of a kid.
func (c *Client) GetKeyByID(ctx context.Context, kid string) (*api.KeyBundle, error) {
	var b api.KeyBundle
	return &b, c.do(ctx, http.MethodGet, kid, nil, nil, &b)
}

// GetKey returns a version (the current one if version is empty).
func (c *Client) GetKey(ctx context.Context, vault, name, version string) (*api.KeyBundle, error) {
	var b api.KeyBundle
	return &b, c.do(ctx, http.MethodGet, versioned(vault, name, version), nil, nil, &b)
}

// CreateKey creates a key, or a new version of an existing one.
func (c *Client) CreateKey(ctx context.Context, vault, name string, req api.KeyCreate) (*api.KeyBundle, error) {
	var b api.KeyBundle
	return &b, c.do(ctx, http.MethodPost, keyPath(vault, name)+"/create", nil, req, &b)
}

// ImportKey imports a key with its private parts.
func (c *Client) ImportKey(ctx context.Context, vault, name string, req api.KeyImport) (*api.KeyBundle, error) {
	var b api.KeyBundle
	return &b, c.do(ctx, http.MethodPut, keyPath(vault, name), nil, req, &b)
}

// ListKeys lists the keys of a vault.
func (c *Client) ListKeys(ctx context.Context, vault string) ([]api.KeyItem, error) {
	var l api.List[api.KeyItem]
	return l.Value, c.do(ctx, http.MethodGet, "/vaults/"+url.PathEscape(vault)+"/keys", nil, nil, &l)
}

// ListKeyVersions lists a key's versions, oldest first.
func (c *Client) ListKeyVersions(ctx context.Context, vault, name string) ([]api.KeyItem, error) {
	var l api.List[api.KeyItem]
	return l.Value, c.do(ctx, http.MethodGet, keyPath(vault, name)+"/versions", nil, nil, &l)
}

// UpdateKey changes a version's attributes (the current one if version is empty).
func (c *Client) UpdateKey(ctx context.Context, vault, name, version string, req api.KeyUpdate) (*api.KeyBundle, error) {
	var b api.KeyBundle
	return &b, c.do(ctx, http.MethodPatch, versioned(vault, name, version), nil, req, &b)
}

// DeleteKey soft-deletes a key.
func (c *Client) DeleteKey(ctx context.Context, vault, name string) (*api.KeyBundle, error) {
	var b api.KeyBundle
	return &b, c.do(ctx, http.MethodDelete, keyPath(vault, name), nil, nil, &b)
}

// RotateKey creates a new version like the current one.
func (c *Client) RotateKey(ctx context.Context, vault, name string) (*api.KeyBundle, error) {
	var b api.KeyBundle
	return &b, c.do(ctx, http.MethodPost, keyPath(vault, name)+"/rotate", nil, nil, &b)
}

// GetRotationPolicy returns a key's rotation policy (the default if none is set).
func (c *Client) GetRotationPolicy(ctx context.Context, vault, name string) (*api.RotationPolicy, error) {
	var p api.RotationPolicy
	return &p, c.do(ctx, http.MethodGet, keyPath(vault, name)+"/rotationpolicy", nil, nil, &p)
}

// SetRotationPolicy replaces a key's rotation policy.
func (c *Client) SetRotationPolicy(ctx context.Context, vault, name string, p api.RotationPolicy) (*api.RotationPolicy, error) {
	var out api.RotationPolicy
	return &out, c.do(ctx, http.MethodPut, keyPath(vault, name)+"/rotationpolicy", nil, p, &out)
}

// BackupKey returns an opaque, encrypted backup of a key.
func (c *Client) BackupKey(ctx context.Context, vault, name string) (string, error) {
	var out api.Blob
	return out.Value, c.do(ctx, http.MethodPost, keyPath(vault, name)+"/backup", nil, nil, &out)
}

// RestoreKey restores a backup into a vault of the same tenant.
func (c *Client) RestoreKey(ctx context.Context, vault, blob string) (*api.KeyBundle, error) {
	var b api.KeyBundle
	return &b, c.do(ctx, http.MethodPost, "/vaults/"+url.PathEscape(vault)+"/keys/restore", nil, api.Blob{Value: blob}, &b)
}

// ListDeletedKeys lists a vault's soft-deleted keys.
func (c *Client) ListDeletedKeys(ctx context.Context, vault string) ([]api.KeyItem, error) {
	var l api.List[api.KeyItem]
	return l.Value, c.do(ctx, http.MethodGet, "/vaults/"+url.PathEscape(vault)+"/deletedkeys", nil, nil, &l)
}

// RecoverKey recovers a soft-deleted key.
func (c *Client) RecoverKey(ctx context.Context, vault, name string) (*api.KeyBundle, error) {
	var b api.KeyBundle
	return &b, c.do(ctx, http.MethodPost, "/vaults/"+url.PathEscape(vault)+"/deletedkeys/"+url.PathEscape(name)+"/recover", nil, nil, &b)
}

// PurgeKey destroys a soft-deleted key for good.
func (c *Client) PurgeKey(ctx context.Context, vault, name string) error {
	return c.do(ctx, http.MethodDelete, "/vaults/"+url.PathEscape(vault)+"/deletedkeys/"+url.PathEscape(name), nil, nil, nil)
}

// CreateVault creates a vault; the caller gets a full access policy.
func (c *Client) CreateVault(ctx context.Context, name string, req api.VaultCreate) (*api.Vault, error) {
	var v api.Vault
	return &v, c.do(ctx, http.MethodPut, "/vaults/"+url.PathEscape(name), nil, req, &v)
}

// GetVault returns a vault.
func (c *Client) GetVault(ctx context.Context, name string) (*api.Vault, error) {
	var v api.Vault
	return &v, c.do(ctx, http.MethodGet, "/vaults/"+url.PathEscape(name), nil, nil, &v)
}

// ListVaults lists the vaults the caller can see.
func (c *Client) ListVaults(ctx context.Context) ([]api.Vault, error) {
	var l api.List[api.Vault]
	return l.Value, c.do(ctx, http.MethodGet, "/vaults", nil, nil, &l)
}

// UpdateVault changes purge protection or the allowed tenants.
func (c *Client) UpdateVault(ctx context.Context, name string, req api.VaultUpdate) (*api.Vault, error) {
	var v api.Vault
	return &v, c.do(ctx, http.MethodPatch, "/vaults/"+url.PathEscape(name), nil, req, &v)
}

// SetPolicy sets the key permissions of objectID on a vault.
func (c *Client) SetPolicy(ctx context.Context, vault, objectID string, keyPerms []string) (*api.Vault, error) {
	var v api.Vault
	body := api.PolicySet{Permissions: api.Permissions{Keys: keyPerms}}
	return &v, c.do(ctx, http.MethodPut, "/vaults/"+url.PathEscape(vault)+"/accessPolicies/"+url.PathEscape(objectID), nil, body, &v)
}

// DeletePolicy removes the access policy of objectID.
func (c *Client) DeletePolicy(ctx context.Context, vault, objectID string) (*api.Vault, error) {
	var v api.Vault
	return &v, c.do(ctx, http.MethodDelete, "/vaults/"+url.PathEscape(vault)+"/accessPolicies/"+url.PathEscape(objectID), nil, nil, &v)
}

// CreateIdentity creates an identity; typ is "SystemAssigned" (for a disk
// encryption set), "UserAssigned" (a managed identity of its own) or
// "User"; tenant "" means the caller's. The answer
// carries the identity's bearer token, shown only this once.
func (c *Client) CreateIdentity(ctx context.Context, typ, tenant, displayName string) (*api.Identity, error) {
	return c.CreateIdentityWith(ctx, api.IdentityCreate{Type: typ, TenantID: tenant, DisplayName: displayName})
}

// CreateIdentityWith creates an identity as req says: a host identity
// (Type Host, HostGroup), or a managed identity that a host group's hosts
// act for (HostGroup set), which has no token.
func (c *Client) CreateIdentityWith(ctx context.Context, req api.IdentityCreate) (*api.Identity, error) {
	var id api.Identity
	return &id, c.do(ctx, http.MethodPost, "/identities", nil, req, &id)
}

// RecordKey returns the record key of the caller's host group; the
// caller is a host identity acting as itself.
func (c *Client) RecordKey(ctx context.Context) (*api.RecordKey, error) {
	var k api.RecordKey
	return &k, c.do(ctx, http.MethodGet, "/recordkey", nil, nil, &k)
}

// GetIdentity returns an identity (without its token).
func (c *Client) GetIdentity(ctx context.Context, principalID string) (*api.Identity, error) {
	var id api.Identity
	return &id, c.do(ctx, http.MethodGet, "/identities/"+url.PathEscape(principalID), nil, nil, &id)
}

// DeleteIdentity revokes an identity.
func (c *Client) DeleteIdentity(ctx context.Context, principalID string) error {
	return c.do(ctx, http.MethodDelete, "/identities/"+url.PathEscape(principalID), nil, nil, nil)
}

// Audit reads audit records after seq, optionally of one vault.
func (c *Client) Audit(ctx context.Context, after uint64, vault string, limit int) ([]api.AuditRecord, error) {
	q := url.Values{"after": {strconv.FormatUint(after, 10)}}
	if vault != "" {
		q.Set("vault", vault)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var l api.List[api.AuditRecord]
	return l.Value, c.do(ctx, http.MethodGet, "/audit", q, nil, &l)
}

// AuditQuery selects audit records; it becomes the query of GET /audit.
type AuditQuery struct {
	After       uint64   // only records after this seq
	Vault       string   // only this vault's
	Limit       int      // the oldest Limit after After (0: the server's default, 1000)
	Last        int      // instead of Limit: the newest Last
	ExcludeOps  []string // leave out these operations
	HidePolling bool     // leave out the host's own event polling (successful EventsRead by the platform)
}

// AuditQuery reads the audit records q selects.
func (c *Client) AuditQuery(ctx context.Context, q AuditQuery) (*api.AuditPage, error) {
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
	var p api.AuditPage
	return &p, c.do(ctx, http.MethodGet, "/audit", v, nil, &p)
}

// api.AuditHead returns the head of the audit log's hash chain.
func (c *Client) AuditHead(ctx context.Context) (*api.AuditHead, error) {
	var h api.AuditHead
	return &h, c.do(ctx, http.MethodGet, "/audit/head", nil, nil, &h)
}

// AuditVerify has the key store verify its audit log's chain, and the log
// against sinceHead (SEQ:HASH) if it is not empty.
func (c *Client) AuditVerify(ctx context.Context, sinceHead string) (*api.AuditVerification, error) {
	var q url.Values
	if sinceHead != "" {
		q = url.Values{"sinceHead": {sinceHead}}
	}
	var r api.AuditVerification
	return &r, c.do(ctx, http.MethodGet, "/audit/verify", q, nil, &r)
}

// Events long-polls for events after seq: it returns once there are some,
// or empty after wait.
func (c *Client) Events(ctx context.Context, after uint64, wait time.Duration) ([]api.Event, error) {
	return c.EventsOf(ctx, after, wait, "")
}

// EventsOf is Events restricted to one vault ("" for all).
func (c *Client) EventsOf(ctx context.Context, after uint64, wait time.Duration, vault string) ([]api.Event, error) {
	q := url.Values{"after": {strconv.FormatUint(after, 10)}, "wait": {wait.String()}}
	if vault != "" {
		q.Set("vault", vault)
	}
	var l api.List[api.Event]
	// The answer may take wait by design: the timeout counts from then.
	return l.Value, c.doWaiting(ctx, wait, http.MethodGet, "/events", q, nil, &l)
}

// CreateWebhook registers a URL that receives events from now on.
func (c *Client) CreateWebhook(ctx context.Context, u, vault string) (*api.Webhook, error) {
	var w api.Webhook
	return &w, c.do(ctx, http.MethodPost, "/webhooks", nil, api.WebhookCreate{URL: u, Vault: vault}, &w)
}

// DeleteWebhook removes a webhook.
func (c *Client) DeleteWebhook(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/webhooks/"+url.PathEscape(id), nil, nil, nil)
}

// CreatePlatformKey creates an AES-256 platform key (platform principal only).
func (c *Client) CreatePlatformKey(ctx context.Context, name string) (*api.KeyBundle, error) {
	size := 256
	return c.CreateKey(ctx, api.PlatformVault, name, api.KeyCreate{Kty: "oct-HSM", KeySize: &size})
}

// PlatformWrap wraps a data key with a platform key (AES key wrap with padding).
func (c *Client) PlatformWrap(ctx context.Context, name, version string, key []byte) (string, []byte, error) {
	return c.keyOp(ctx, c.base.String()+versioned(api.PlatformVault, name, version), "wrapkey", api.A256KWP, key)
}

// PlatformUnwrap unwraps a data key wrapped by PlatformWrap.
func (c *Client) PlatformUnwrap(ctx context.Context, kid string, wrapped []byte) ([]byte, error) {
	_, out, err := c.keyOp(ctx, kid, "unwrapkey", api.A256KWP, wrapped)
	return out, err
}

// AdvanceClock moves the server's clock forward; only servers built with
// -tags testhooks have this endpoint.
func (c *Client) AdvanceClock(ctx context.Context, d time.Duration) error {
	return c.do(ctx, http.MethodPost, "/testhooks/clock", nil, api.ClockAdvance{Advance: d.String()}, nil)
}
