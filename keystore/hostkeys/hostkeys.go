// Package hostkeys is the host's key service over the key store: it
// implements control/keys.Service with the key store's client, as the
// platform principal for platform keys and as each disk encryption set's
// identity for customer keys: with that identity's credential on a host's
// own store, or, on a shared one, as the host's own identity acting for it
// (HostIdentity).
//
// Every call is bounded by Config.Timeout: a key store that stops
// answering is reported as unreachable ("the key store at HOST did not
// answer within 10 s") and never waited on.
package hostkeys

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"hostcrypt/control/keys"
	"hostcrypt/disk"
	"hostcrypt/keystore/api"
	"hostcrypt/keystore/client"
)

// PlatformKeyName is the platform key that wraps the data keys of disks
// encrypted with platform-managed keys.
const PlatformKeyName = "disk-encryption"

// tempKeyPrefix names the platform keys of temp disks, one per temp disk.
const tempKeyPrefix = "temp-disk-"

// Config says where the key store is and how the host authenticates.
type Config struct {
	URL       string // https://HOST:PORT
	CA        string // file of the CA certificate that signed the key store's
	TokenFile string // file holding the platform's bearer token
	// HostTokenFile, if set, holds the token of the host's own identity
	// (a key store principal of type Host, which an administrator
	// creates): the host acts for the managed identities of its group and
	// reads the group's record key with it.
	HostTokenFile string
	// Timeout bounds every call (keys.DefaultTimeout if zero).
	Timeout time.Duration
}

// Service is the key service of a host.
type Service struct {
	c   *client.Client
	cfg Config

	mu sync.Mutex
	// as holds one client per identity credential, so that the monitor's
	// probes and every wrap and unwrap reuse a kept-alive TLS connection
	// instead of a handshake per call.
	as map[string]*client.Client
	// tenant is the key store's own tenant, once asked (Tenant).
	tenant string

	// host is the host identity's client and self, if it has one.
	host   *client.Client
	hostID *api.Identity
}

var _ keys.Service = (*Service)(nil)

// Connect connects to the key store as the platform and makes sure the
// platform key exists. It fails when the key store cannot be reached or its
// certificate is not signed by the given CA.
func Connect(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = keys.DefaultTimeout
	}
	c, err := client.New(cfg.URL, cfg.CA, cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("key store %s: %w", cfg.URL, err)
	}
	c.SetTimeout(cfg.Timeout)
	_, err = c.GetKey(ctx, api.PlatformVault, PlatformKeyName, "")
	if client.IsNotFound(err) {
		_, err = c.CreatePlatformKey(ctx, PlatformKeyName)
	}
	if err != nil {
		c.Close()
		if client.IsUnreachable(err) {
			return nil, fmt.Errorf("cannot reach or trust the key store at %s (check --keystore and --keystore-ca): %w", cfg.URL, err)
		}
		return nil, fmt.Errorf("key store %s: preparing the platform key: %w", cfg.URL, err)
	}
	k := &Service{c: c, cfg: cfg}
	if cfg.HostTokenFile != "" {
		if err := k.connectHost(ctx); err != nil {
			k.Close()
			return nil, err
		}
	}
	return k, nil
}

// connectHost authenticates as the host's own identity and checks it is
// one.
func (k *Service) connectHost(ctx context.Context) error {
	h, err := client.New(k.cfg.URL, k.cfg.CA, k.cfg.HostTokenFile)
	if err != nil {
		return fmt.Errorf("--host-token-file: %w", err)
	}
	h.SetTimeout(k.cfg.Timeout)
	k.host = h
	self, err := h.GetIdentity(ctx, "self")
	if err != nil {
		if client.IsUnauthorized(err) {
			return fmt.Errorf("--host-token-file %s: the key store does not accept its token (wrong file, or the host identity was deleted): %w", k.cfg.HostTokenFile, err)
		}
		return fmt.Errorf("--host-token-file: reading the host's identity: %w", err)
	}
	if self.Type != api.IdentityHost || self.HostGroup == "" {
		return fmt.Errorf("--host-token-file %s holds the token of a %s identity (%s), not a host's; an administrator creates one: hostcrypt identity create --type Host --host-group GROUP --display-name host/NAME --token-out FILE",
			k.cfg.HostTokenFile, self.Type, self.PrincipalID)
	}
	k.hostID = self
	return nil
}

// HostIdentity is the host's own identity, or nil without
// Config.HostTokenFile.
func (k *Service) HostIdentity() keys.HostIdentity {
	if k.hostID == nil {
		return nil
	}
	return hostIdentity{k}
}

// HostPrincipal is the host identity's principal id ("" without one).
func (k *Service) HostPrincipal() string {
	if k.hostID == nil {
		return ""
	}
	return k.hostID.PrincipalID
}

