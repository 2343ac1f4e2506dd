package hostd

import (
	"context"
	"errors"
	"fmt"
	ksapi "hostcrypt/keystore/api"
	"log/slog"
	"net/url"
	"strings"
	"time"

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
	c.k.mu.Lock()
	defer c.k.mu.Unlock()
	if cl, ok := c.k.as[c.credential]; ok {
		return cl, nil
	}
	cl, err := client.NewWithToken(c.k.url, c.k.ca, c.credential)
	if err != nil {
		return nil, err
	}
	if c.k.as == nil {
		c.k.as = map[string]*client.Client{}
	}
	c.k.as[c.credential] = cl
	return cl, nil
}

func (c *customerKeys) WrapKey(ctx context.Context, kid string, dek []byte) (disk.WrappedKey, error) {
	cl, err := c.client()
	if err != nil {
		return disk.WrappedKey{}, err
	}
	used, wrapped, err := cl.WrapKey(ctx, kid, ksapi.RSAOAEP256, dek)
	if err != nil {
		return disk.WrappedKey{}, denied(err)
	}
	return disk.WrappedKey{KeyID: used, Algorithm: ksapi.RSAOAEP256, Value: wrapped}, nil
}

func (c *customerKeys) UnwrapKey(ctx context.Context, w disk.WrappedKey) ([]byte, error) {
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

// denied marks a refusal for want of an access-policy permission, which
// the control plane answers with 403 and the command that grants it.
func denied(err error) error {
	if client.IsForbiddenByPolicy(err) {
		return fmt.Errorf("%w: %w", control.ErrKeyAccessDenied, err)
	}
	return err
}

// Classify tells a revocation from an expiry and from an outage: only a
// clear answer of the key store revokes; no answer, or a server error, is an
// outage.
func (k *keyService) Classify(err error) control.KeyProblem {
	var ce *client.Error
	switch {
	case client.IsUnreachable(err), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return control.KeyUnreachable
	case errors.As(err, &ce) && ce.Status >= 500:
		return control.KeyUnreachable
	case client.IsKeyExpired(err):
		return control.KeyExpired
	}
	return control.KeyRevoked
}

// watchEvents long-polls the key store's event stream and wakes the key
// monitor on every key or policy event, so a disable or a revocation is
// enforced at once rather than at the next interval.
func (k *keyService) watchEvents(ctx context.Context, wake []chan<- struct{}, log *slog.Logger) {
	var after uint64
	// Start from now: earlier events were handled by earlier checks.
	if evs, err := k.c.Events(ctx, 0, 0); err == nil && len(evs) > 0 {
		after = evs[len(evs)-1].Sequence
	}
	backoff := time.Second
	for ctx.Err() == nil {
		evs, err := k.c.Events(ctx, after, 25*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("key store event stream: retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Minute)
			continue
		}
		backoff = time.Second
		for _, e := range evs {
			after = max(after, e.Sequence)
		}
		if len(evs) > 0 {
			for _, w := range wake {
				select {
				case w <- struct{}{}:
				default:
				}
			}
		}
	}
}

// LatestKeyID returns the current version's id of the key kid belongs to.
func (c *customerKeys) LatestKeyID(ctx context.Context, kid string) (string, error) {
	cl, err := c.client()
	if err != nil {
		return "", err
	}
	unversioned := kid[:strings.LastIndex(kid, "/")]
	b, err := cl.GetKeyByID(ctx, unversioned)
	if err != nil {
		return "", err
	}
	return b.Key.Kid, nil
}

// VaultLocation returns the location of the vault a key id names, as the
// platform (which may read any vault's metadata).
func (k *keyService) VaultLocation(ctx context.Context, keyURL string) (string, error) {
	u, err := url.Parse(keyURL)
	if err != nil {
		return "", err
	}
	p := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(p) < 2 || p[0] != "vaults" {
		return "", fmt.Errorf("%s is not a key id", keyURL)
	}
	v, err := k.c.GetVault(ctx, p[1])
	if client.IsNotFound(err) {
		return "", fmt.Errorf("%w: %v", control.ErrVaultNotFound, err)
	}
	if err != nil {
		return "", err
	}
	return v.Location, nil
}

var _ control.VaultLocations = (*keyService)(nil)
