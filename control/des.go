package control

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	hcrypto "hostcrypt/crypto"
	"hostcrypt/disk"
)

// CustomerKeys performs key operations as one identity (a disk encryption
// set's), on keys of the customer's vaults.
type CustomerKeys interface {
	// WrapKey wraps dek with the key version kid names (RSA-OAEP-256).
	WrapKey(ctx context.Context, kid string, dek []byte) (disk.WrappedKey, error)
	UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error)
	// LatestKeyID returns the id of the current version of kid's key.
	LatestKeyID(ctx context.Context, kid string) (string, error)
}

// Identities creates and deletes system-assigned identities, and acts as one.
type Identities interface {
	CreateIdentity(ctx context.Context, displayName string) (Identity, string, error) // identity, credential
	DeleteIdentity(ctx context.Context, principalID string) error
	As(credential string) CustomerKeys
}

// Identity is a system-assigned identity as Azure shows it.
type Identity struct {
	Type        string `json:"type"`
	PrincipalID string `json:"principalId"`
	TenantID    string `json:"tenantId"`
}

// KeyForDES names a key version in a vault.
type KeyForDES struct {
	SourceVault SourceVault `json:"sourceVault"`
	KeyURL      string      `json:"keyUrl"`
}

// SourceVault names a vault.
type SourceVault struct {
	ID string `json:"id"`
}

// DiskEncryptionSet points disks at a customer-managed key and owns the
// identity that uses it.
type DiskEncryptionSet struct {
	Name                              string      `json:"name"`
	ID                                string      `json:"id"`
	Location                          string      `json:"location"`
	Subscription                      string      `json:"subscription"`
	ResourceGroup                     string      `json:"resourceGroup"`
	EncryptionType                    string      `json:"encryptionType"`
	ActiveKey                         KeyForDES   `json:"activeKey"`
	PreviousKeys                      []KeyForDES `json:"previousKeys"`
	RotationToLatestKeyVersionEnabled bool        `json:"rotationToLatestKeyVersionEnabled"`
	LastKeyRotationTimestamp          *time.Time  `json:"lastKeyRotationTimestamp,omitempty"`
	AutoKeyRotationError              string      `json:"autoKeyRotationError,omitempty"`
	// LastKeyVersionCheck is when auto-rotation last looked for a new
	// version of the key, and LastKeyVersionFound the version it found.
	LastKeyVersionCheck *time.Time `json:"lastKeyVersionCheck,omitempty"`
	LastKeyVersionFound string     `json:"lastKeyVersionFound,omitempty"`
	// NextKeyVersionCheck is when it looks next, while auto-rotation is on;
	// computed by show.
	NextKeyVersionCheck *time.Time `json:"nextKeyVersionCheck,omitempty"`
	Identity            Identity   `json:"identity"`
	// KeyAccess says whether the identity can use the active key right now
	// ("ok", or why not and what to do); computed by show.
	KeyAccess string `json:"keyAccess,omitempty"`
}

// ErrKeyAccessDenied marks the key service's refusal of an identity for
// want of a permission on the key's vault; the API answers it with 403 and
// the one command that grants the permissions a set needs.
var ErrKeyAccessDenied = errors.New("access to the key denied by the vault's access policy")

// accessDenied is that answer for a set's identity refused the operation op
// (wrapKey, unwrapKey) with the key kid.
func accessDenied(des *DiskEncryptionSet, kid, op string) *Error {
	vault, err := parseKeyURL(kid)
	if err != nil {
		vault = des.ActiveKey.SourceVault.ID
	}
	return errorf(http.StatusForbidden, "KeyVaultAccessForbidden",
		"disk encryption set %q lacks key permission '%s' on vault %s; grant its identity access: hostcrypt keyvault set-policy --name %s --object-id %s --key-permissions get,wrapKey,unwrapKey",
		des.Name, op, vault, vault, des.Identity.PrincipalID)
}

// parseKeyURL checks a versioned key id: https://HOST/vaults/V/keys/K/VERSION.
func parseKeyURL(kid string) (vault string, err error) {
	u, err := url.Parse(kid)
	if err == nil && u.Scheme == "https" && u.Host != "" {
		p := strings.Split(strings.Trim(u.Path, "/"), "/")
		if len(p) == 5 && p[0] == "vaults" && p[2] == "keys" && p[1] != "" && p[3] != "" && p[4] != "" {
			return p[1], nil
		}
	}
	return "", badRequest("key URL %q: give a versioned key id, https://HOST/vaults/VAULT/keys/KEY/VERSION (hostcrypt key show prints it as kid)", kid)
}

// CreateDESRequest is the body of a disk encryption set creation.
type CreateDESRequest struct {
	Name                  string `json:"name"`
	KeyURL                string `json:"keyUrl"`
	EncryptionType        string `json:"encryptionType,omitempty"`
	EnableAutoKeyRotation bool   `json:"enableAutoKeyRotation,omitempty"`
	Location              string `json:"location,omitempty"`
	Subscription          string `json:"subscription,omitempty"`
	ResourceGroup         string `json:"resourceGroup,omitempty"`
}

