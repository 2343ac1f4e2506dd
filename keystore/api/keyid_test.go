package api

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseKeyID(t *testing.T) {
	cases := []struct {
		in   string
		want KeyID
		ok   bool
	}{
		{"https://127.0.0.1:8443/vaults/v1/keys/k1/0123abcd", KeyID{"https://127.0.0.1:8443", "v1", "k1", "0123abcd"}, true},
		{"https://ks.example/vaults/v1/keys/k1", KeyID{"https://ks.example", "v1", "k1", ""}, true},
		{"https://ks.example/vaults/v1/keys/k1/", KeyID{"https://ks.example", "v1", "k1", ""}, true},
		{"", KeyID{}, false},
		{"http://ks/vaults/v/keys/k/1", KeyID{}, false},
		{"https:///vaults/v/keys/k/1", KeyID{}, false},
		{"https://ks/keys/k/1", KeyID{}, false},
		{"https://ks/vaults/v/keys", KeyID{}, false},
		{"https://ks/vaults/v/secrets/k/1", KeyID{}, false},
		{"https://ks/vaults/v/keys/k/1/wrapkey", KeyID{}, false},
		{"https://ks/vaults//keys/k/1", KeyID{}, false},
		{"https://ks/vaults/v/keys/k/1?x=y", KeyID{}, false},
		{"https://u@ks/vaults/v/keys/k/1", KeyID{}, false},
		{"%zz", KeyID{}, false},
	}
	for _, c := range cases {
		got, err := ParseKeyID(c.in)
		if !c.ok {
			require.Error(t, err, c.in)
			assert.True(t, errors.Is(err, ErrNotKeyID), c.in)
			assert.Contains(t, err.Error(), "https://HOST:PORT/vaults/VAULT/keys/KEY", "the error shows the form")
			continue
		}
		require.NoError(t, err, c.in)
		assert.Equal(t, c.want, got, c.in)
		assert.Equal(t, c.want.Base+c.want.Path(), got.String())
	}
}

func TestParseVersionedKeyID(t *testing.T) {
	k, err := ParseVersionedKeyID("https://ks:1/vaults/v/keys/k/abc")
	require.NoError(t, err)
	assert.Equal(t, "https://ks:1/vaults/v/keys/k", k.Versionless().String())
	_, err = ParseVersionedKeyID("https://ks:1/vaults/v/keys/k")
	require.ErrorIs(t, err, ErrNotKeyID)
	assert.Contains(t, err.Error(), "no version")
}

func FuzzParseKeyID(f *testing.F) {
	f.Add("https://127.0.0.1:8443/vaults/v1/keys/k1/0123abcd")
	f.Add("https://ks/vaults/v/keys/k")
	f.Add("https://ks/vaults/v/keys/k/1/x")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKeyID(s)
		if err != nil {
			return
		}
		// What parses prints back to an id that parses to the same.
		again, err := ParseKeyID(k.String())
		if err != nil || again != k {
			t.Fatalf("%q parsed to %+v, printed %q, parsed again to %+v (%v)", s, k, k.String(), again, err)
		}
	})
}