// RecordKey returns the record key of the host's group, read as the host
// identity; the caller wipes it when done.
func (k *Service) RecordKey(ctx context.Context) ([]byte, error) {
	if k.host == nil {
		return nil, errors.New("the record key is read as the host's identity: give --host-token-file")
	}
	rk, err := k.host.RecordKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the host group's record key: %w", err)
	}
	if rk.HostGroup != k.hostID.HostGroup || len(rk.Key) != 32 {
		return nil, fmt.Errorf("the key store answered a record key of group %q (%d bytes) to a host of group %q", rk.HostGroup, len(rk.Key), k.hostID.HostGroup)
	}
	return rk.Key, nil
}

type hostIdentity struct{ k *Service }

func (h hostIdentity) Group() string { return h.k.hostID.HostGroup }

func (h hostIdentity) ActFor(principalID string) keys.Customer {
	return &customer{k: h.k, actFor: principalID}
}

// Close releases the connections.
func (k *Service) Close() {
	k.c.Close()
	if k.host != nil {
		k.host.Close()
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.as {
		c.Close()
	}
}

// WrapKey wraps with the current version of the platform key.
func (k *Service) WrapKey(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
	kid, wrapped, err := k.c.PlatformWrap(ctx, PlatformKeyName, "", dek)
	if err != nil {
		return disk.WrappedKey{}, fmt.Errorf("wrapping with the platform key: %w", err)
	}
	return disk.WrappedKey{KeyID: kid, Algorithm: api.A256KWP, Value: wrapped}, nil
}

// UnwrapKey unwraps a platform wrap.
func (k *Service) UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
	if w.Algorithm != api.A256KWP {
		return nil, fmt.Errorf("key %s: wrap algorithm %q is not a platform key's", w.KeyID, w.Algorithm)
	}
	dek, err := k.c.PlatformUnwrap(ctx, w.KeyID, w.Value)
	if client.IsNotFound(err) {
		return nil, fmt.Errorf("unwrapping with %s: %w: %w", w.KeyID, keys.ErrKeyGone, err)
	}
	if err != nil {
		return nil, fmt.Errorf("unwrapping with %s: %w", w.KeyID, denied(err))
	}
	return dek, nil
}

type wrapperFunc func(ctx context.Context, dek []byte) (disk.WrappedKey, error)

func (f wrapperFunc) WrapKey(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
	return f(ctx, dek)
}

// TempWrapper creates a platform key for one temp disk and wraps with it.
func (k *Service) TempWrapper(ctx context.Context) (disk.KeyWrapper, error) {
	b := make([]byte, 12)
	rand.Read(b)
	name := tempKeyPrefix + hex.EncodeToString(b)
	if _, err := k.c.CreatePlatformKey(ctx, name); err != nil {
		return nil, err
	}
	return wrapperFunc(func(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
		kid, wrapped, err := k.c.PlatformWrap(ctx, name, "", dek)
		if err != nil {
			return disk.WrappedKey{}, fmt.Errorf("wrapping with the temp disk's key: %w", err)
		}
		return disk.WrappedKey{KeyID: kid, Algorithm: api.A256KWP, Value: wrapped}, nil
	}), nil
}

// DestroyTempKey deletes and purges the temp disk key that kid names; kids
// of any other key are left alone.
func (k *Service) DestroyTempKey(ctx context.Context, kid string) error {
	id, err := api.ParseKeyID(kid)
	if err != nil || id.Vault != api.PlatformVault || !strings.HasPrefix(id.Name, tempKeyPrefix) {
		return nil
	}
	if _, err := k.c.DeleteKey(ctx, api.PlatformVault, id.Name); err != nil && !client.IsNotFound(err) {
		return err
	}
	if err := k.c.PurgeKey(ctx, api.PlatformVault, id.Name); err != nil && !client.IsNotFound(err) {
		return err
	}
	return nil
}

// CreateIdentity creates a managed identity (a disk encryption set's
// system-assigned one, or a user-assigned one), as the platform.
func (k *Service) CreateIdentity(ctx context.Context, spec keys.IdentitySpec) (keys.Identity, string, error) {
	typ := api.IdentitySystemAssigned
	switch spec.Type {
	case keys.SystemAssigned:
	case keys.UserAssigned:
		typ = api.IdentityUserAssigned
	default:
		return keys.Identity{}, "", fmt.Errorf("identity type %q: want %s or %s", spec.Type, keys.SystemAssigned, keys.UserAssigned)
	}
	id, err := k.c.CreateIdentityWith(ctx, api.IdentityCreate{Type: typ, TenantID: spec.TenantID, DisplayName: spec.DisplayName, HostGroup: spec.HostGroup})
	if err != nil {
		return keys.Identity{}, "", err
	}
	return keys.Identity{Type: id.Type, PrincipalID: id.PrincipalID, TenantID: id.TenantID}, id.Token, nil
}

