package crypto

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDeriveKeyRFC5869(t *testing.T) {
	var v struct {
		Vectors []struct {
			Name, IKM, Salt, Info, PRK, OKM string
			Length                          int
		}
	}
	loadJSON(t, "hkdf_sha256.json", &v)
	require.Len(t, v.Vectors, 3)
	for _, tc := range v.Vectors {
		t.Run(tc.Name, func(t *testing.T) {
			got, err := DeriveKey(unhex(t, tc.IKM), unhex(t, tc.Salt), string(unhex(t, tc.Info)), tc.Length)
			require.NoError(t, err)
			assert.Equal(t, unhex(t, tc.OKM), got)
		})
	}
}

func TestDeriveKeyLength(t *testing.T) {
	for _, n := range []int{0, -1, 255*32 + 1} {
		_, err := DeriveKey([]byte("secret"), nil, "x", n)
		assert.Error(t, err, "n=%d", n)
	}
	k, err := DeriveKey([]byte("secret"), nil, "x", 255*32)
	require.NoError(t, err)
	assert.Len(t, k, 255*32)
}

func TestDeriveKeyLabelsSeparate(t *testing.T) {
	secret, salt := NewDataKey(), []byte("salt")
	a, err := DeriveKey(secret, salt, "hostcrypt v1 a", 32)
	require.NoError(t, err)
	b, err := DeriveKey(secret, salt, "hostcrypt v1 b", 32)
	require.NoError(t, err)
	c, err := DeriveKey(secret, []byte("other"), "hostcrypt v1 a", 32)
	require.NoError(t, err)
	assert.NotEqual(t, a, b)
	assert.NotEqual(t, a, c)
}

func TestKeyCheck(t *testing.T) {
	key, other, salt := NewDataKey(), NewDataKey(), []byte("disk-1")
	check := KeyCheck(key, salt)
	require.Len(t, check, KeyCheckSize)
	assert.Equal(t, check, KeyCheck(key, salt), "deterministic")
	assert.NotEqual(t, check, KeyCheck(key, []byte("disk-2")), "salted")

	tests := []struct {
		name  string
		key   []byte
		salt  []byte
		check []byte
		want  error
	}{
		{"right key", key, salt, check, nil},
		{"wrong key", other, salt, check, ErrWrongKey},
		{"wrong salt", key, []byte("disk-2"), check, ErrWrongKey},
		{"flipped check", key, salt, flip(check, 0), ErrWrongKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyKeyCheck(tc.key, tc.salt, tc.check)
			if tc.want == nil {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, tc.want)
			}
		})
	}
	err := VerifyKeyCheck(key, salt, check[:8])
	assert.Error(t, err)
	assert.NotErrorIs(t, err, ErrWrongKey, "a truncated check value is corruption, not a wrong key")
}

func TestNewDataKeyAndWipe(t *testing.T) {
	a, b := NewDataKey(), NewDataKey()
	assert.Len(t, a, KeySize)
	assert.NotEqual(t, a, b)
	Wipe(a)
	assert.Equal(t, make([]byte, KeySize), a)
	Wipe(nil) // must not panic
}

// flip returns a copy of b with bit 0 of byte i inverted.
func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 1
	return c
}
