package crypto

import (
	"bytes"
	"crypto/sha3"
	"flag"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var xaesMillion = flag.Bool("xaes.million", false, "also run the 1,000,000-iteration XAES-256-GCM accumulated vector")

type xaesVectors struct {
	Vectors []struct {
		Key, Nonce, L, K1, Kx, Plaintext, AAD, Ciphertext string
	}
	Accumulated []struct {
		Iterations int
		Hash       string
	}
}

func loadXAES(t testing.TB) xaesVectors {
	var v xaesVectors
	loadJSON(t, "xaes256gcm.json", &v)
	return v
}

func TestXAESVectors(t *testing.T) {
	for _, tc := range loadXAES(t).Vectors {
		t.Run(tc.Key[:8], func(t *testing.T) {
			key := unhex(t, tc.Key)
			x, err := newXAES(key)
			require.NoError(t, err)
			assert.Equal(t, unhex(t, tc.K1), x.k1[:], "K1")

			a, err := NewXAES256GCM(key)
			require.NoError(t, err)
			assert.Equal(t, 24, a.NonceSize())
			assert.Equal(t, 16, a.Overhead())

			nonce, pt, ad := []byte(tc.Nonce), []byte(tc.Plaintext), []byte(tc.AAD)
			want := unhex(t, tc.Ciphertext)
			got := a.Seal([]byte("prefix"), nonce, pt, ad)
			assert.Equal(t, append([]byte("prefix"), want...), got)

			opened, err := a.Open(nil, nonce, want, ad)
			require.NoError(t, err)
			assert.Equal(t, pt, opened)

			_, err = a.Open(nil, nonce, want, []byte("other ad"))
			assert.ErrorIs(t, err, ErrIntegrity)
		})
	}
}

// TestXAESAccumulated runs the spec's randomized vectors: inputs read from
// one SHAKE-128 stream, every ciphertext hashed into another.
func TestXAESAccumulated(t *testing.T) {
	for _, tc := range loadXAES(t).Accumulated {
		if tc.Iterations > 10000 && !*xaesMillion {
			t.Logf("skipping %d iterations; run with -xaes.million", tc.Iterations)
			continue
		}
		rng, out := sha3.NewSHAKE128(), sha3.NewSHAKE128()
		var key [32]byte
		var nonce [24]byte
		var n [1]byte
		buf := make([]byte, 0, 512)
		for i := 0; i < tc.Iterations; i++ {
			rng.Read(key[:])
			rng.Read(nonce[:])
			rng.Read(n[:])
			pt := make([]byte, n[0])
			rng.Read(pt)
			rng.Read(n[:])
			ad := make([]byte, n[0])
			rng.Read(ad)

			a, err := NewXAES256GCM(key[:])
			require.NoError(t, err)
			ct := a.Seal(buf[:0], nonce[:], pt, ad)
			out.Write(ct)
			got, err := a.Open(nil, nonce[:], ct, ad)
			require.NoError(t, err)
			require.True(t, bytes.Equal(pt, got), "round trip %d", i)
		}
		sum := make([]byte, 32)
		out.Read(sum)
		assert.Equal(t, unhex(t, tc.Hash), sum, "%d iterations", tc.Iterations)
	}
}

func TestXAESBadInput(t *testing.T) {
	_, err := NewXAES256GCM(make([]byte, 16))
	assert.Error(t, err)
	a, err := NewXAES256GCM(make([]byte, 32))
	require.NoError(t, err)
	assert.Panics(t, func() { a.Seal(nil, make([]byte, 12), nil, nil) })
	assert.Panics(t, func() { _, _ = a.Open(nil, make([]byte, 12), make([]byte, 16), nil) })
	_, err = a.Open(nil, make([]byte, 24), make([]byte, 15), nil)
	assert.ErrorIs(t, err, ErrIntegrity)
}

// TestXAESDerivedKeys: the table of derived keys never hands out another
// prefix's key. Two prefixes that share a slot, opened in turn, each open
// only their own units; a prefix's key derived once is reused; and wipe
// drops every derived key.
func TestXAESDerivedKeys(t *testing.T) {
	x, err := newXAES(NewDataKey())
	require.NoError(t, err)
	na := make([]byte, xaesNonceSize)
	for i := range na {
		na[i] = byte(i + 1)
	}
	nb := bytes.Clone(na)
	nb[0] ^= 0x5a
	nb[4] ^= 0x5a // the same fold: the same slot as na
	require.Same(t, x.slot(na), x.slot(nb))
	pt, ad := pattern(unitSize), []byte("ad")
	ua := x.Seal(nil, na, pt, ad)
	ub := x.Seal(nil, nb, pt, ad)
	require.NotEqual(t, ua, ub)
	for range 3 {
		for _, c := range []struct{ nonce, unit, other []byte }{{na, ua, ub}, {nb, ub, ua}} {
			got, err := x.Open(nil, c.nonce, c.unit, ad)
			require.NoError(t, err)
			require.Equal(t, pt, got)
			require.Equal(t, [gcmNonceSize]byte(c.nonce[:gcmNonceSize]), x.slot(c.nonce).Load().prefix)
			// The other prefix's unit under this nonce: the key in the
			// slot is this prefix's, and it must not open.
			_, err = x.Open(nil, c.nonce, c.other, ad)
			require.ErrorIs(t, err, ErrIntegrity)
		}
	}
	g := x.cachedGCM(na)
	require.Same(t, g, x.cachedGCM(na), "a kept key is derived again")
	x.wipe()
	for i := range x.derived {
		require.Nil(t, x.derived[i].Load(), "slot %d kept after wipe", i)
	}
}
