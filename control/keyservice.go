package control

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/control/store"
	hcrypto "hostcrypt/crypto"
	"hostcrypt/disk"
	ksapi "hostcrypt/keystore/api"
)

// Every call to the key service goes through here, so that its errors
// carry their class (a refused key is a 403, no answer a 503; see asError)
// and customer keys are used as the identity of their disk encryption set.

type wrapFunc func(ctx context.Context, dek []byte) (disk.WrappedKey, error)

func (f wrapFunc) WrapKey(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
	return f(ctx, dek)
}

type unwrapFunc func(ctx context.Context, w disk.WrappedKey) ([]byte, error)

func (f unwrapFunc) UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
	return f(ctx, w)
}

// platform wraps with the platform key.
func (h *Host) platform() disk.KeyWrapper {
	return wrapFunc(func(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
		w, err := h.keys.WrapKey(ctx, dek)
		return w, classified(h.keys, err)
	})
}

// platformUnwrapper unwraps platform wraps (temp disks).
func (h *Host) platformUnwrapper() disk.KeyUnwrapper {
	return unwrapFunc(func(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
		dek, err := h.keys.UnwrapKey(ctx, w)
		return dek, classified(h.keys, err)
	})
}

// parseKeyURL checks a versioned key id and returns its vault.
func parseKeyURL(kid string) (vault string, err error) {
	k, err := ksapi.ParseVersionedKeyID(kid)
	if err != nil {
		return "", badRequest("key URL: %v", err)
	}
	return k.Vault, nil
}

// desByID finds a disk encryption set by its resource id or name.
func desByID(r *store.Records, id string) (*store.DES, bool) {
	if id == "" {
		return nil, false
	}
	for _, d := range r.DES {
		if d.ID == id || d.Name == id {
			return d, true
		}
	}
	return nil, false
}

// customerKeys acts as the identity des uses its key as (keyIdentityOf),
// unless the set's subscription was moved to another tenant than the
// identity's (checkTenant).
func (h *Host) customerKeys(ctx context.Context, des *store.DES) (keys.Customer, error) {
	ki := keyIdentityOf(des)
	if err := h.checkTenant(ctx, des, ki); err != nil {
		return nil, err
	}
	cred, err := h.secrets.Credential(ctx, ki.cred)
	if err != nil {
		return nil, fmt.Errorf("reading the credential of the %s identity of disk encryption set %q: %w", ki.typ, des.Name, err)
	}
	if cred == "" && h.cfg.HostIdentity != nil {
		// On a shared store: this host acts for the identity, which the
		// key store allows if it was made for this host's group.
		return h.cfg.HostIdentity.ActFor(ki.principal), nil
	}
	if cred == "" {
		if ki.ua != "" {
			return nil, conflict("user-assigned identity %q of disk encryption set %q has no credential on this host; give the set another identity (hostcrypt des update --name %s --mi-user-assigned ID), or restore the host's secrets.json", ki.ua, des.Name, des.Name)
		}
		return nil, conflict("disk encryption set %q has no credential for its identity on this host; recreate the set, or restore the host's secrets.json", des.Name)
	}
	return h.keys.As(cred), nil
}

// grantHint says how to give an identity access to a key.
func grantHint(des *store.DES) string {
	return fmt.Sprintf("grant it get, wrapKey and unwrapKey: hostcrypt keyvault set-policy --name %s --object-id %s --key-permissions get,wrapKey,unwrapKey",
		des.ActiveKey.SourceVault.ID, keyIdentityOf(des).principal)
}

// accessDenied is the answer to an identity of des refused action ("wrap
// with key K", "unwrap with key K") by the vault's access policy: 403, one
// short message, one command that grants what a set needs.
func accessDenied(des *store.DES, action string) *api.Error {
	op := "get"
	switch {
	case strings.HasPrefix(action, "wrap"):
		op = "wrapKey"
	case strings.HasPrefix(action, "unwrap"):
		op = "unwrapKey"
	case strings.HasPrefix(action, "use"):
		op = "wrapKey"
	}
	vault := des.ActiveKey.SourceVault.ID
	if id, err := ksapi.ParseKeyID(des.ActiveKey.KeyURL); err == nil {
		vault = id.Vault
	}
	return errorf(http.StatusForbidden, "KeyVaultAccessForbidden",
		"disk encryption set %q lacks key permission '%s' on vault %s; grant its identity access: hostcrypt keyvault set-policy --name %s --object-id %s --key-permissions get,wrapKey,unwrapKey",
		des.Name, op, vault, vault, keyIdentityOf(des).principal)
}

