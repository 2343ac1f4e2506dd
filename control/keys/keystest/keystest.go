// Package keystest is an in-memory key service implementing all of
// keys.Service, for the tests of every package that needs keys: a platform
// key, temp disk keys, identities with access that tests grant and revoke,
// customer keys that tests disable, expire and rotate, vaults with
// locations, events, and a hook to stall or fail any call.
//
// Wraps are AES-256-GCM under one random key of the fake, bound to the key
// id they name, so a wrap opens only under its own id: not real key store
// semantics, but enough for the control plane, which never looks inside a
// wrap.
package keystest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"hostcrypt/control/keys"
	hcrypto "hostcrypt/crypto"
	"hostcrypt/disk"
)

// Algorithms of the fake's wraps.
const (
	PlatformAlg = "A256GCM"
	CustomerAlg = "RSA-OAEP-256"
)

// PlatformKeyID is the key id of the fake's platform key.
const PlatformKeyID = "platform/test/v1"

// DefaultLocation is where a vault the test did not place is.
const DefaultLocation = "local"

// Error is a refusal or failure of the fake, with what it means for a key.
type Error struct {
	Problem keys.Problem
	Msg     string
}

func (e *Error) Error() string { return e.Msg }

// Unwrap makes a refusal by the access policy an ErrAccessDenied, as the
// real service's is.
func (e *Error) Unwrap() error {
	if strings.HasPrefix(e.Msg, "ForbiddenByPolicy:") {
		return keys.ErrAccessDenied
	}
	return nil
}

// Service is the fake key service. Its zero value is not usable; call New.
type Service struct {
	aead cipher.AEAD

	mu    sync.Mutex
	temp  map[string]bool // live temp disk key ids
	ntemp int
	ids   map[string]keys.Identity // by credential
	// groups is the host group of each identity made for one (by
	// principal id); such an identity is in ids under actCred.
	groups  map[string]string
	granted map[string]bool // principal id -> may use customer keys
	// AutoGrant grants every identity access when it is created.
	autoGrant bool
	state     map[string]keys.Problem // kid (with or without version) -> Revoked or Expired
	latest    map[string]string       // versionless kid -> latest kid
	vaults    map[string]string       // vault -> location; "" = deleted
	// onlyVaults: a vault not in vaults does not exist (else it is in
	// DefaultLocation).
	onlyVaults bool
	down       bool
	hook       func(ctx context.Context, op string) error
	events     []keys.Event
	wake       chan struct{}
	unwraps    int
	calls      map[string]int
}

var _ keys.Service = (*Service)(nil)

// New returns a fake key service. Identities get no access until Grant
// (or AutoGrant).
func New() *Service {
	k := hcrypto.NewDataKey()
	b, err := aes.NewCipher(k)
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	hcrypto.Wipe(k)
	return &Service{aead: g, temp: map[string]bool{}, ids: map[string]keys.Identity{}, groups: map[string]string{}, granted: map[string]bool{},
		state: map[string]keys.Problem{}, latest: map[string]string{}, vaults: map[string]string{},
		wake: make(chan struct{}), calls: map[string]int{}}
}

// AutoGrant makes every identity created from now on able to use its keys.
func (s *Service) AutoGrant() *Service {
	s.mu.Lock()
	s.autoGrant = true
	s.mu.Unlock()
	return s
}

// Grant gives (ok) or takes away the access of principal to customer keys.
func (s *Service) Grant(principal string, ok bool) {
	s.mu.Lock()
	s.granted[principal] = ok
	s.mu.Unlock()
}

// SetKeyState makes kid (a key id with or without version) usable, revoked
// (disabled, deleted) or expired.
func (s *Service) SetKeyState(kid string, p keys.Problem) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p == keys.Usable {
		delete(s.state, kid)
		return
	}
	s.state[kid] = p
}

// SetLatest makes latest the current version of its key, as a rotation
// does.
func (s *Service) SetLatest(latest string) {
	s.mu.Lock()
	s.latest[versionless(latest)] = latest
	s.mu.Unlock()
}

