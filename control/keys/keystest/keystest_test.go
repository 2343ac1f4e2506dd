package keystest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/keys"
)

var bg = context.Background()

func TestPlatformAndTempKeys(t *testing.T) {
	s := New()
	dek := []byte("0123456789abcdef0123456789abcdef")
	w, err := s.WrapKey(bg, dek)
	require.NoError(t, err)
	got, err := s.UnwrapKey(bg, w)
	require.NoError(t, err)
	assert.Equal(t, dek, got)

	tw, err := s.TempWrapper(bg)
	require.NoError(t, err)
	w, err = tw.WrapKey(bg, dek)
	require.NoError(t, err)
	_, err = s.UnwrapKey(bg, w)
	require.NoError(t, err)
	require.NoError(t, s.DestroyTempKey(bg, w.KeyID))
	_, err = s.UnwrapKey(bg, w)
	require.ErrorIs(t, err, keys.ErrKeyGone)

	// A wrap opens only under the key id it names.
	w.KeyID = PlatformKeyID
	_, err = s.UnwrapKey(bg, w)
	require.Error(t, err)
}

func TestCustomerKeysFollowGrantsAndStates(t *testing.T) {
	s := New()
	kid := "https://ks/vaults/v1/keys/k1/1"
	id, cred, err := s.CreateIdentity(bg, keys.IdentitySpec{Type: keys.SystemAssigned, DisplayName: "des/d1"})
	require.NoError(t, err)
	c := s.As(cred)
	_, err = c.WrapKey(bg, kid, make([]byte, 32))
	assert.Equal(t, keys.Revoked, s.Classify(err), "no access before a grant")
	s.Grant(id.PrincipalID, true)
	w, err := c.WrapKey(bg, kid, make([]byte, 32))
	require.NoError(t, err)

	s.SetKeyState("https://ks/vaults/v1/keys/k1", keys.Expired)
	_, err = c.WrapKey(bg, kid, make([]byte, 32))
	assert.Equal(t, keys.Expired, s.Classify(err))
	_, err = c.UnwrapKey(bg, w)
	assert.NoError(t, err, "an expired key still unwraps")
	s.SetKeyState("https://ks/vaults/v1/keys/k1", keys.Revoked)
	_, err = c.UnwrapKey(bg, w)
	assert.Equal(t, keys.Revoked, s.Classify(err))
	s.SetKeyState("https://ks/vaults/v1/keys/k1", keys.Usable)

	s.SetUnreachable(true)
	_, err = c.UnwrapKey(bg, w)
	assert.Equal(t, keys.Unreachable, s.Classify(err))
	s.SetUnreachable(false)

	s.SetLatest("https://ks/vaults/v1/keys/k1/2")
	l, err := c.LatestKeyID(bg, kid)
	require.NoError(t, err)
	assert.Equal(t, "https://ks/vaults/v1/keys/k1/2", l)

	require.NoError(t, s.DeleteIdentity(bg, id.PrincipalID))
	_, err = c.WrapKey(bg, kid, make([]byte, 32))
	assert.Equal(t, keys.Revoked, s.Classify(err))
	assert.Equal(t, keys.Other, s.Classify(errors.New("disk full")))
}

func TestVaultsEventsAndHook(t *testing.T) {
	s := New()
	loc, err := s.VaultLocation(bg, "https://ks/vaults/any/keys/k/1")
	require.NoError(t, err)
	assert.Equal(t, DefaultLocation, loc)
	s.SetVault("v2", "westeurope")
	loc, _ = s.VaultLocation(bg, "https://ks/vaults/v2/keys/k/1")
	assert.Equal(t, "westeurope", loc)
	s.SetVault("gone", "")
	_, err = s.VaultLocation(bg, "https://ks/vaults/gone/keys/k/1")
	assert.ErrorIs(t, err, keys.ErrVaultNotFound)

	got := make(chan []keys.Event, 1)
	go func() {
		evs, _ := s.Events(bg, 0, 10*time.Second)
		got <- evs
	}()
	time.Sleep(10 * time.Millisecond)
	s.Emit("Microsoft.KeyVault.KeyNewVersionCreated", "k1")
	evs := <-got
	require.Len(t, evs, 1)
	assert.EqualValues(t, 1, evs[0].Sequence)
	evs, err = s.Events(bg, 1, 0)
	require.NoError(t, err)
	assert.Empty(t, evs)

	stop := errors.New("stopped by the hook")
	s.SetHook(func(_ context.Context, op string) error {
		if op == "WrapKey" {
			return stop
		}
		return nil
	})
	_, err = s.WrapKey(bg, make([]byte, 32))
	assert.ErrorIs(t, err, stop)
	assert.Equal(t, 1, s.Calls("WrapKey"))
}
