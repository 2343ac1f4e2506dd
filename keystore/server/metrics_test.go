package server

import (
	"crypto/rand"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/internal/promtest"
	"hostcrypt/keystore/api"
)

// The key store's metrics move with what it does: requests by operation
// and result, wrap and unwrap by key size, audit appends, events, keys by
// state, failed authentications; and they name no vault, key or token.
func TestMetrics(t *testing.T) {
	e := startEnv(t)
	before := promtest.Handler(t, e.s.MetricsHandler())
	require.Equal(t, 0.0, before.Must(t, "hostcrypt_keystore_keys", "state=enabled"))

	e.vault("mvault", "premium")
	kb, err := e.admin.CreateKey(bg, "mvault", "mkey", api.KeyCreate{Kty: "RSA-HSM", KeySize: ptr(3072)})
	require.NoError(t, err)
	id, des := e.identity("SystemAssigned", "")
	_, err = e.admin.SetPolicy(bg, "mvault", id.PrincipalID, []string{"get", "wrapKey", "unwrapKey"})
	require.NoError(t, err)
	dek := make([]byte, 32)
	rand.Read(dek)
	kid, wrapped, err := des.WrapKey(bg, kb.Key.Kid, api.RSAOAEP256, dek)
	require.NoError(t, err)
	for range 3 {
		_, _, err = des.UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
		require.NoError(t, err)
	}
	_, err = e.clientWithToken("not-a-token").ListVaults(bg)
	requireCode(t, err, 401, "")
	_, err = e.admin.UpdateKey(bg, "mvault", "mkey", "", api.KeyUpdate{Attributes: &api.KeyAttributes{Enabled: ptr(false)}})
	require.NoError(t, err)
	_, err = e.admin.CreateKey(bg, "mvault", "other", api.KeyCreate{Kty: "RSA-HSM", KeySize: ptr(2048)})
	require.NoError(t, err)

	s := promtest.Handler(t, e.s.MetricsHandler())
	require.Equal(t, 3.0, s.Must(t, "hostcrypt_keystore_requests_total", "operation=KeyUnwrap", "result=Success"))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_keystore_requests_total", "operation=KeyWrap", "result=Success"))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_keystore_requests_total", "operation=VaultList", "result=Unauthorized"))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_keystore_key_operation_duration_seconds", "operation=wrap", "key_size=3072"))
	require.Equal(t, 3.0, s.Must(t, "hostcrypt_keystore_key_operation_duration_seconds", "operation=unwrap", "key_size=3072"))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_keystore_failed_authentications_total"))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_keystore_keys", "state=disabled"))
	require.Equal(t, 1.0, s.Must(t, "hostcrypt_keystore_keys", "state=enabled"))
	require.GreaterOrEqual(t, s.Must(t, "hostcrypt_keystore_events_total", "type=KeyNewVersionCreated"), 2.0)
	// Every request was audited, each append timed.
	var requests float64
	for _, m := range s.Families["hostcrypt_keystore_requests_total"].GetMetric() {
		requests += m.GetCounter().GetValue()
	}
	require.Equal(t, requests, s.Must(t, "hostcrypt_keystore_audit_append_duration_seconds"))

	require.Subset(t, []string{"operation", "result", "key_size", "type", "state", "version", "cause"}, s.LabelNames(),
		"labels are bounded: no vault, key, caller or address")
	for _, secret := range []string{"mvault", "mkey", id.Token, id.PrincipalID, "not-a-token"} {
		require.False(t, strings.Contains(s.Text, secret), "the metrics name %q", secret)
	}
	s.CheckMetrics(t)

	// docs/OBSERVABILITY.md lists each of them, and no other.
	doc, err := os.ReadFile("../../docs/OBSERVABILITY.md")
	require.NoError(t, err)
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(hostcrypt_keystore_[a-z_]+)`").FindAllStringSubmatch(string(doc), -1) {
		documented = append(documented, m[1])
	}
	var served []string
	for name := range s.Families {
		if strings.HasPrefix(name, "hostcrypt_") {
			served = append(served, name)
		}
	}
	require.ElementsMatch(t, served, documented)
}