// SetVault places vault in location; an empty location makes the vault not
// exist.
func (s *Service) SetVault(vault, location string) {
	s.mu.Lock()
	s.vaults[vault] = location
	s.mu.Unlock()
}

// OnlyVaults makes the vaults of locations (name -> location) the only ones
// that exist.
func (s *Service) OnlyVaults(locations map[string]string) *Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onlyVaults = true
	for v, l := range locations {
		s.vaults[v] = l
	}
	return s
}

// SetUnreachable makes every call fail as an unreachable key store would
// (down), or answer again.
func (s *Service) SetUnreachable(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// SetHook calls hook at the start of every call with the call's name
// ("WrapKey", "Customer.WrapKey", "Events"...); an error it returns is the
// call's. A hook that blocks should return when ctx ends.
func (s *Service) SetHook(hook func(ctx context.Context, op string) error) {
	s.mu.Lock()
	s.hook = hook
	s.mu.Unlock()
}

// Emit appends an event and wakes Events.
func (s *Service) Emit(typ, subject string) {
	s.mu.Lock()
	s.events = append(s.events, keys.Event{Sequence: uint64(len(s.events) + 1), Type: typ, Subject: subject, Time: time.Now().UTC()})
	close(s.wake)
	s.wake = make(chan struct{})
	s.mu.Unlock()
}

// Unwraps counts the unwraps made, platform and customer.
func (s *Service) Unwraps() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unwraps
}

// Calls counts the calls of op made so far.
func (s *Service) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// TempKeys returns the ids of the temp disk keys that exist.
func (s *Service) TempKeys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.temp {
		out = append(out, k)
	}
	return out
}

// enter counts a call and runs the hook and the outage.
func (s *Service) enter(ctx context.Context, op string) error {
	s.mu.Lock()
	s.calls[op]++
	hook, down := s.hook, s.down
	s.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, op); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if down {
		return &Error{keys.Unreachable, "key store unreachable (the test made it so)"}
	}
	return nil
}

func (s *Service) seal(kid, alg string, dek []byte) disk.WrappedKey {
	n := make([]byte, s.aead.NonceSize())
	rand.Read(n)
	return disk.WrappedKey{KeyID: kid, Algorithm: alg, Value: s.aead.Seal(n, n, dek, []byte(kid)), Created: time.Now().UTC()}
}

func (s *Service) open(w disk.WrappedKey) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(w.Value) < ns {
		return nil, hcrypto.ErrWrongKey
	}
	dek, err := s.aead.Open(nil, w.Value[:ns], w.Value[ns:], []byte(w.KeyID))
	if err != nil {
		return nil, hcrypto.ErrWrongKey
	}
	s.mu.Lock()
	s.unwraps++
	s.mu.Unlock()
	return dek, nil
}

// WrapKey wraps with the platform key.
func (s *Service) WrapKey(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
	if err := s.enter(ctx, "WrapKey"); err != nil {
		return disk.WrappedKey{}, err
	}
	return s.seal(PlatformKeyID, PlatformAlg, dek), nil
}

// UnwrapKey unwraps a platform or temp disk wrap.
func (s *Service) UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
	if err := s.enter(ctx, "UnwrapKey"); err != nil {
		return nil, err
	}
	if strings.HasPrefix(w.KeyID, "platform/temp-") {
		s.mu.Lock()
		live := s.temp[w.KeyID]
		s.mu.Unlock()
		if !live {
			return nil, fmt.Errorf("unwrapping with %s: %w", w.KeyID, keys.ErrKeyGone)
		}
	}
	return s.open(w)
}

type wrapFunc func(ctx context.Context, dek []byte) (disk.WrappedKey, error)

func (f wrapFunc) WrapKey(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
	return f(ctx, dek)
}

