package hostd

import (
	"context"
	"fmt"

	"hostcrypt/control"
	"hostcrypt/disk"
	"hostcrypt/keystore/client"
)

// CreateIdentity creates the system-assigned identity of a disk encryption
// set, as the platform.
func (k *keyService) CreateIdentity(ctx context.Context, displayName string) (control.Identity, string, error) {
	id, err := k.c.CreateIdentity(ctx, "SystemAssigned", "", displayName)
	if err != nil {
		return control.Identity{}, "", err
	}
	return control.Identity{Type: id.Type, PrincipalID: id.PrincipalID, TenantID: id.TenantID}, id.Token, nil
}

// DeleteIdentity revokes an identity; one already gone is fine.
func (k *keyService) DeleteIdentity(ctx context.Context, principalID string) error {
	if err := k.c.DeleteIdentity(ctx, principalID); err != nil && !client.IsNotFound(err) {
		return err
	}
	return nil
}

// As returns key operations made as the identity holding credential, so the
// key store's audit log names that identity.
func (k *keyService) As(credential string) control.CustomerKeys {
	return &customerKeys{k: k, credential: credential}
}

type customerKeys struct {
	k          *keyService
	credential string
}

func (c *customerKeys) client() (*client.Client, error) {
	return client.NewWithToken(c.k.url, c.k.ca, c.credential)
}

func (c *customerKeys) WrapKey(ctx context.Context, kid string, dek []byte) (disk.WrappedKey, error) {
	cl, err := c.client()
	if err != nil {
		return disk.WrappedKey{}, err
	}
	defer cl.Close()
	used, wrapped, err := cl.WrapKey(ctx, kid, client.RSAOAEP256, dek)
	if err != nil {
		return disk.WrappedKey{}, err
	}
	return disk.WrappedKey{KeyID: used, Algorithm: client.RSAOAEP256, Value: wrapped}, nil
}

func (c *customerKeys) UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
	cl, err := c.client()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	_, dek, err := cl.UnwrapKey(ctx, w.KeyID, w.Algorithm, w.Value)
	if err != nil {
		return nil, fmt.Errorf("unwrapping with %s: %w", w.KeyID, err)
	}
	return dek, nil
}