// Tenant returns the key store's own tenant: the platform vault's, which is
// the platform principal's. It never changes, so it is asked once.
func (k *Service) Tenant(ctx context.Context) (string, error) {
	k.mu.Lock()
	t := k.tenant
	k.mu.Unlock()
	if t != "" {
		return t, nil
	}
	v, err := k.c.GetVault(ctx, api.PlatformVault)
	if err != nil {
		return "", err
	}
	if v.Properties.TenantID == "" {
		return "", fmt.Errorf("the key store's platform vault names no tenant")
	}
	k.mu.Lock()
	k.tenant = v.Properties.TenantID
	k.mu.Unlock()
	return v.Properties.TenantID, nil
}

// DeleteIdentity revokes an identity; one already gone is fine.
func (k *Service) DeleteIdentity(ctx context.Context, principalID string) error {
	if err := k.c.DeleteIdentity(ctx, principalID); err != nil && !client.IsNotFound(err) {
		return err
	}
	return nil
}

// As returns key operations made as the identity holding credential.
func (k *Service) As(credential string) keys.Customer {
	return &customer{k: k, credential: credential}
}

// Classify tells a revocation from an expiry and from an outage: only a
// clear answer of the key store revokes; no answer (a timeout included),
// or a failure of the key store itself, is an outage.
func (k *Service) Classify(err error) keys.Problem {
	var ce *client.Error
	switch {
	case err == nil:
		return keys.Usable
	case client.IsUnreachable(err), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return keys.Unreachable
	case !errors.As(err, &ce):
		return keys.Other
	case ce.Status >= 500:
		return keys.Unreachable
	case client.IsKeyExpired(err):
		return keys.Expired
	}
	return keys.Revoked
}

// VaultLocation returns the location of the vault a key id names, as the
// platform (which may read any vault's metadata).
func (k *Service) VaultLocation(ctx context.Context, keyURL string) (string, error) {
	id, err := api.ParseKeyID(keyURL)
	if err != nil {
		return "", err
	}
	v, err := k.c.GetVault(ctx, id.Vault)
	if client.IsNotFound(err) {
		return "", fmt.Errorf("%w: %v", keys.ErrVaultNotFound, err)
	}
	if err != nil {
		return "", err
	}
	return v.Location, nil
}

// Events long-polls the key store's event stream.
func (k *Service) Events(ctx context.Context, after uint64, wait time.Duration) ([]keys.Event, error) {
	evs, err := k.c.Events(ctx, after, wait)
	if err != nil {
		return nil, err
	}
	out := make([]keys.Event, 0, len(evs))
	for _, e := range evs {
		out = append(out, keys.Event{Sequence: e.Sequence, Type: e.EventType, Subject: e.Subject, Time: e.EventTime})
	}
	return out, nil
}

type customer struct {
	k          *Service
	credential string
	// actFor is the identity the host's identity acts for, instead of a
	// credential.
	actFor string
}

func (c *customer) client() (*client.Client, error) {
	if c.actFor != "" {
		// The host's connections, with the identity named on each call.
		return c.k.host.ActingFor(c.actFor), nil
	}
	c.k.mu.Lock()
	defer c.k.mu.Unlock()
	if cl, ok := c.k.as[c.credential]; ok {
		return cl, nil
	}
	cl, err := client.NewWithToken(c.k.cfg.URL, c.k.cfg.CA, c.credential)
	if err != nil {
		return nil, err
	}
	cl.SetTimeout(c.k.cfg.Timeout)
	if c.k.as == nil {
		c.k.as = map[string]*client.Client{}
	}
	c.k.as[c.credential] = cl
	return cl, nil
}

func (c *customer) WrapKey(ctx context.Context, kid string, dek []byte) (disk.WrappedKey, error) {
	cl, err := c.client()
	if err != nil {
		return disk.WrappedKey{}, err
	}
	used, wrapped, err := cl.WrapKey(ctx, kid, api.RSAOAEP256, dek)
	if err != nil {
		return disk.WrappedKey{}, denied(err)
	}
	return disk.WrappedKey{KeyID: used, Algorithm: api.RSAOAEP256, Value: wrapped}, nil
}

func (c *customer) UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
	cl, err := c.client()
	if err != nil {
		return nil, err
	}
	_, dek, err := cl.UnwrapKey(ctx, w.KeyID, w.Algorithm, w.Value)
	if err != nil {
		return nil, fmt.Errorf("unwrapping with %s: %w", w.KeyID, denied(err))
	}
	return dek, nil
}

// LatestKeyID returns the current version's id of the key kid belongs to.
func (c *customer) LatestKeyID(ctx context.Context, kid string) (string, error) {
	id, err := api.ParseKeyID(kid)
	if err != nil {
		return "", err
	}
	cl, err := c.client()
	if err != nil {
		return "", err
	}
	b, err := cl.GetKeyByID(ctx, id.Versionless().String())
	if err != nil {
		return "", denied(err)
	}
	return b.Key.Kid, nil
}

// denied marks a refusal for want of an access-policy permission, which
// the control plane answers with 403 and the command that grants it.
func denied(err error) error {
	if client.IsForbiddenByPolicy(err) {
		return fmt.Errorf("%w: %w", keys.ErrAccessDenied, err)
	}
	return err
}