// TempWrapper creates a temp disk key and wraps with it.
func (s *Service) TempWrapper(ctx context.Context) (disk.KeyWrapper, error) {
	if err := s.enter(ctx, "TempWrapper"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.ntemp++
	kid := fmt.Sprintf("platform/temp-%d/v1", s.ntemp)
	s.temp[kid] = true
	s.mu.Unlock()
	return wrapFunc(func(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
		if err := s.enter(ctx, "TempWrapper.WrapKey"); err != nil {
			return disk.WrappedKey{}, err
		}
		return s.seal(kid, PlatformAlg, dek), nil
	}), nil
}

// DestroyTempKey destroys a temp disk key.
func (s *Service) DestroyTempKey(ctx context.Context, kid string) error {
	if err := s.enter(ctx, "DestroyTempKey"); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.temp, kid)
	s.mu.Unlock()
	return nil
}

// Tenant is the fake's own tenant.
const Tenant = "t"

// CreateIdentity creates identity p-NAME with credential cred-NAME, NAME
// being the display name, in the tenant asked for (Tenant if none).
func (s *Service) CreateIdentity(ctx context.Context, spec keys.IdentitySpec) (keys.Identity, string, error) {
	if err := s.enter(ctx, "CreateIdentity"); err != nil {
		return keys.Identity{}, "", err
	}
	if spec.Type != keys.SystemAssigned && spec.Type != keys.UserAssigned {
		return keys.Identity{}, "", fmt.Errorf("identity type %q: want %s or %s", spec.Type, keys.SystemAssigned, keys.UserAssigned)
	}
	tenant := spec.TenantID
	if tenant == "" {
		tenant = Tenant
	}
	name := spec.DisplayName
	id := keys.Identity{Type: spec.Type, PrincipalID: "p-" + name, TenantID: tenant}
	cred := "cred-" + name
	s.mu.Lock()
	if spec.HostGroup != "" {
		s.ids[actCred(id.PrincipalID)] = id
		s.groups[id.PrincipalID] = spec.HostGroup
		cred = ""
	} else {
		s.ids[cred] = id
	}
	if s.autoGrant {
		s.granted[id.PrincipalID] = true
	}
	s.mu.Unlock()
	return id, cred, nil
}

// DeleteIdentity revokes an identity.
func (s *Service) DeleteIdentity(ctx context.Context, principal string) error {
	if err := s.enter(ctx, "DeleteIdentity"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for cred, id := range s.ids {
		if id.PrincipalID == principal {
			delete(s.ids, cred)
		}
	}
	delete(s.granted, principal)
	delete(s.groups, principal)
	return nil
}

// actCred is where an identity made for a host group is kept in ids.
func actCred(principal string) string { return "\x00act/" + principal }

// Host returns a host identity of group: it acts for the identities
// created for that group, and is refused for any other.
func (s *Service) Host(group string) keys.HostIdentity { return hostIdentity{s: s, group: group} }

type hostIdentity struct {
	s     *Service
	group string
}

func (h hostIdentity) Group() string { return h.group }

func (h hostIdentity) ActFor(principal string) keys.Customer {
	return &customer{s: h.s, cred: actCred(principal), group: h.group}
}

// As acts as the identity holding credential.
func (s *Service) As(credential string) keys.Customer { return &customer{s: s, cred: credential} }

// Classify reads the fake's own errors.
func (s *Service) Classify(err error) keys.Problem {
	var e *Error
	switch {
	case err == nil:
		return keys.Usable
	case errors.As(err, &e):
		return e.Problem
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return keys.Unreachable
	}
	return keys.Other
}

// Tenant returns the fake's own tenant.
func (s *Service) Tenant(ctx context.Context) (string, error) {
	if err := s.enter(ctx, "Tenant"); err != nil {
		return "", err
	}
	return Tenant, nil
}

// Identities returns the identities that exist, by principal id.
func (s *Service) Identities() map[string]keys.Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]keys.Identity{}
	for _, id := range s.ids {
		out[id.PrincipalID] = id
	}
	return out
}

