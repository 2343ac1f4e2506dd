package server

import (
	"crypto/rand"
	"crypto/rsa"
	"hostcrypt/keystore/api"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTimesOutOfRange: nbf and exp outside the range a time can be stored
// and shown in are refused with a 400 naming the field and the range, on
// every path a time comes in; the key is left as it was.
func TestTimesOutOfRange(t *testing.T) {
	e := startEnv(t)
	e.vault("timevault", "standard")
	kb, err := e.admin.CreateKey(bg, "timevault", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)

	bad := []int64{-99999999999999, math.MaxInt64, math.MinInt64, -1, maxUnixTime + 1}
	for _, v := range bad {
		for _, field := range []string{"exp", "nbf"} {
			attrs := func() *api.KeyAttributes {
				a := &api.KeyAttributes{}
				if field == "exp" {
					a.EXP = ptr(v)
				} else {
					a.NBF = ptr(v)
				}
				return a
			}
			_, err := e.admin.CreateKey(bg, "timevault", "k2", api.KeyCreate{Kty: "RSA", Attributes: attrs()})
			requireCode(t, err, 400, "BadParameter")
			assert.Contains(t, err.Error(), "attributes."+field, "create, %s=%d", field, v)
			assert.Contains(t, err.Error(), "253402300799", "the message gives the range")

			_, err = e.admin.UpdateKey(bg, "timevault", "k", "", api.KeyUpdate{Attributes: attrs()})
			requireCode(t, err, 400, "BadParameter")
			assert.Contains(t, err.Error(), "attributes."+field, "set-attributes, %s=%d", field, v)

			_, err = e.admin.ImportKey(bg, "timevault", "imp", api.KeyImport{Key: ptr(testJWK(t)), Attributes: attrs()})
			requireCode(t, err, 400, "BadParameter")
			assert.Contains(t, err.Error(), "attributes."+field, "import, %s=%d", field, v)
		}
	}
	// Nothing was changed or created by the refused calls.
	got, err := e.admin.GetKey(bg, "timevault", "k", "")
	require.NoError(t, err)
	assert.Equal(t, kb.Key.Kid, got.Key.Kid)
	assert.Nil(t, got.Attributes.EXP)
	assert.Nil(t, got.Attributes.NBF)
	_, err = e.admin.GetKey(bg, "timevault", "k2", "")
	requireCode(t, err, 404, "KeyNotFound")
	_, err = e.admin.GetKey(bg, "timevault", "imp", "")
	requireCode(t, err, 404, "KeyNotFound")

	// The ends of the range are accepted and read back.
	b, err := e.admin.UpdateKey(bg, "timevault", "k", "", api.KeyUpdate{Attributes: &api.KeyAttributes{NBF: ptr(int64(0)), EXP: ptr(int64(maxUnixTime))}})
	require.NoError(t, err)
	assert.Equal(t, int64(0), *b.Attributes.NBF)
	assert.Equal(t, int64(maxUnixTime), *b.Attributes.EXP)
	vs, err := e.admin.ListKeyVersions(bg, "timevault", "k")
	require.NoError(t, err)
	require.Len(t, vs, 1)
	require.NoError(t, e.s.RunDue())
	_, err = e.admin.Events(bg, 0, 0)
	require.NoError(t, err)
}

// TestRotationPolicyDurationsBounded: a policy whose expiryTime would put a
// new version's exp beyond what can be stored is refused when it is set,
// instead of failing every later rotation with a 500.
func TestRotationPolicyDurationsBounded(t *testing.T) {
	e := startEnv(t)
	e.vault("polvault", "standard")
	_, err := e.admin.CreateKey(bg, "polvault", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	for _, p := range []api.RotationPolicy{
		{Attributes: api.RotationPolicyAttributes{ExpiryTime: "P100000Y"}},
		{Attributes: api.RotationPolicyAttributes{ExpiryTime: "P101Y"}},
		{LifetimeActions: []api.LifetimeAction{{Trigger: api.Trigger{TimeAfterCreate: "P99999D"}, Action: api.Action{Type: "Rotate"}}}},
	} {
		_, err = e.admin.SetRotationPolicy(bg, "polvault", "k", p)
		requireCode(t, err, 400, "BadParameter")
		assert.Contains(t, err.Error(), "P100Y")
	}
	_, err = e.admin.SetRotationPolicy(bg, "polvault", "k", api.RotationPolicy{Attributes: api.RotationPolicyAttributes{ExpiryTime: "P100Y"}})
	require.NoError(t, err)
	b, err := e.admin.RotateKey(bg, "polvault", "k")
	require.NoError(t, err)
	require.NotNil(t, b.Attributes.EXP)
}

// testJWK is a fresh RSA 2048 key with its private parts, for import.
func testJWK(t *testing.T) api.JSONWebKey {
	pk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	enc := func(b *big.Int) string { return b64(b.Bytes()) }
	return api.JSONWebKey{Kty: "RSA", N: enc(pk.N), E: enc(big.NewInt(int64(pk.E))), D: enc(pk.D), P: enc(pk.Primes[0]), Q: enc(pk.Primes[1])}
}

// TestReservedNamesAndIDs: the reserved vault name is reserved in every
// case; vault names are unique regardless of case; tenant and object ids,
// which end up in URLs, tokens' records and the host's files, are refused
// unless they are plain identifiers, with a message saying what is allowed.
func TestReservedNamesAndIDs(t *testing.T) {
	e := startEnv(t)
	e.vault("stdvault", "standard")
	for _, name := range []string{"platform", "PLATFORM", "Platform", "pLaTfOrM"} {
		_, err := e.admin.CreateVault(bg, name, api.VaultCreate{})
		requireCode(t, err, 409, "VaultNameReserved")
		assert.Contains(t, err.Error(), "reserved")
	}
	_, err := e.admin.CreateVault(bg, "StdVault", api.VaultCreate{})
	requireCode(t, err, 409, "VaultAlreadyExists")
	assert.Contains(t, err.Error(), "stdvault")

	badIDs := []string{"../../x", "..", "a/b", `a\b`, "x y", "-lead", "t\x1b[31m", strings.Repeat("a", 65), "ten%2Fant"}
	for _, id := range badIDs {
		_, err := e.platform.CreateIdentity(bg, "User", id, "")
		requireCode(t, err, 400, "BadParameter")
		assert.Contains(t, err.Error(), "letters, digits and hyphens", "tenant %q", id)

		if id != ".." { // a path segment of its own: the router cleans it away
			_, err = e.admin.SetPolicy(bg, "stdvault", id, []string{"get"})
			requireCode(t, err, 400, "BadParameter")
			assert.Contains(t, err.Error(), "letters, digits and hyphens", "object id %q", id)
		}

		var vc api.VaultCreate
		vc.Properties.AllowedTenants = []string{id}
		_, err = e.admin.CreateVault(bg, "newvault", vc)
		requireCode(t, err, 400, "BadParameter")
		var vu api.VaultUpdate
		vu.Properties.AllowedTenants = &[]string{"ok-tenant", id}
		_, err = e.admin.UpdateVault(bg, "stdvault", vu)
		requireCode(t, err, 400, "BadParameter")
		assert.Contains(t, err.Error(), "allowedTenants")
	}
	_, err = e.platform.CreateIdentity(bg, "User", "", "des/name\x1b]0;pwned\x07")
	requireCode(t, err, 400, "BadParameter")
	assert.Contains(t, err.Error(), "displayName")
	// Plain ids, UUIDs and display names with slashes (des/NAME) still work.
	id, err := e.platform.CreateIdentity(bg, "User", "Tenant-B-01", "des/set1")
	require.NoError(t, err)
	assert.Equal(t, "Tenant-B-01", id.TenantID)
	_, err = e.platform.CreateIdentity(bg, "User", "4f0c1a52-6b1e-4f7e-9d6a-0a1b2c3d4e5f", "")
	require.NoError(t, err)
	_, err = e.admin.SetPolicy(bg, "stdvault", id.PrincipalID, []string{"get"})
	require.NoError(t, err)
	v, err := e.admin.GetVault(bg, "stdvault")
	require.NoError(t, err)
	assert.Len(t, v.Properties.AccessPolicies, 2, "the refused calls changed nothing")
	assert.Empty(t, v.Properties.AllowedTenants)
}

// TestWebhookStaysInItsTenant: a webhook receives events of its own
// tenant's vaults only, as GET /events does, and cannot name another
// tenant's vault.
func TestWebhookStaysInItsTenant(t *testing.T) {
	got := make(chan []api.Event, 10)
	hook := newHookServer(t, func(evs []api.Event) int { got <- evs; return 200 })
	e := startEnv(t, withWebhookAllow(hook+"/"))
	e.vault("avault", "standard")
	_, bc := e.identity("User", "tenant-b")
	_, err := bc.CreateVault(bg, "bvault", api.VaultCreate{})
	require.NoError(t, err)

	_, err = e.admin.CreateWebhook(bg, hook+"/x", "bvault")
	requireCode(t, err, 404, "VaultNotFound")
	_, err = e.admin.CreateWebhook(bg, hook+"/x", "no_such/vault")
	requireCode(t, err, 400, "BadParameter")
	_, err = e.admin.CreateWebhook(bg, hook+"/all", "")
	require.NoError(t, err)

	_, err = bc.CreateKey(bg, "bvault", "secret-name", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	_, err = e.admin.CreateKey(bg, "avault", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	// Events are delivered in order: once avault's arrived, bvault's would
	// have come before or with it.
	for {
		select {
		case evs := <-got:
			for _, ev := range evs {
				require.NotEqual(t, "bvault", ev.Data.VaultName, "an event of another tenant's vault was delivered")
			}
			if evs[len(evs)-1].Data.VaultName == "avault" {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the webhook did not get avault's event")
		}
	}
}
