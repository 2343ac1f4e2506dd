package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"hostcrypt/control/api"
	ksapi "hostcrypt/keystore/api"
	"hostcrypt/keystore/client"
)

// KeyStoreClient is the KeyStore of a real key store: reads with the
// platform's client, each operator action with a client of its own made
// for that call from the operator's token and closed after it.
type KeyStoreClient struct {
	platform *client.Client
	url, ca  string
	timeout  time.Duration
}

var _ KeyStore = (*KeyStoreClient)(nil)

// NewKeyStoreClient connects to the key store at url (trusting the CA in
// caFile) as the holder of the token in tokenFile; every call is bounded
// by timeout.
func NewKeyStoreClient(url, caFile, tokenFile string, timeout time.Duration) (*KeyStoreClient, error) {
	c, err := client.New(url, caFile, tokenFile)
	if err != nil {
		return nil, err
	}
	c.SetTimeout(timeout)
	return &KeyStoreClient{platform: c, url: url, ca: caFile, timeout: timeout}, nil
}

// Close releases the platform client's connections.
func (k *KeyStoreClient) Close() { k.platform.Close() }

// Events reads the key store's events as the platform.
func (k *KeyStoreClient) Events(ctx context.Context, after uint64, wait time.Duration) ([]ksapi.Event, error) {
	return k.platform.Events(ctx, after, wait)
}

// Vault reads a vault's metadata as the platform.
func (k *KeyStoreClient) Vault(ctx context.Context, name string) (*ksapi.Vault, error) {
	return k.platform.GetVault(ctx, name)
}

// operator makes a client for one call with the operator's token.
func (k *KeyStoreClient) operator(token string) (*client.Client, error) {
	c, err := client.NewWithToken(k.url, k.ca, token)
	if err != nil {
		return nil, err
	}
	c.SetTimeout(k.timeout)
	return c, nil
}

// SetKeyEnabled enables or disables a key version as the token's holder.
func (k *KeyStoreClient) SetKeyEnabled(ctx context.Context, token, vault, key, version string, enabled bool) error {
	c, err := k.operator(token)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.UpdateKey(ctx, vault, key, version, ksapi.KeyUpdate{Attributes: &ksapi.KeyAttributes{Enabled: &enabled}})
	return keyStoreError(err)
}

// RotateKey makes a new version of a key as the token's holder.
func (k *KeyStoreClient) RotateKey(ctx context.Context, token, vault, key string) (string, error) {
	c, err := k.operator(token)
	if err != nil {
		return "", err
	}
	defer c.Close()
	b, err := c.RotateKey(ctx, vault, key)
	if err != nil {
		return "", keyStoreError(err)
	}
	return b.Key.Kid, nil
}

// keyStoreError turns the key store's refusal into one the page shows with
// its status: a wrong token is the operator's to fix, not a failure of the
// host.
func keyStoreError(err error) error {
	var e *client.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &e) && e.Status == http.StatusUnauthorized:
		return errorf(http.StatusForbidden, "the key store refused the token you gave (%s)", e.Message)
	case errors.As(err, &e):
		return &api.Error{Status: e.Status, Code: e.Code, Message: "the key store refused: " + e.Message}
	case client.IsUnreachable(err):
		return errorf(http.StatusBadGateway, "%v", err)
	}
	return fmt.Errorf("key store: %w", err)
}