// VaultLocation returns where the vault of keyURL is.
func (s *Service) VaultLocation(ctx context.Context, keyURL string) (string, error) {
	if err := s.enter(ctx, "VaultLocation"); err != nil {
		return "", err
	}
	vault := vaultOf(keyURL)
	s.mu.Lock()
	loc, set := s.vaults[vault]
	only := s.onlyVaults
	s.mu.Unlock()
	switch {
	case !set && !only:
		return DefaultLocation, nil
	case !set:
		return "", fmt.Errorf("vault %s: %w", vault, keys.ErrVaultNotFound)
	case loc == "":
		return "", fmt.Errorf("vault %s: %w", vault, keys.ErrVaultNotFound)
	}
	return loc, nil
}

// Events returns the events after seq, waiting up to wait for one.
func (s *Service) Events(ctx context.Context, after uint64, wait time.Duration) ([]keys.Event, error) {
	if err := s.enter(ctx, "Events"); err != nil {
		return nil, err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		s.mu.Lock()
		var out []keys.Event
		if after < uint64(len(s.events)) {
			out = append(out, s.events[after:]...)
		}
		wake := s.wake
		s.mu.Unlock()
		if len(out) > 0 || wait <= 0 {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, nil
		case <-wake:
		}
	}
}

type customer struct {
	s    *Service
	cred string
	// group is, for a host acting for an identity, the host's group.
	group string
}

// check refuses an identity without access, or a key not usable for op.
func (c *customer) check(kid string, wrap bool) error {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.ids[c.cred]
	if !ok && c.group != "" {
		return &Error{keys.Revoked, "ActForNotAllowed: the identity does not exist"}
	}
	if !ok {
		return &Error{keys.Revoked, "Unauthorized: the bearer token is not valid"}
	}
	if c.group != "" && s.groups[id.PrincipalID] != c.group {
		return &Error{keys.Revoked, fmt.Sprintf("ActForNotAllowed: a host of group %s may not act for %s", c.group, id.PrincipalID)}
	}
	if !s.granted[id.PrincipalID] {
		return &Error{keys.Revoked, fmt.Sprintf("ForbiddenByPolicy: %s has no key permission on %s", id.PrincipalID, kid)}
	}
	for _, k := range []string{kid, versionless(kid)} {
		switch s.state[k] {
		case keys.Revoked:
			return &Error{keys.Revoked, fmt.Sprintf("KeyDisabled: key %s is disabled", kid)}
		case keys.Expired:
			if wrap {
				return &Error{keys.Expired, fmt.Sprintf("KeyExpired: key %s has expired", kid)}
			}
		}
	}
	return nil
}

func (c *customer) WrapKey(ctx context.Context, kid string, dek []byte) (disk.WrappedKey, error) {
	if err := c.s.enter(ctx, "Customer.WrapKey"); err != nil {
		return disk.WrappedKey{}, err
	}
	if err := c.check(kid, true); err != nil {
		return disk.WrappedKey{}, err
	}
	return c.s.seal(kid, CustomerAlg, dek), nil
}

func (c *customer) UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
	if err := c.s.enter(ctx, "Customer.UnwrapKey"); err != nil {
		return nil, err
	}
	if err := c.check(w.KeyID, false); err != nil {
		return nil, err
	}
	return c.s.open(w)
}

func (c *customer) LatestKeyID(ctx context.Context, kid string) (string, error) {
	if err := c.s.enter(ctx, "Customer.LatestKeyID"); err != nil {
		return "", err
	}
	if err := c.check(kid, false); err != nil {
		return "", err
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if l, ok := c.s.latest[versionless(kid)]; ok {
		return l, nil
	}
	return kid, nil
}

// versionless drops the version of https://HOST/vaults/V/keys/K/VERSION.
func versionless(kid string) string {
	if i := strings.Index(kid, "/keys/"); i >= 0 {
		rest := kid[i+len("/keys/"):]
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			return kid[:i+len("/keys/")+j]
		}
	}
	return kid
}

// vaultOf is the vault name of a key id.
func vaultOf(kid string) string {
	_, rest, ok := strings.Cut(kid, "/vaults/")
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, "/")
	return v
}
