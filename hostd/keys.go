package hostd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	ksapi "hostcrypt/keystore/api"
	"strings"
	"sync"

	"hostcrypt/control"
	"hostcrypt/disk"
	"hostcrypt/keystore/client"
)

// platformKeyName is the platform key that wraps the data keys of disks
// encrypted with platform-managed keys, and of temp disks.
const platformKeyName = "disk-encryption"

// keyService is the control plane's view of the key store: it wraps new data
// keys with the current version of the platform key and unwraps any wrap a
// disk carries, naming the exact key version that wrapped it.
type keyService struct {
	c       *client.Client
	url, ca string

	mu sync.Mutex
	// as holds one client per identity credential, so that the monitor's
	// probes and every wrap and unwrap reuse a kept-alive TLS connection
	// instead of a handshake per call.
	as map[string]*client.Client
}

// connectKeys connects to the key store as the platform and makes sure the
// platform key exists. It fails when the key store cannot be reached or its
// certificate is not signed by the given CA.
func connectKeys(ctx context.Context, cfg Config) (*keyService, error) {
	c, err := client.New(cfg.KeystoreURL, cfg.KeystoreCA, cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("key store %s: %w", cfg.KeystoreURL, err)
	}
	_, err = c.GetKey(ctx, ksapi.PlatformVault, platformKeyName, "")
	if client.IsNotFound(err) {
		_, err = c.CreatePlatformKey(ctx, platformKeyName)
	}
	if err != nil {
		if client.IsUnreachable(err) {
			return nil, fmt.Errorf("cannot reach or trust the key store at %s (check --keystore and --keystore-ca): %w", cfg.KeystoreURL, err)
		}
		return nil, fmt.Errorf("key store %s: preparing the platform key: %w", cfg.KeystoreURL, err)
	}
	return &keyService{c: c, url: cfg.KeystoreURL, ca: cfg.KeystoreCA}, nil
}

func (k *keyService) WrapKey(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
	kid, wrapped, err := k.c.PlatformWrap(ctx, platformKeyName, "", dek)
	if err != nil {
		return disk.WrappedKey{}, fmt.Errorf("wrapping with the platform key: %w", err)
	}
	return disk.WrappedKey{KeyID: kid, Algorithm: ksapi.A256KWP, Value: wrapped}, nil
}

func (k *keyService) UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
	switch w.Algorithm {
	case ksapi.A256KWP:
		dek, err := k.c.PlatformUnwrap(ctx, w.KeyID, w.Value)
		if client.IsNotFound(err) {
			return nil, fmt.Errorf("unwrapping with %s: %w: %w", w.KeyID, control.ErrKeyGone, err)
		}
		if err != nil {
			return nil, fmt.Errorf("unwrapping with %s: %w", w.KeyID, err)
		}
		return dek, nil
	}
	return nil, fmt.Errorf("key %s: wrap algorithm %q is not supported by this host", w.KeyID, w.Algorithm)
}

// tempKeyPrefix names the platform keys of temp disks, one per temp disk.
const tempKeyPrefix = "temp-disk-"

type wrapperFunc func(ctx context.Context, dek []byte) (disk.WrappedKey, error)

func (f wrapperFunc) WrapKey(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
	return f(ctx, dek)
}

// TempWrapper creates a platform key for one temp disk and wraps with it.
func (k *keyService) TempWrapper(ctx context.Context) (disk.KeyWrapper, error) {
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
		return disk.WrappedKey{KeyID: kid, Algorithm: ksapi.A256KWP, Value: wrapped}, nil
	}), nil
}

// DestroyTempKey deletes and purges the temp disk key that kid names; kids
// of any other key are left alone.
func (k *keyService) DestroyTempKey(ctx context.Context, kid string) error {
	_, rest, ok := strings.Cut(kid, "/vaults/"+ksapi.PlatformVault+"/keys/")
	if !ok {
		return nil
	}
	name, _, _ := strings.Cut(rest, "/")
	if !strings.HasPrefix(name, tempKeyPrefix) {
		return nil
	}
	if _, err := k.c.DeleteKey(ctx, ksapi.PlatformVault, name); err != nil && !client.IsNotFound(err) {
		return err
	}
	if err := k.c.PurgeKey(ctx, ksapi.PlatformVault, name); err != nil && !client.IsNotFound(err) {
		return err
	}
	return nil
}
