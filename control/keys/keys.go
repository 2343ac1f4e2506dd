// Package keys is what the control plane needs of a key service, in one
// interface: wrapping data keys with the platform key, acting as a disk
// encryption set's identity on customer keys, keys of its own for temp
// disks, telling a revocation from an outage, the location of a vault, and
// the key store's events.
//
// The control plane owns the interface; the key store's adapter
// (keystore/hostkeys) implements it over the real key store, and
// keys/keystest implements all of it in memory for tests. Both say so at
// compile time, and nothing discovers a method by type assertion: a wiring
// that lacks one does not build.
package keys

import (
	"context"
	"errors"
	"time"

	"hostcrypt/disk"
)

// Service is the key service of a host.
type Service interface {
	// WrapKey wraps a new data key with the current version of the
	// platform key (disks on platform-managed keys, the second layer of
	// double encryption).
	disk.KeyWrapper
	// UnwrapKey unwraps a platform wrap, naming the exact key version that
	// made it. A wrap whose key no longer exists fails with an error
	// wrapping ErrKeyGone.
	disk.KeyUnwrapper

	// TempWrapper creates a platform key for one temp disk and wraps with
	// it, so that deallocation can destroy that key before the temp disk's
	// files.
	TempWrapper(ctx context.Context) (disk.KeyWrapper, error)
	// DestroyTempKey destroys for good the temp disk key kid names; it
	// does nothing for any other key.
	DestroyTempKey(ctx context.Context, kid string) error

	// CreateIdentity creates a managed identity — the system-assigned one
	// of a disk encryption set, or a user-assigned one — and returns it
	// with its credential (a bearer token for the key store, shown once).
	CreateIdentity(ctx context.Context, spec IdentitySpec) (Identity, string, error)
	// DeleteIdentity revokes an identity; one already gone is no error.
	DeleteIdentity(ctx context.Context, principalID string) error
	// As makes key operations as the identity holding credential, so that
	// the key store's audit log names that identity.
	As(credential string) Customer

	// Classify tells what an error of this service means for a key: a
	// clear refusal (revoked, expired) or no answer (unreachable), or
	// neither (Other).
	Classify(err error) Problem

	// Tenant returns the key store's own tenant, the platform's: where an
	// identity is created unless its subscription was moved to another.
	Tenant(ctx context.Context) (string, error)

	// VaultLocation returns the location of the vault keyURL names, or an
	// error wrapping ErrVaultNotFound.
	VaultLocation(ctx context.Context, keyURL string) (string, error)

	// Events returns the key store's events after sequence number after,
	// waiting up to wait for the first one; none after wait is no error.
	Events(ctx context.Context, after uint64, wait time.Duration) ([]Event, error)
}

// Customer is key operations on customer keys as one identity.
type Customer interface {
	// WrapKey wraps dek with the key version kid names (RSA-OAEP-256).
	WrapKey(ctx context.Context, kid string, dek []byte) (disk.WrappedKey, error)
	// UnwrapKey unwraps a customer wrap.
	UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error)
	// LatestKeyID returns the id of the current version of kid's key.
	LatestKeyID(ctx context.Context, kid string) (string, error)
}

// Managed identity types, as the key store and Azure name them.
const (
	// SystemAssigned is the identity a disk encryption set is created
	// with, and deleted with.
	SystemAssigned = "SystemAssigned"
	// UserAssigned is a managed identity of its own, which several sets
	// may use.
	UserAssigned = "UserAssigned"
)

// IdentitySpec says what identity CreateIdentity makes.
type IdentitySpec struct {
	// Type is SystemAssigned or UserAssigned.
	Type string
	// TenantID is the tenant the identity is created in; "" is the key
	// store's own (Tenant).
	TenantID string
	// DisplayName names it for the key store's administrators
	// ("des/des1", "identity/id1").
	DisplayName string
	// HostGroup, when set, makes an identity that the hosts of that group
	// act for (HostIdentity.ActFor): it has no credential of its own, and
	// CreateIdentity returns "" for it.
	HostGroup string
}

// HostIdentity is a host's own identity in the key store, on a store that
// several hosts share: it uses no key as itself, but acts for the managed
// identities created for its host group, so that a disk encryption set
// made on one host is used on every other, with no set's credential kept
// anywhere, and the key store's audit log names the host beside the set.
type HostIdentity interface {
	// Group is the host group the host belongs to.
	Group() string
	// ActFor makes key operations as managed identity principalID, acting
	// for it; the key store refuses them unless the identity was created
	// for this host's group.
	ActFor(principalID string) Customer
}

// Identity is a managed identity in the key store.
type Identity struct {
	Type        string
	PrincipalID string
	TenantID    string
}

// ErrAccessDenied marks, wrapped, a refusal of an identity for want of a
// permission on the key's vault (the access policy), as against a key that
// is disabled or gone: its fix is a grant. Classify calls it Revoked.
var ErrAccessDenied = errors.New("access to the key denied by the vault's access policy")

// Problem is what an error of the key service means for a key.
type Problem int

// What Classify finds.
const (
	// Usable: no problem (a nil error).
	Usable Problem = iota
	// Revoked: disabled, deleted, not yet valid, or access removed.
	Revoked
	// Expired: past its expiry; wrap is refused, unwrap still works.
	Expired
	// Unreachable: no answer, or a failure of the key store itself; not a
	// revocation.
	Unreachable
	// Other: not an answer about a key (a failure of this host).
	Other
)

func (p Problem) String() string {
	switch p {
	case Usable:
		return "usable"
	case Revoked:
		return "revoked"
	case Expired:
		return "expired"
	case Unreachable:
		return "unreachable"
	}
	return "other"
}

// Event is one key store event: a key version created, near expiry or
// expired, a key changed or deleted, an access policy changed.
type Event struct {
	Sequence uint64
	Type     string // Microsoft.KeyVault.KeyNewVersionCreated, …
	Subject  string // the key or vault it is about
	Time     time.Time
}

var (
	// ErrKeyGone is wrapped by UnwrapKey's error when the wrapping key no
	// longer exists in the key store.
	ErrKeyGone = errors.New("the wrapping key no longer exists")
	// ErrVaultNotFound is wrapped by VaultLocation's error when the vault
	// a key id names does not exist.
	ErrVaultNotFound = errors.New("vault not found")
)

// DefaultTimeout bounds every call to the key service of a host: the
// control plane never waits longer for the key store (hostcryptd's
// --keystore-timeout changes it).
const DefaultTimeout = 10 * time.Second
