package hostkeys

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/keys"
	"hostcrypt/keystore/api"
	"hostcrypt/keystore/client"
	"hostcrypt/keystore/server"
)

var bg = context.Background()

// keyStore starts a real key store and returns the host's key service on
// it and an administrator's client.
func keyStore(t *testing.T) (*Service, *client.Client, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ks")
	s, err := server.Open(server.Config{Dir: dir, Listen: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	go s.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(bg, 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	ks, err := Connect(bg, Config{URL: s.BaseURL(), CA: filepath.Join(dir, "ca.pem"), TokenFile: filepath.Join(dir, "platform.token")})
	require.NoError(t, err)
	t.Cleanup(ks.Close)
	admin, err := client.New(s.BaseURL(), filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	t.Cleanup(admin.Close)
	return ks, admin, dir
}

// The adapter does on the real key store what control/keys promises: the
// platform and temp keys, an identity's customer keys with what its
// errors mean, vault locations and events.
func TestServiceOnARealKeyStore(t *testing.T) {
	ks, admin, _ := keyStore(t)
	dek := make([]byte, 32)
	w, err := ks.WrapKey(bg, dek)
	require.NoError(t, err)
	assert.Equal(t, api.A256KWP, w.Algorithm)
	got, err := ks.UnwrapKey(bg, w)
	require.NoError(t, err)
	assert.Equal(t, dek, got)

	tw, err := ks.TempWrapper(bg)
	require.NoError(t, err)
	tw1, err := tw.WrapKey(bg, dek)
	require.NoError(t, err)
	require.NoError(t, ks.DestroyTempKey(bg, tw1.KeyID))
	_, err = ks.UnwrapKey(bg, tw1)
	require.ErrorIs(t, err, keys.ErrKeyGone, "a destroyed temp key is gone, not unreachable")
	require.NoError(t, ks.DestroyTempKey(bg, w.KeyID), "the platform key is no temp key: left alone")
	_, err = ks.UnwrapKey(bg, w)
	require.NoError(t, err)

	// A vault, a customer key and an identity without access yet.
	var vc api.VaultCreate
	vc.Location = "westeurope"
	_, err = admin.CreateVault(bg, "vault1", vc)
	require.NoError(t, err)
	kb, err := admin.CreateKey(bg, "vault1", "k1", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	kid := kb.Key.Kid
	loc, err := ks.VaultLocation(bg, kid)
	require.NoError(t, err)
	assert.Equal(t, "westeurope", loc)
	k, _ := api.ParseKeyID(kid)
	k.Vault = "novault"
	_, err = ks.VaultLocation(bg, k.String())
	require.ErrorIs(t, err, keys.ErrVaultNotFound)

	id, cred, err := ks.CreateIdentity(bg, keys.IdentitySpec{Type: keys.SystemAssigned, DisplayName: "des/d1"})
	require.NoError(t, err)
	tenant, err := ks.Tenant(bg)
	require.NoError(t, err)
	assert.Equal(t, tenant, id.TenantID, "created in the key store's own tenant")
	// A user-assigned identity, here in another tenant: of that kind and
	// tenant in the key store.
	const t2 = "22222222-3333-4444-5555-666666666666"
	ua, _, err := ks.CreateIdentity(bg, keys.IdentitySpec{Type: keys.UserAssigned, TenantID: t2, DisplayName: "identity/id1"})
	require.NoError(t, err)
	assert.Equal(t, "UserAssigned", ua.Type)
	assert.Equal(t, t2, ua.TenantID)
	gotID, err := admin.GetIdentity(bg, ua.PrincipalID)
	require.NoError(t, err)
	assert.Equal(t, "UserAssigned", gotID.Type)
	assert.Equal(t, t2, gotID.TenantID)
	require.NoError(t, ks.DeleteIdentity(bg, ua.PrincipalID))
	_, _, err = ks.CreateIdentity(bg, keys.IdentitySpec{Type: "User"})
	require.Error(t, err, "only managed identities")
	c := ks.As(cred)
	_, err = c.WrapKey(bg, kid, dek)
	assert.Equal(t, keys.Revoked, ks.Classify(err), "no access policy: a refusal (%v)", err)
	_, err = admin.SetPolicy(bg, "vault1", id.PrincipalID, []string{"get", "wrapKey", "unwrapKey"})
	require.NoError(t, err)
	cw, err := c.WrapKey(bg, kid, dek)
	require.NoError(t, err)
	back, err := c.UnwrapKey(bg, cw)
	require.NoError(t, err)
	assert.Equal(t, dek, back)
	latest, err := c.LatestKeyID(bg, kid)
	require.NoError(t, err)
	assert.Equal(t, kid, latest)

	// A disabled key is a refusal, and an event.
	evs, err := ks.Events(bg, 0, 0)
	require.NoError(t, err)
	var after uint64
	if len(evs) > 0 {
		after = evs[len(evs)-1].Sequence
	}
	f := false
	_, err = admin.UpdateKey(bg, "vault1", "k1", "", api.KeyUpdate{Attributes: &api.KeyAttributes{Enabled: &f}})
	require.NoError(t, err)
	_, err = c.WrapKey(bg, kid, dek)
	assert.Equal(t, keys.Revoked, ks.Classify(err))
	evs, err = ks.Events(bg, after, 5*time.Second)
	require.NoError(t, err)
	require.NotEmpty(t, evs, "the key's change is an event")
	assert.Greater(t, evs[0].Sequence, after)

	require.NoError(t, ks.DeleteIdentity(bg, id.PrincipalID))
	require.NoError(t, ks.DeleteIdentity(bg, id.PrincipalID), "one already gone is fine")
}

// A key store that accepts the connection and then says nothing (a
// stopped process) is unreachable after the timeout, with the timeout in
// the error, and Classify calls it an outage, never a revocation.
func TestSilentKeyStoreIsAnOutage(t *testing.T) {
	_, _, dir := keyStore(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	_, err = Connect(bg, Config{URL: "https://" + ln.Addr().String(), CA: filepath.Join(dir, "ca.pem"),
		TokenFile: filepath.Join(dir, "platform.token"), Timeout: 200 * time.Millisecond})
	require.Error(t, err)
	assert.ErrorContains(t, err, "did not answer within 0.2 s")
	s := &Service{}
	assert.Equal(t, keys.Unreachable, s.Classify(err))
	assert.ErrorIs(t, err, client.ErrTimeout)
}
