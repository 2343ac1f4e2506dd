package server

import (
	"crypto/rand"
	"crypto/rsa"
	"math"
	"math/big"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/keystore/client"
)

// TestTimesOutOfRange: nbf and exp outside the range a time can be stored
// and shown in are refused with a 400 naming the field and the range, on
// every path a time comes in; the key is left as it was.
func TestTimesOutOfRange(t *testing.T) {
	e := startEnv(t)
	e.vault("timevault", "standard")
	kb, err := e.admin.CreateKey(bg, "timevault", "k", client.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)

	bad := []int64{-99999999999999, math.MaxInt64, math.MinInt64, -1, maxUnixTime + 1}
	for _, v := range bad {
		for _, field := range []string{"exp", "nbf"} {
			attrs := func() *client.KeyAttributes {
				a := &client.KeyAttributes{}
				if field == "exp" {
					a.EXP = ptr(v)
				} else {
					a.NBF = ptr(v)
				}
				return a
			}
			_, err := e.admin.CreateKey(bg, "timevault", "k2", client.KeyCreate{Kty: "RSA", Attributes: attrs()})
			requireCode(t, err, 400, "BadParameter")
			assert.Contains(t, err.Error(), "attributes."+field, "create, %s=%d", field, v)
			assert.Contains(t, err.Error(), "253402300799", "the message gives the range")

			_, err = e.admin.UpdateKey(bg, "timevault", "k", "", client.KeyUpdate{Attributes: attrs()})
			requireCode(t, err, 400, "BadParameter")
			assert.Contains(t, err.Error(), "attributes."+field, "set-attributes, %s=%d", field, v)

			_, err = e.admin.ImportKey(bg, "timevault", "imp", client.KeyImport{Key: testJWK(t), Attributes: attrs()})
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
	b, err := e.admin.UpdateKey(bg, "timevault", "k", "", client.KeyUpdate{Attributes: &client.KeyAttributes{NBF: ptr(int64(0)), EXP: ptr(int64(maxUnixTime))}})
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
	_, err := e.admin.CreateKey(bg, "polvault", "k", client.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	for _, p := range []client.RotationPolicy{
		{Attributes: client.RotationPolicyAttributes{ExpiryTime: "P100000Y"}},
		{Attributes: client.RotationPolicyAttributes{ExpiryTime: "P101Y"}},
		{LifetimeActions: []client.LifetimeAction{{Trigger: client.Trigger{TimeAfterCreate: "P99999D"}, Action: client.Action{Type: "Rotate"}}}},
	} {
		_, err = e.admin.SetRotationPolicy(bg, "polvault", "k", p)
		requireCode(t, err, 400, "BadParameter")
		assert.Contains(t, err.Error(), "P100Y")
	}
	_, err = e.admin.SetRotationPolicy(bg, "polvault", "k", client.RotationPolicy{Attributes: client.RotationPolicyAttributes{ExpiryTime: "P100Y"}})
	require.NoError(t, err)
	b, err := e.admin.RotateKey(bg, "polvault", "k")
	require.NoError(t, err)
	require.NotNil(t, b.Attributes.EXP)
}

// testJWK is a fresh RSA 2048 key with its private parts, for import.
func testJWK(t *testing.T) client.JSONWebKey {
	pk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	enc := func(b *big.Int) string { return b64(b.Bytes()) }
	return client.JSONWebKey{Kty: "RSA", N: enc(pk.N), E: enc(big.NewInt(int64(pk.E))), D: enc(pk.D), P: enc(pk.Primes[0]), Q: enc(pk.Primes[1])}
}