// CreateDES creates a disk encryption set and its system-assigned identity.
// It succeeds before the identity has access to the key: the vault's
// administrator grants get, wrapKey and unwrapKey to the principalId shown.
func (h *Host) CreateDES(ctx context.Context, r CreateDESRequest) (*DiskEncryptionSet, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := checkName("disk encryption set", r.Name); err != nil {
		return nil, err
	}
	if _, ok := h.st.DES[r.Name]; ok {
		return nil, conflict("disk encryption set %q already exists", r.Name)
	}
	vault, err := parseKeyURL(r.KeyURL)
	if err != nil {
		return nil, err
	}
	if r.EncryptionType == "" {
		r.EncryptionType = EncCustomerKey
	}
	if r.EncryptionType != EncCustomerKey && r.EncryptionType != EncPlatformAndCustomerKey {
		return nil, badRequest("encryption type %q for a disk encryption set: use %s or %s", r.EncryptionType, EncCustomerKey, EncPlatformAndCustomerKey)
	}
	ids, ok := h.cfg.Keys.(Identities)
	if !ok {
		return nil, errorf(http.StatusNotImplemented, "NotSupported", "this host's key service cannot create identities")
	}
	p, err := h.checkCreateDES(ctx, r)
	if err != nil {
		return nil, err
	}
	id, cred, err := ids.CreateIdentity(ctx, "des/"+r.Name)
	if err != nil {
		return nil, fmt.Errorf("creating the identity of disk encryption set %q: %w", r.Name, err)
	}
	des := &DiskEncryptionSet{
		Name: r.Name, ID: p.id(typeDES, r.Name), Location: p.Location, Subscription: p.Subscription, ResourceGroup: p.ResourceGroup,
		EncryptionType:                    r.EncryptionType,
		ActiveKey:                         KeyForDES{SourceVault: SourceVault{ID: vault}, KeyURL: r.KeyURL},
		PreviousKeys:                      []KeyForDES{},
		RotationToLatestKeyVersionEnabled: r.EnableAutoKeyRotation,
		Identity:                          id,
	}
	h.st.DES[r.Name] = des
	h.st.Credentials[r.Name] = cred
	if err := h.save(); err != nil {
		delete(h.st.DES, r.Name)
		delete(h.st.Credentials, r.Name)
		return nil, errors.Join(err, ids.DeleteIdentity(ctx, id.PrincipalID))
	}
	h.log.Info("disk encryption set created", "des", r.Name, "key", r.KeyURL, "principal", id.PrincipalID)
	return h.showDES(ctx, des), nil
}

// customerKeys acts as the identity of a disk encryption set.
func (h *Host) customerKeys(des string) (CustomerKeys, error) {
	ids, ok := h.cfg.Keys.(Identities)
	cred := h.st.Credentials[des]
	if !ok || cred == "" {
		return nil, fmt.Errorf("disk encryption set %q has no usable identity", des)
	}
	return ids.As(cred), nil
}

// checkAccess proves the identity can get, wrap and unwrap with the active
// key by wrapping and unwrapping a throw-away key.
func (h *Host) checkAccess(ctx context.Context, des *DiskEncryptionSet) error {
	ck, err := h.customerKeys(des.Name)
	if err != nil {
		return err
	}
	probe := make([]byte, 32)
	rand.Read(probe)
	op := "wrapKey"
	w, err := ck.WrapKey(ctx, des.ActiveKey.KeyURL, probe)
	if err == nil {
		var back []byte
		op = "unwrapKey"
		back, err = ck.UnwrapKey(ctx, w)
		hcrypto.Wipe(back)
	}
	if errors.Is(err, ErrKeyAccessDenied) {
		return accessDenied(des, des.ActiveKey.KeyURL, op)
	}
	if err != nil {
		return fmt.Errorf("the identity %s of disk encryption set %q cannot use key %s: %w (grant it get, wrapKey and unwrapKey: hostcrypt keyvault set-policy --name %s --object-id %s --key-permissions get,wrapKey,unwrapKey)",
			des.Identity.PrincipalID, des.Name, des.ActiveKey.KeyURL, err, des.ActiveKey.SourceVault.ID, des.Identity.PrincipalID)
	}
	return nil
}

func (h *Host) showDES(ctx context.Context, des *DiskEncryptionSet) *DiskEncryptionSet {
	c := *des
	c.PreviousKeys = append([]KeyForDES{}, des.PreviousKeys...)
	if err := h.checkAccess(ctx, des); err != nil {
		c.KeyAccess = asError(err).Message
	} else {
		c.KeyAccess = "ok"
	}
	if des.RotationToLatestKeyVersionEnabled && !h.nextKeyCheck.IsZero() {
		next := h.nextKeyCheck.UTC()
		c.NextKeyVersionCheck = &next
	}
	return &c
}

// ShowDES returns one disk encryption set, with whether its identity can use
// its key right now.
func (h *Host) ShowDES(ctx context.Context, name string) (*DiskEncryptionSet, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	des, ok := h.st.DES[name]
	if !ok {
		return nil, notFound("disk encryption set", name)
	}
	return h.showDES(ctx, des), nil
}

