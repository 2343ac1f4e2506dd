package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"hostcrypt/internal/testenv"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/internal/leakscan"
	"hostcrypt/keystore/api"
	"hostcrypt/keystore/client"
)

var bg = context.Background()

func ptr[T any](v T) *T { return &v }

// TestKeyLifecycle walks the acceptance flow against the real TLS server.
func TestKeyLifecycle(t *testing.T) {
	e := startEnv(t)
	e.vault("cmkvault", "premium")
	kb, err := e.admin.CreateKey(bg, "cmkvault", "cmk", api.KeyCreate{Kty: "RSA-HSM", KeySize: ptr(3072)})
	require.NoError(t, err)
	assert.Equal(t, "RSA-HSM", kb.Key.Kty)
	assert.Empty(t, kb.Key.D, "no private parts in a key bundle")
	assert.True(t, strings.HasPrefix(kb.Key.Kid, e.s.BaseURL()+"/vaults/cmkvault/keys/cmk/"), kb.Key.Kid)

	id, des := e.identity("SystemAssigned", "")
	_, err = e.admin.SetPolicy(bg, "cmkvault", id.PrincipalID, []string{"get", "wrapKey", "unwrapKey"})
	require.NoError(t, err)

	dek := make([]byte, 32)
	rand.Read(dek)
	kid1, wrapped, err := des.WrapKey(bg, kb.Key.Kid, api.RSAOAEP256, dek)
	require.NoError(t, err)
	assert.Equal(t, kb.Key.Kid, kid1)
	_, got, err := des.UnwrapKey(bg, kid1, api.RSAOAEP256, wrapped)
	require.NoError(t, err)
	assert.Equal(t, dek, got)

	// RSA-OAEP (SHA-1) too, and on the version-less kid (current version).
	kidNoVer := e.s.BaseURL() + "/vaults/cmkvault/keys/cmk"
	used, w2, err := des.WrapKey(bg, kidNoVer, api.RSAOAEP, dek)
	require.NoError(t, err)
	assert.Equal(t, kid1, used)
	_, got, err = des.UnwrapKey(bg, used, api.RSAOAEP, w2)
	require.NoError(t, err)
	assert.Equal(t, dek, got)

	// Disable: 403 KeyDisabled; enable: works.
	_, err = e.admin.UpdateKey(bg, "cmkvault", "cmk", "", api.KeyUpdate{Attributes: &api.KeyAttributes{Enabled: ptr(false)}})
	require.NoError(t, err)
	_, _, err = des.UnwrapKey(bg, kid1, api.RSAOAEP256, wrapped)
	requireCode(t, err, 403, "KeyDisabled")
	assert.True(t, client.IsKeyDisabled(err))
	assert.Contains(t, err.Error(), "cmkvault")
	_, err = e.admin.UpdateKey(bg, "cmkvault", "cmk", "", api.KeyUpdate{Attributes: &api.KeyAttributes{Enabled: ptr(true)}})
	require.NoError(t, err)
	_, _, err = des.UnwrapKey(bg, kid1, api.RSAOAEP256, wrapped)
	require.NoError(t, err)

	// Rotate: a new version; the old one still unwraps.
	kb2, err := e.admin.RotateKey(bg, "cmkvault", "cmk")
	require.NoError(t, err)
	assert.NotEqual(t, kid1, kb2.Key.Kid)
	used, _, err = des.WrapKey(bg, kidNoVer, api.RSAOAEP256, dek)
	require.NoError(t, err)
	assert.Equal(t, kb2.Key.Kid, used)
	_, got, err = des.UnwrapKey(bg, kid1, api.RSAOAEP256, wrapped)
	require.NoError(t, err)
	assert.Equal(t, dek, got)
	versions, err := e.admin.ListKeyVersions(bg, "cmkvault", "cmk")
	require.NoError(t, err)
	assert.Len(t, versions, 2)

	// exp in the past: wrap refused, unwrap works.
	past := e.clock.Now().Add(-time.Hour).Unix()
	_, err = e.admin.UpdateKey(bg, "cmkvault", "cmk", "", api.KeyUpdate{Attributes: &api.KeyAttributes{EXP: &past}})
	require.NoError(t, err)
	_, _, err = des.WrapKey(bg, kb2.Key.Kid, api.RSAOAEP256, dek)
	requireCode(t, err, 403, "KeyExpired")
	kid2, w3, err := des.WrapKey(bg, kid1, api.RSAOAEP256, dek) // the old version has no exp
	require.NoError(t, err)
	_, _, err = des.UnwrapKey(bg, kid2, api.RSAOAEP256, w3)
	require.NoError(t, err)

	// nbf in the future: wrap refused.
	future := e.clock.Now().Add(time.Hour).Unix()
	_, err = e.admin.UpdateKey(bg, "cmkvault", "cmk", kid1[strings.LastIndex(kid1, "/")+1:], api.KeyUpdate{Attributes: &api.KeyAttributes{NBF: &future}})
	require.NoError(t, err)
	_, _, err = des.WrapKey(bg, kid1, api.RSAOAEP256, dek)
	requireCode(t, err, 403, "KeyNotYetValid")

	// Revoke the policy: ForbiddenByPolicy.
	_, err = e.admin.DeletePolicy(bg, "cmkvault", id.PrincipalID)
	require.NoError(t, err)
	_, _, err = des.UnwrapKey(bg, kid1, api.RSAOAEP256, wrapped)
	requireCode(t, err, 403, "ForbiddenByPolicy")
	assert.True(t, client.IsForbiddenByPolicy(err))

	// Deleting the identity revokes its token.
	require.NoError(t, e.platform.DeleteIdentity(bg, id.PrincipalID))
	_, err = des.GetKey(bg, "cmkvault", "cmk", "")
	requireCode(t, err, 401, "Unauthorized")

	// Events: each change, in order, with Key Vault's data shape.
	evs, err := e.admin.Events(bg, 0, 0)
	require.NoError(t, err)
	var types []string
	for _, ev := range evs {
		types = append(types, strings.TrimPrefix(ev.EventType, "Microsoft.KeyVault."))
	}
	assert.Equal(t, []string{"KeyNewVersionCreated", "VaultAccessPolicyChanged", "KeyDisabled", "KeyEnabled", "KeyNewVersionCreated", "VaultAccessPolicyChanged"}, types)
	assert.Equal(t, "cmkvault", evs[0].Data.VaultName)
	assert.Equal(t, "Key", evs[0].Data.ObjectType)
	assert.Equal(t, kid1, evs[0].Data.Id)

	// Audit: every call with its caller and result.
	recs, err := e.admin.Audit(bg, 0, "cmkvault", 0)
	require.NoError(t, err)
	var unwrapDisabled, unwrapForbidden, wrapOK int
	for _, r := range recs {
		switch {
		case r.OperationName == "KeyUnwrap" && r.ErrorCode == "KeyDisabled":
			unwrapDisabled++
			assert.Equal(t, id.PrincipalID, r.CallerObjectID)
			assert.Equal(t, 403, r.ResultCode)
			assert.Equal(t, kid1, r.Kid)
		case r.OperationName == "KeyUnwrap" && r.ErrorCode == "ForbiddenByPolicy":
			unwrapForbidden++
		case r.OperationName == "KeyWrap" && r.ResultCode == 200:
			wrapOK++
			assert.Equal(t, id.TenantID, r.CallerTenantID)
		}
	}
	assert.Equal(t, 1, unwrapDisabled)
	assert.Equal(t, 1, unwrapForbidden)
	assert.Equal(t, 4, wrapOK)
}