// keyProblem words a key service error of the identity of des, doing
// action ("wrap with key K"), for a user: a refusal says how to grant, no
// answer says to retry.
func (h *Host) keyProblem(err error, des *store.DES, action string) error {
	err = classified(h.keys, err)
	if errors.Is(err, keys.ErrAccessDenied) {
		return &keyError{problem: problemOf(err), err: err, view: accessDenied(des, action)}
	}
	switch p := problemOf(err); p {
	case keys.Unreachable:
		return &keyError{problem: p, err: fmt.Errorf("disk encryption set %q: the key store did not answer to %s: %w", des.Name, action, err)}
	case keys.Revoked, keys.Expired:
		return &keyError{problem: p, err: fmt.Errorf("the identity %s of disk encryption set %q cannot %s: %w (%s)",
			keyIdentityOf(des).principal, des.Name, action, err, grantHint(des))}
	}
	return fmt.Errorf("the identity %s of disk encryption set %q cannot %s: %w", keyIdentityOf(des).principal, des.Name, action, err)
}

// unwrapperFor opens the wraps of a disk (or a snapshot's or image's, by
// the encryption they record): platform wraps with the platform key,
// customer wraps as the identity of the disk's encryption set, so the key
// store's audit log names that identity for every use. The set is the one
// r names now.
func (h *Host) unwrapperFor(r *store.Records, name string, enc store.Encryption) disk.KeyUnwrapper {
	des, _ := desByID(r, enc.DiskEncryptionSetID)
	return unwrapFunc(func(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
		if !strings.HasPrefix(w.Algorithm, "RSA") {
			dek, err := h.keys.UnwrapKey(ctx, w)
			return dek, classified(h.keys, err)
		}
		if des == nil {
			return nil, conflict("%s is encrypted with key %s but its disk encryption set is gone", name, w.KeyID)
		}
		ck, err := h.customerKeys(ctx, des)
		if err != nil {
			return nil, err
		}
		dek, err := ck.UnwrapKey(ctx, w)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, h.keyProblem(err, des, "unwrap with key "+w.KeyID))
		}
		return dek, nil
	})
}

// customerWrapper wraps with the active key of des, as its identity.
func (h *Host) customerWrapper(ctx context.Context, des *store.DES) (disk.KeyWrapper, error) {
	ck, err := h.customerKeys(ctx, des)
	if err != nil {
		return nil, err
	}
	kid := des.ActiveKey.KeyURL
	return wrapFunc(func(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
		w, err := ck.WrapKey(ctx, kid, dek)
		if err != nil {
			return w, h.keyProblem(err, des, "wrap with key "+kid)
		}
		return w, nil
	}), nil
}

// wrappersFor returns the key wrappers of a new disk's layers.
func (h *Host) wrappersFor(ctx context.Context, encType string, des *store.DES) ([]disk.KeyWrapper, error) {
	if des == nil {
		return []disk.KeyWrapper{h.platform()}, nil
	}
	cmk, err := h.customerWrapper(ctx, des)
	if err != nil {
		return nil, err
	}
	if encType == api.EncPlatformAndCustomerKey {
		// Layer 1: the data key under the customer's key; layer 2: an
		// independent infrastructure key under the platform key.
		return []disk.KeyWrapper{cmk, h.platform()}, nil
	}
	return []disk.KeyWrapper{cmk}, nil
}

// probeKey asks the key store, as the set's identity, whether the key version
// kid may be used now: a wrap of a throw-away key succeeds only for an
// enabled, unexpired key the identity still has access to.
func (h *Host) probeKey(ctx context.Context, des *store.DES, kid string) (keys.Problem, error) {
	ck, err := h.customerKeys(ctx, des)
	if err != nil {
		return keys.Revoked, err
	}
	probe := make([]byte, 32)
	rand.Read(probe)
	_, err = ck.WrapKey(ctx, kid, probe)
	if err == nil {
		return keys.Usable, nil
	}
	p := h.keys.Classify(err)
	if p == keys.Other {
		// Not an answer about the key: treated as a refusal, which keeps
		// the data safe; the error says what happened.
		p = keys.Revoked
	}
	return p, err
}

// checkAccess proves the identity can get, wrap and unwrap with the active
// key by wrapping and unwrapping a throw-away key.
func (h *Host) checkAccess(ctx context.Context, des *store.DES) error {
	ck, err := h.customerKeys(ctx, des)
	if err != nil {
		return err
	}
	probe := make([]byte, 32)
	rand.Read(probe)
	w, err := ck.WrapKey(ctx, des.ActiveKey.KeyURL, probe)
	if err == nil {
		var back []byte
		back, err = ck.UnwrapKey(ctx, w)
		hcrypto.Wipe(back)
	}
	if err != nil {
		return h.keyProblem(err, des, "use key "+des.ActiveKey.KeyURL)
	}
	return nil
}

// openOptions tells the engine what the records say of a disk's keys (a
// disk's, a snapshot's or an image's, by the encryption they record): a
// customer-managed data key must never turn up wrapped by a platform key in
// the metadata in storage, where a storage operator could have put an old
// copy back.
func openOptions(enc store.Encryption) []disk.OpenOption {
	if enc.Type == api.EncCustomerKey || enc.Type == api.EncPlatformAndCustomerKey {
		return []disk.OpenOption{disk.CustomerManaged()}
	}
	return nil
}