// ListDES returns every disk encryption set, sorted by name.
func (h *Host) ListDES(ctx context.Context) []*DiskEncryptionSet {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*DiskEncryptionSet, 0, len(h.st.DES))
	for _, d := range h.st.DES {
		out = append(out, h.showDES(ctx, d))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// DeleteDES deletes a disk encryption set no disk uses, and its identity.
func (h *Host) DeleteDES(ctx context.Context, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	des, ok := h.st.DES[name]
	if !ok {
		return notFound("disk encryption set", name)
	}
	var users []string
	for _, d := range h.st.Disks {
		if d.Encryption.DiskEncryptionSetID == des.ID {
			users = append(users, d.Name)
		}
	}
	if len(users) > 0 {
		sort.Strings(users)
		return conflict("disk encryption set %q is used by disks %s; delete them or move them to other keys first", name, strings.Join(users, ", "))
	}
	if ids, ok := h.cfg.Keys.(Identities); ok {
		if err := ids.DeleteIdentity(ctx, des.Identity.PrincipalID); err != nil {
			return fmt.Errorf("deleting the identity of disk encryption set %q: %w", name, err)
		}
	}
	delete(h.st.DES, name)
	delete(h.st.Credentials, name)
	return h.save()
}

// desByID finds a disk encryption set by its resource id or name.
func (h *Host) desByID(id string) (*DiskEncryptionSet, bool) {
	for _, d := range h.st.DES {
		if d.ID == id || d.Name == id {
			return d, true
		}
	}
	return nil, false
}

type wrapFunc func(ctx context.Context, dek []byte) (disk.WrappedKey, error)

func (f wrapFunc) WrapKey(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
	return f(ctx, dek)
}

type unwrapFunc func(ctx context.Context, w disk.WrappedKey) ([]byte, error)

func (f unwrapFunc) UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
	return f(ctx, w)
}

// unwrapperFor opens a disk's wraps: platform wraps with the platform key,
// customer wraps as the identity of the disk's encryption set, so the key
// store's audit log names that identity for every use.
func (h *Host) unwrapperFor(d *Disk) disk.KeyUnwrapper {
	return unwrapFunc(func(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
		if !strings.HasPrefix(w.Algorithm, "RSA") {
			return h.cfg.Keys.UnwrapKey(ctx, w)
		}
		des, ok := h.desByID(d.Encryption.DiskEncryptionSetID)
		if !ok {
			return nil, fmt.Errorf("disk %q is encrypted with key %s but its disk encryption set is gone", d.Name, w.KeyID)
		}
		ck, err := h.customerKeys(des.Name)
		if err != nil {
			return nil, err
		}
		dek, err := ck.UnwrapKey(ctx, w)
		if errors.Is(err, ErrKeyAccessDenied) {
			return nil, accessDenied(des, w.KeyID, "unwrapKey")
		}
		if err != nil {
			return nil, fmt.Errorf("disk %q: the identity %s of disk encryption set %q cannot unwrap with key %s: %w",
				d.Name, des.Identity.PrincipalID, des.Name, w.KeyID, err)
		}
		return dek, nil
	})
}

// openOptions tells the engine what the control state records of a disk's
// keys: a customer-managed data key must not turn up wrapped by a platform
// key in the disk's metadata.
func openOptions(d *Disk) []disk.OpenOption {
	if d.Encryption.Type == EncCustomerKey || d.Encryption.Type == EncPlatformAndCustomerKey {
		return []disk.OpenOption{disk.CustomerManaged()}
	}
	return nil
}

// wrappersFor returns the key wrappers of a new disk's layers.
func (h *Host) wrappersFor(ctx context.Context, encType string, des *DiskEncryptionSet) ([]disk.KeyWrapper, error) {
	if des == nil {
		return []disk.KeyWrapper{h.cfg.Keys}, nil
	}
	ck, err := h.customerKeys(des.Name)
	if err != nil {
		return nil, err
	}
	cmk := wrapFunc(func(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
		w, err := ck.WrapKey(ctx, des.ActiveKey.KeyURL, dek)
		if errors.Is(err, ErrKeyAccessDenied) {
			return w, accessDenied(des, des.ActiveKey.KeyURL, "wrapKey")
		}
		if err != nil {
			return w, fmt.Errorf("the identity %s of disk encryption set %q cannot wrap with key %s: %w (grant it get, wrapKey and unwrapKey with hostcrypt keyvault set-policy --name %s --object-id %s --key-permissions get,wrapKey,unwrapKey)",
				des.Identity.PrincipalID, des.Name, des.ActiveKey.KeyURL, err, des.ActiveKey.SourceVault.ID, des.Identity.PrincipalID)
		}
		return w, nil
	})
	if encType == EncPlatformAndCustomerKey {
		// Layer 1: the data key under the customer's key; layer 2: an
		// independent infrastructure key under the platform key.
		return []disk.KeyWrapper{cmk, h.cfg.Keys}, nil
	}
	return []disk.KeyWrapper{cmk}, nil
}