// TestBadInput: each bad request is a 4xx with a clear message.
func TestBadInput(t *testing.T) {
	e := startEnv(t)
	e.vault("stdvault", "standard")
	e.vault("prevault", "premium")
	kb, err := e.admin.CreateKey(bg, "stdvault", "k", api.KeyCreate{Kty: "RSA", KeySize: ptr(2048), KeyOps: []string{"wrapKey"}})
	require.NoError(t, err)
	_, other := e.identity("User", "other-tenant")

	_, err = e.admin.CreateKey(bg, "stdvault", "small", api.KeyCreate{Kty: "RSA", KeySize: ptr(1024)})
	requireCode(t, err, 400, "BadParameter")
	assert.Contains(t, err.Error(), "2048, 3072 or 4096")
	_, err = e.admin.CreateKey(bg, "stdvault", "hsm", api.KeyCreate{Kty: "RSA-HSM", KeySize: ptr(2048)})
	requireCode(t, err, 400, "BadParameter")
	assert.Contains(t, err.Error(), "premium")
	_, err = e.admin.CreateKey(bg, "stdvault", "ec", api.KeyCreate{Kty: "EC"})
	requireCode(t, err, 400, "BadParameter")
	_, err = e.admin.CreateKey(bg, "nosuchvault", "k", api.KeyCreate{Kty: "RSA"})
	requireCode(t, err, 404, "VaultNotFound")
	_, err = e.admin.GetKey(bg, "stdvault", "missing", "")
	requireCode(t, err, 404, "KeyNotFound")
	_, err = e.admin.GetKey(bg, "stdvault", "k", "0123")
	requireCode(t, err, 404, "KeyNotFound")
	_, _, err = e.admin.UnwrapKey(bg, kb.Key.Kid, api.RSAOAEP256, []byte("x"))
	requireCode(t, err, 403, "KeyOperationForbidden")
	_, _, err = e.admin.WrapKey(bg, kb.Key.Kid, "RSA1_5", []byte("x"))
	requireCode(t, err, 400, "BadParameter")
	_, err = other.GetKey(bg, "stdvault", "k", "")
	requireCode(t, err, 403, "TenantNotAllowed")
	var vc api.VaultCreate
	vc.Properties.SoftDeleteRetentionInDays = ptr(3)
	_, err = e.admin.CreateVault(bg, "badretention", vc)
	requireCode(t, err, 400, "BadParameter")
	_, err = e.admin.CreateVault(bg, "platform", api.VaultCreate{})
	requireCode(t, err, 409, "VaultNameReserved")
	_, err = e.admin.CreateVault(bg, "stdvault", api.VaultCreate{})
	requireCode(t, err, 409, "VaultAlreadyExists")
	_, err = e.admin.SetPolicy(bg, "stdvault", "someone", []string{"fly"})
	requireCode(t, err, 400, "BadParameter")
	_, err = e.admin.SetRotationPolicy(bg, "stdvault", "k", api.RotationPolicy{LifetimeActions: []api.LifetimeAction{{Trigger: api.Trigger{TimeAfterCreate: "P1D"}, Action: api.Action{Type: "Rotate"}}}})
	requireCode(t, err, 400, "BadParameter")

	// Raw HTTP: malformed JSON, unknown fields, huge bodies, tokens.
	ca, _ := os.ReadFile(filepath.Join(e.dir, fileCA))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	tok, _ := os.ReadFile(filepath.Join(e.dir, fileAdminToken))
	raw := func(method, path, token string, body []byte) (int, string) {
		req, _ := http.NewRequest(method, e.s.BaseURL()+path, bytes.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	admin := strings.TrimSpace(string(tok))
	cases := []struct {
		name, method, path, token string
		body                      []byte
		status                    int
		want                      string
	}{
		{"malformed json", "POST", "/vaults/stdvault/keys/x/create", admin, []byte(`{"kty":`), 400, "not valid JSON"},
		{"unknown field", "POST", "/vaults/stdvault/keys/x/create", admin, []byte(`{"kty":"RSA","colour":"red"}`), 400, "unknown field"},
		{"trailing data", "POST", "/vaults/stdvault/keys/x/create", admin, []byte(`{"kty":"RSA"} {}`), 400, "after the JSON"},
		{"empty body", "POST", "/vaults/stdvault/keys/x/create", admin, nil, 400, "empty"},
		{"huge body", "POST", "/vaults/stdvault/keys/x/create", admin, bytes.Repeat([]byte(" "), 2<<20), 413, "larger than"},
		{"no token", "GET", "/vaults/stdvault/keys", "", nil, 401, "no bearer token"},
		{"wrong token", "GET", "/vaults/stdvault/keys", "nope", nil, 401, "not valid"},
		{"unknown path", "GET", "/nowhere", admin, nil, 404, "no operation"},
		{"bad api version ok", "GET", "/vaults/stdvault/keys?api-version=7.4", admin, nil, 200, "value"},
		{"bad base64", "POST", "/vaults/stdvault/keys/k/wrapkey", admin, []byte(`{"alg":"RSA-OAEP-256","value":"!!"}`), 400, "base64url"},
		{"bad vault name", "PUT", "/vaults/a_b", admin, []byte(`{}`), 400, "not valid"},
		{"bad after", "GET", "/audit?after=x", admin, nil, 400, "after"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body := raw(c.method, c.path, c.token, c.body)
			assert.Equal(t, c.status, status, body)
			assert.Contains(t, body, c.want)
			if status >= 400 {
				assert.Contains(t, body, `"error":{`)
			}
		})
	}
}

func TestSoftDeleteRecoverPurge(t *testing.T) {
	e := startEnv(t)
	e.vault("delvault", "standard")
	var vc api.VaultCreate
	vc.Properties.EnablePurgeProtection = ptr(true)
	vc.Properties.SoftDeleteRetentionInDays = ptr(7)
	_, err := e.admin.CreateVault(bg, "protected", vc)
	require.NoError(t, err)
	for _, v := range []string{"delvault", "protected"} {
		_, err := e.admin.CreateKey(bg, v, "k", api.KeyCreate{Kty: "RSA"})
		require.NoError(t, err)
		del, err := e.admin.DeleteKey(bg, v, "k")
		require.NoError(t, err)
		assert.NotEmpty(t, del.RecoveryID)
		_, err = e.admin.GetKey(bg, v, "k", "")
		requireCode(t, err, 404, "KeyNotFound")
		_, err = e.admin.CreateKey(bg, v, "k", api.KeyCreate{Kty: "RSA"})
		requireCode(t, err, 409, "ObjectIsDeletedButRecoverable")
		deleted, err := e.admin.ListDeletedKeys(bg, v)
		require.NoError(t, err)
		assert.Len(t, deleted, 1)
	}
	require.NoError(t, e.admin.PurgeKey(bg, "delvault", "k"))
	err = e.admin.PurgeKey(bg, "protected", "k")
	requireCode(t, err, 403, "PurgeProtected")
	_, err = e.admin.RecoverKey(bg, "protected", "k")
	require.NoError(t, err)
	_, err = e.admin.GetKey(bg, "protected", "k", "")
	require.NoError(t, err)

	// Past the retention a deleted key is purged by the scheduler.
	_, err = e.admin.DeleteKey(bg, "protected", "k")
	require.NoError(t, err)
	e.clock.Advance(8 * 24 * time.Hour)
	require.NoError(t, e.s.RunDue())
	_, err = e.admin.RecoverKey(bg, "protected", "k")
	requireCode(t, err, 404, "KeyNotFound")

	evs, err := e.admin.Events(bg, 0, 0)
	require.NoError(t, err)
	var types []string
	for _, ev := range evs {
		types = append(types, strings.TrimPrefix(ev.EventType, "Microsoft.KeyVault."))
	}
	assert.Equal(t, []string{"KeyNewVersionCreated", "KeyDeleted", "KeyNewVersionCreated", "KeyDeleted", "KeyPurged", "KeyRecovered", "KeyDeleted", "KeyPurged"}, types)
}

func TestRotationPolicy(t *testing.T) {
	e := startEnv(t)
	e.vault("rotvault", "standard")
	_, err := e.admin.CreateKey(bg, "rotvault", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	p, err := e.admin.GetRotationPolicy(bg, "rotvault", "k")
	require.NoError(t, err)
	require.Len(t, p.LifetimeActions, 1, "the default policy")
	assert.Equal(t, "Notify", p.LifetimeActions[0].Action.Type)
	assert.Equal(t, "P30D", p.LifetimeActions[0].Trigger.TimeBeforeExpiry)

	bad := []api.RotationPolicy{
		{LifetimeActions: []api.LifetimeAction{{Trigger: api.Trigger{TimeAfterCreate: "P30D"}, Action: api.Action{Type: "Rotate"}}, {Trigger: api.Trigger{TimeAfterCreate: "P40D"}, Action: api.Action{Type: "Rotate"}}}},
		{LifetimeActions: []api.LifetimeAction{{Trigger: api.Trigger{TimeAfterCreate: "P30D"}, Action: api.Action{Type: "Notify"}}}},
		{LifetimeActions: []api.LifetimeAction{{Trigger: api.Trigger{TimeAfterCreate: "P30D", TimeBeforeExpiry: "P30D"}, Action: api.Action{Type: "Rotate"}}}},
		{LifetimeActions: []api.LifetimeAction{{Trigger: api.Trigger{TimeAfterCreate: "30 days"}, Action: api.Action{Type: "Rotate"}}}},
		{LifetimeActions: []api.LifetimeAction{{Trigger: api.Trigger{TimeAfterCreate: "P30D"}, Action: api.Action{Type: "Explode"}}}},
		{Attributes: api.RotationPolicyAttributes{ExpiryTime: "P10D"}},
		{LifetimeActions: []api.LifetimeAction{{Trigger: api.Trigger{TimeAfterCreate: "P85D"}, Action: api.Action{Type: "Rotate"}}}, Attributes: api.RotationPolicyAttributes{ExpiryTime: "P90D"}},
	}
	for i, b := range bad {
		_, err := e.admin.SetRotationPolicy(bg, "rotvault", "k", b)
		requireCode(t, err, 400, "BadParameter")
		t.Logf("bad policy %d: %v", i, err)
	}

	_, err = e.admin.SetRotationPolicy(bg, "rotvault", "k", api.RotationPolicy{
		LifetimeActions: []api.LifetimeAction{
			{Trigger: api.Trigger{TimeAfterCreate: "P60D"}, Action: api.Action{Type: "rotate"}},
			{Trigger: api.Trigger{TimeBeforeExpiry: "P10D"}, Action: api.Action{Type: "Notify"}},
		},
		Attributes: api.RotationPolicyAttributes{ExpiryTime: "P90D"},
	})
	require.NoError(t, err)
	after := lastSeq(t, e)

	e.clock.Advance(59 * 24 * time.Hour)
	require.NoError(t, e.s.RunDue())
	vs, _ := e.admin.ListKeyVersions(bg, "rotvault", "k")
	assert.Len(t, vs, 1)
	e.clock.Advance(2 * 24 * time.Hour)
	require.NoError(t, e.s.RunDue())
	require.NoError(t, e.s.RunDue()) // idempotent
	vs, _ = e.admin.ListKeyVersions(bg, "rotvault", "k")
	require.Len(t, vs, 2)
	require.NotNil(t, vs[1].Attributes.EXP, "new versions expire per expiryTime")
	assert.Equal(t, e.clock.Now().AddDate(0, 0, 90).Unix(), *vs[1].Attributes.EXP)

	// Near expiry 10 days before exp (the policy's notify), then expired.
	_, err = e.admin.SetRotationPolicy(bg, "rotvault", "k", api.RotationPolicy{
		LifetimeActions: []api.LifetimeAction{{Trigger: api.Trigger{TimeBeforeExpiry: "P10D"}, Action: api.Action{Type: "Notify"}}},
	})
	require.NoError(t, err)
	e.clock.Advance(79 * 24 * time.Hour)
	require.NoError(t, e.s.RunDue())
	e.clock.Advance(2 * 24 * time.Hour)
	require.NoError(t, e.s.RunDue())
	e.clock.Advance(10 * 24 * time.Hour)
	require.NoError(t, e.s.RunDue())
	evs, err := e.admin.Events(bg, after, 0)
	require.NoError(t, err)
	var types []string
	for _, ev := range evs {
		types = append(types, strings.TrimPrefix(ev.EventType, "Microsoft.KeyVault."))
	}
	assert.Equal(t, []string{"KeyNewVersionCreated", "KeyNearExpiry", "KeyExpired"}, types)
	assert.Equal(t, vs[1].Kid, evs[1].Data.Id)
	assert.Equal(t, *vs[1].Attributes.EXP, *evs[2].Data.EXP)

	// An empty policy restores the default.
	_, err = e.admin.SetRotationPolicy(bg, "rotvault", "k", api.RotationPolicy{})
	require.NoError(t, err)
	p, _ = e.admin.GetRotationPolicy(bg, "rotvault", "k")
	assert.Equal(t, "P30D", p.LifetimeActions[0].Trigger.TimeBeforeExpiry)
}

func lastSeq(t *testing.T, e *env) uint64 {
	evs, err := e.admin.Events(bg, 0, 0)
	require.NoError(t, err)
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Sequence
}

func TestEventsLongPollAndWebhook(t *testing.T) {
	got := make(chan []api.Event, 10)
	fails := 2
	hook := newHookServer(t, func(evs []api.Event) int {
		if fails > 0 {
			fails--
			return 500
		}
		got <- evs
		return 200
	})
	e := startEnv(t, withWebhookAllow(hook+"/"))
	e.vault("evvault", "standard")
	_, err := e.admin.CreateWebhook(bg, hook, "evvault")
	require.NoError(t, err)

	res := make(chan []api.Event, 1)
	go func() {
		evs, _ := e.platform.Events(bg, 0, 10*time.Second)
		res <- evs
	}()
	time.Sleep(50 * time.Millisecond) // let the poll park; correctness does not depend on it
	_, err = e.admin.CreateKey(bg, "evvault", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	select {
	case evs := <-res:
		require.Len(t, evs, 1)
		assert.Equal(t, "Microsoft.KeyVault.KeyNewVersionCreated", evs[0].EventType)
	case <-time.After(10 * time.Second):
		t.Fatal("long poll did not return the event")
	}
	select {
	case evs := <-got:
		require.Len(t, evs, 1)
		assert.Equal(t, "k", evs[0].Data.ObjectName)
	case <-time.After(10 * time.Second):
		t.Fatal("webhook not delivered after retries")
	}
	// Identities other than admin/platform may not read events.
	_, idc := e.identity("SystemAssigned", "")
	_, err = idc.Events(bg, 0, 0)
	requireCode(t, err, 403, "ForbiddenByPolicy")
	// An empty wait returns at once.
	start := time.Now()
	evs, err := e.admin.Events(bg, 1000, 200*time.Millisecond)
	require.NoError(t, err)
	assert.Empty(t, evs)
	assert.Less(t, time.Since(start), 5*time.Second)
}

func TestPlatformKeys(t *testing.T) {
	e := startEnv(t)
	kb, err := e.platform.CreatePlatformKey(bg, "pmk")
	require.NoError(t, err)
	assert.Equal(t, "oct-HSM", kb.Key.Kty)
	assert.Empty(t, kb.Key.K)
	dek := make([]byte, 32)
	rand.Read(dek)
	kid, wrapped, err := e.platform.PlatformWrap(bg, "pmk", "", dek)
	require.NoError(t, err)
	assert.Len(t, wrapped, 40)
	got, err := e.platform.PlatformUnwrap(bg, kid, wrapped)
	require.NoError(t, err)
	assert.Equal(t, dek, got)
	wrapped[3] ^= 1
	_, err = e.platform.PlatformUnwrap(bg, kid, wrapped)
	requireCode(t, err, 400, "BadParameter")

	_, _, err = e.admin.WrapKey(bg, kid, api.A256KWP, dek)
	requireCode(t, err, 403, "ForbiddenByPolicy")
	_, id := e.identity("SystemAssigned", "")
	_, err = id.GetKeyByID(bg, kid)
	requireCode(t, err, 403, "ForbiddenByPolicy")
	_, err = e.platform.CreateKey(bg, "platform", "rsa", api.KeyCreate{Kty: "RSA"})
	requireCode(t, err, 400, "BadParameter")
	e.vault("custvault", "standard")
	_, err = e.admin.CreateKey(bg, "custvault", "oct", api.KeyCreate{Kty: "oct-HSM", KeySize: ptr(256)})
	requireCode(t, err, 400, "BadParameter")
}

func TestBackupRestoreAndTenants(t *testing.T) {
	e := startEnv(t)
	e.vault("srcvault", "premium")
	e.vault("dstvault", "premium")
	kb, err := e.admin.CreateKey(bg, "srcvault", "k", api.KeyCreate{Kty: "RSA-HSM", KeySize: ptr(2048)})
	require.NoError(t, err)
	dek := make([]byte, 32)
	rand.Read(dek)
	_, wrapped, err := e.admin.WrapKey(bg, kb.Key.Kid, api.RSAOAEP256, dek)
	require.NoError(t, err)
	blob, err := e.admin.BackupKey(bg, "srcvault", "k")
	require.NoError(t, err)
	assert.NotContains(t, blob, kb.Key.N)

	restored, err := e.admin.RestoreKey(bg, "dstvault", blob)
	require.NoError(t, err)
	ver := kb.Key.Kid[strings.LastIndex(kb.Key.Kid, "/")+1:]
	assert.Equal(t, e.s.BaseURL()+"/vaults/dstvault/keys/k/"+ver, restored.Key.Kid)
	_, got, err := e.admin.UnwrapKey(bg, restored.Key.Kid, api.RSAOAEP256, wrapped)
	require.NoError(t, err)
	assert.Equal(t, dek, got)
	_, err = e.admin.RestoreKey(bg, "dstvault", blob)
	requireCode(t, err, 409, "KeyAlreadyExists")

	// Another tenant: its user creates a vault there; the restore is refused.
	other, oc := e.identity("User", "tenant-b")
	var vc api.VaultCreate
	vc.Properties.Sku = &api.Sku{Name: "premium"}
	v, err := oc.CreateVault(bg, "othervault", vc)
	require.NoError(t, err)
	assert.Equal(t, other.TenantID, v.Properties.TenantID)
	_, err = oc.RestoreKey(bg, "othervault", blob)
	requireCode(t, err, 400, "BackupTenantMismatch")

	// Cross-tenant access needs the vault to allow the tenant.
	_, err = e.admin.SetPolicy(bg, "srcvault", other.PrincipalID, []string{"get", "unwrapKey"})
	require.NoError(t, err)
	_, _, err = oc.UnwrapKey(bg, kb.Key.Kid, api.RSAOAEP256, wrapped)
	requireCode(t, err, 403, "TenantNotAllowed")
	var vu api.VaultUpdate
	vu.Properties.AllowedTenants = &[]string{other.TenantID}
	_, err = e.admin.UpdateVault(bg, "srcvault", vu)
	require.NoError(t, err)
	_, got, err = oc.UnwrapKey(bg, kb.Key.Kid, api.RSAOAEP256, wrapped)
	require.NoError(t, err)
	assert.Equal(t, dek, got)
	// The other tenant's user cannot manage our vault.
	_, err = oc.SetPolicy(bg, "srcvault", other.PrincipalID, []string{"all"})
	requireCode(t, err, 403, "ForbiddenByPolicy")
}

// TestImportAndNoSecretsAtRest imports a key with known private parts and
// checks that neither they nor an unwrapped key appear in any file under
// the state directory, in the log, or in an error message.
func TestImportAndNoSecretsAtRest(t *testing.T) {
	var logBuf testenv.Buffer
	e := startEnv(t, func(c *Config) { c.Logger = newTestLogger(&logBuf) })
	e.vault("impvault", "standard")
	pk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	pk.Precompute()
	enc := func(b *big.Int) string { return b64(b.Bytes()) }
	jwk := api.JSONWebKey{Kty: "RSA", N: enc(pk.N), E: enc(big.NewInt(int64(pk.E))), D: enc(pk.D), P: enc(pk.Primes[0]), Q: enc(pk.Primes[1])}
	kb, err := e.admin.ImportKey(bg, "impvault", "imp", api.KeyImport{Key: &jwk})
	require.NoError(t, err)
	assert.Equal(t, jwk.N, kb.Key.N)
	assert.Empty(t, kb.Key.D)

	dek := bytes.Repeat([]byte{0xA5, 0x5A, 0x3C, 0xC3}, 8)
	_, wrapped, err := e.admin.WrapKey(bg, kb.Key.Kid, api.RSAOAEP256, dek)
	require.NoError(t, err)
	_, got, err := e.admin.UnwrapKey(bg, kb.Key.Kid, api.RSAOAEP256, wrapped)
	require.NoError(t, err)
	require.Equal(t, dek, got)
	_, _, err = e.admin.UnwrapKey(bg, kb.Key.Kid, api.RSAOAEP256, wrapped[:len(wrapped)-1])
	require.Error(t, err)
	blob, err := e.admin.BackupKey(bg, "impvault", "imp")
	require.NoError(t, err)

	bad := jwk
	bad.D = enc(big.NewInt(12345))
	_, err = e.admin.ImportKey(bg, "impvault", "bad", api.KeyImport{Key: &bad})
	requireCode(t, err, 400, "BadParameter")
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	_, err = e.admin.ImportKey(bg, "impvault", "small", api.KeyImport{Key: &api.JSONWebKey{Kty: "RSA", N: enc(small.N), E: "AQAB", D: enc(small.D), P: enc(small.Primes[0]), Q: enc(small.Primes[1])}})
	requireCode(t, err, 400, "BadParameter")
	errText := err.Error()

	e.stop()
	secrets := map[string][]byte{
		"d": pk.D.Bytes(), "p": pk.Primes[0].Bytes(), "q": pk.Primes[1].Bytes(),
		"pkcs1": x509.MarshalPKCS1PrivateKey(pk), "dek": dek,
	}
	files := readAll(t, e.dir)
	files["log"] = logBuf.Bytes()
	files["error"] = []byte(errText)
	files["backup"] = []byte(blob)
	for name, content := range files {
		for sname, secret := range secrets {
			assert.False(t, bytes.Contains(content, secret), "%s found in %s", sname, name)
			assert.False(t, bytes.Contains(content, []byte(b64(secret))), "%s (base64url) found in %s", sname, name)
		}
		if strings.HasSuffix(name, ".token") || name == "/"+fileMasterKey || name == "/"+fileState {
			info, err := os.Stat(filepath.Join(e.dir, name))
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), info.Mode().Perm(), name)
		}
	}
	// No 16-byte window of the private key's encodings is anywhere under DIR.
	for sname, secret := range secrets {
		hits, err := leakscan.Scan(e.dir, secret, 16)
		require.NoError(t, err)
		assert.Empty(t, hits, "a window of %s found under the state directory", sname)
	}
	info, err := os.Stat(e.dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), info.Mode().Perm())
}

