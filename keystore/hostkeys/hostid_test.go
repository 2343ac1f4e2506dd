package hostkeys

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/keys"
	"hostcrypt/keystore/api"
)

// Two hosts of one group on a real key store: a set's identity made on
// the first has no credential, the second acts for it and unwraps what
// the first wrapped, both read one record key, and a token that is not a
// host's is refused at connection.
func TestHostIdentitiesShareTheGroupsSets(t *testing.T) {
	ksA, admin, dir := keyStore(t)
	require.Nil(t, ksA.HostIdentity(), "no host identity without a host token")
	_, err := ksA.RecordKey(bg)
	require.ErrorContains(t, err, "--host-token-file")

	host := func(name, group string) *Service {
		id, err := admin.CreateIdentityWith(bg, api.IdentityCreate{Type: api.IdentityHost, HostGroup: group, DisplayName: "host/" + name})
		require.NoError(t, err)
		f := filepath.Join(t.TempDir(), name+".token")
		require.NoError(t, os.WriteFile(f, []byte(id.Token+"\n"), 0o600))
		ks, err := Connect(bg, Config{URL: ksA.cfg.URL, CA: filepath.Join(dir, "ca.pem"), TokenFile: filepath.Join(dir, "platform.token"), HostTokenFile: f})
		require.NoError(t, err)
		t.Cleanup(ks.Close)
		require.NotNil(t, ks.HostIdentity())
		assert.Equal(t, group, ks.HostIdentity().Group())
		assert.Equal(t, id.PrincipalID, ks.HostPrincipal())
		return ks
	}
	a, b, x := host("a", "pool1"), host("b", "pool1"), host("x", "pool2")

	_, err = admin.CreateVault(bg, "vault1", api.VaultCreate{})
	require.NoError(t, err)
	kb, err := admin.CreateKey(bg, "vault1", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	id, cred, err := a.CreateIdentity(bg, keys.IdentitySpec{Type: keys.SystemAssigned, DisplayName: "des/d1", HostGroup: "pool1"})
	require.NoError(t, err)
	assert.Empty(t, cred, "a set's identity made for a group has no credential")
	_, err = admin.SetPolicy(bg, "vault1", id.PrincipalID, []string{"get", "wrapKey", "unwrapKey"})
	require.NoError(t, err)

	dek := make([]byte, 32)
	dek[0] = 42
	w, err := a.HostIdentity().ActFor(id.PrincipalID).WrapKey(bg, kb.Key.Kid, dek)
	require.NoError(t, err)
	got, err := b.HostIdentity().ActFor(id.PrincipalID).UnwrapKey(bg, w)
	require.NoError(t, err)
	assert.Equal(t, dek, got)
	_, err = x.HostIdentity().ActFor(id.PrincipalID).UnwrapKey(bg, w)
	require.Error(t, err)
	assert.Equal(t, keys.Revoked, x.Classify(err), "a host of another group is refused, not unreachable")

	ka, err := a.RecordKey(bg)
	require.NoError(t, err)
	kb2, err := b.RecordKey(bg)
	require.NoError(t, err)
	kx, err := x.RecordKey(bg)
	require.NoError(t, err)
	assert.Equal(t, ka, kb2)
	assert.NotEqual(t, ka, kx)

	// The platform token given as a host's is refused, saying what to do.
	_, err = Connect(bg, Config{URL: ksA.cfg.URL, CA: filepath.Join(dir, "ca.pem"), TokenFile: filepath.Join(dir, "platform.token"), HostTokenFile: filepath.Join(dir, "platform.token")})
	require.ErrorContains(t, err, "not a host's")
	assert.ErrorContains(t, err, "--type Host")
}
