package crypto

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"hash"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestUnwrapRSAVectors(t *testing.T) {
	var v struct {
		Groups []struct {
			Alg             string
			PrivateKeyPkcs8 string
			Tests           []struct {
				TcID    int `json:"tcId"`
				Msg, Ct string
			}
		}
	}
	loadJSON(t, "rsa_oaep.json", &v)
	require.Len(t, v.Groups, 2)
	for _, g := range v.Groups {
		k, err := x509.ParsePKCS8PrivateKey(unhex(t, g.PrivateKeyPkcs8))
		require.NoError(t, err)
		priv := k.(*rsa.PrivateKey)
		for _, tc := range g.Tests {
			got, err := UnwrapRSA(g.Alg, priv, unhex(t, tc.Ct))
			require.NoError(t, err, "%s tcId %d", g.Alg, tc.TcID)
			assert.Equal(t, unhex(t, tc.Msg), append([]byte{}, got...), "%s tcId %d", g.Alg, tc.TcID)

			_, err = UnwrapRSA(g.Alg, priv, flip(unhex(t, tc.Ct), 100))
			assert.ErrorIs(t, err, ErrWrongKey)
		}
		// The other hash must not decrypt these.
		other := WrapRSAOAEP
		if g.Alg == WrapRSAOAEP {
			other = WrapRSAOAEP256
		}
		_, err = UnwrapRSA(other, priv, unhex(t, g.Tests[0].Ct))
		assert.ErrorIs(t, err, ErrWrongKey)
	}
}

var (
	testRSAOnce sync.Once
	testRSAKey  *rsa.PrivateKey
)

func testRSA(t testing.TB) *rsa.PrivateKey {
	testRSAOnce.Do(func() {
		var err error
		testRSAKey, err = rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
	})
	return testRSAKey
}

func TestWrapRSA(t *testing.T) {
	priv := testRSA(t)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	for _, tc := range []struct {
		alg  string
		hash func() hash.Hash
	}{
		{WrapRSAOAEP256, sha256.New},
		{WrapRSAOAEP, sha1.New},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			key := NewDataKey()
			w1, err := WrapRSA(tc.alg, &priv.PublicKey, key)
			require.NoError(t, err)
			w2, err := WrapRSA(tc.alg, &priv.PublicKey, key)
			require.NoError(t, err)
			assert.NotEqual(t, w1, w2, "OAEP is randomized")
			assert.Len(t, w1, 256)

			// Cross-check with the stdlib and the hash the name implies.
			plain, err := rsa.DecryptOAEP(tc.hash(), nil, priv, w1, nil)
			require.NoError(t, err)
			assert.Equal(t, key, plain)

			got, err := UnwrapRSA(tc.alg, priv, w2)
			require.NoError(t, err)
			assert.Equal(t, key, got)

			_, err = UnwrapRSA(tc.alg, other, w1)
			assert.ErrorIs(t, err, ErrWrongKey, "another private key")
			_, err = UnwrapRSA(tc.alg, priv, w1[:100])
			assert.ErrorIs(t, err, ErrWrongKey, "truncated")
		})
	}
}

func TestRSAErrors(t *testing.T) {
	priv := testRSA(t)
	_, err := WrapRSA("RSA1_5", &priv.PublicKey, NewDataKey())
	assert.ErrorIs(t, err, ErrUnsupported)
	_, err = UnwrapRSA("RSA1_5", priv, make([]byte, 256))
	assert.ErrorIs(t, err, ErrUnsupported)
	_, err = WrapRSA(WrapRSAOAEP256, nil, NewDataKey())
	assert.Error(t, err)
	_, err = UnwrapRSA(WrapRSAOAEP256, nil, make([]byte, 256))
	assert.Error(t, err)
	_, err = WrapRSA(WrapRSAOAEP256, &priv.PublicKey, make([]byte, 300))
	assert.Error(t, err, "message too long")
}