func TestRestartAndPassphrase(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ks")
	clock := testenv.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	pass := func(p string) envOpt { return func(c *Config) { c.Passphrase = []byte(p) } }
	e := startEnvIn(t, dir, clock, pass("correct horse"))
	e.vault("pvault", "standard")
	kb, err := e.admin.CreateKey(bg, "pvault", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	dek := []byte("0123456789abcdef0123456789abcdef")
	_, wrapped, err := e.admin.WrapKey(bg, kb.Key.Kid, api.RSAOAEP256, dek)
	require.NoError(t, err)
	tenant, oldBase := e.s.TenantID(), e.s.BaseURL()
	e.stop()

	// A copy of the directory without the passphrase opens nothing.
	_, err = Open(Config{Dir: dir, Listen: "127.0.0.1:0", Clock: clock})
	require.ErrorIs(t, err, ErrPassphraseRequired)
	_, err = Open(Config{Dir: dir, Listen: "127.0.0.1:0", Clock: clock, Passphrase: []byte("wrong")})
	require.ErrorIs(t, err, ErrPassphraseRequired)
	mk, _ := os.ReadFile(filepath.Join(dir, fileMasterKey))
	assert.NotContains(t, string(mk), `"key"`)

	e2 := startEnvIn(t, dir, clock, pass("correct horse"))
	assert.Equal(t, tenant, e2.s.TenantID())
	kid := strings.Replace(kb.Key.Kid, oldBase, e2.s.BaseURL(), 1)
	_, got, err := e2.admin.UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
	require.NoError(t, err)
	assert.Equal(t, dek, got)
	// The audit log continues its sequence across restarts.
	recs, err := e2.admin.Audit(bg, 0, "", 0)
	require.NoError(t, err)
	for i, r := range recs {
		require.Equal(t, uint64(i+1), r.Seq)
	}
}

func TestAuditRotationKeepsEveryLine(t *testing.T) {
	e := startEnv(t, func(c *Config) { c.AuditMaxBytes = 2048 })
	e.vault("auditvault", "standard")
	const n = 60
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() { _, err := e.admin.ListKeys(bg, "auditvault"); errs <- err }()
	}
	for i := 0; i < n; i++ {
		require.NoError(t, <-errs)
	}
	recs, err := e.admin.Audit(bg, 0, "", 0)
	require.NoError(t, err)
	require.Len(t, recs, n+1)
	for i, r := range recs {
		require.Equal(t, uint64(i+1), r.Seq)
	}
	ents, _ := os.ReadDir(filepath.Join(e.dir, dirAudit))
	// Appends that share one fsync may all land before the rotation they
	// call for, so a burst can fill fewer files than size alone predicts.
	assert.Greater(t, len(ents), 1, "the log rotated")
}
