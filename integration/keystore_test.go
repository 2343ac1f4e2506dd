package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	ksapi "hostcrypt/keystore/api"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/keystore/client"
)

type kb struct {
	Key struct {
		Kid string `json:"kid"`
		Kty string `json:"kty"`
		D   string `json:"d"`
	} `json:"key"`
	Attributes struct {
		Enabled *bool  `json:"enabled"`
		EXP     *int64 `json:"exp"`
	} `json:"attributes"`
}

type opResult struct {
	Kid   string `json:"kid"`
	Value string `json:"value"`
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// TestKeystoreAcceptance drives the real keystored with the real hostcrypt
// CLI through the acceptance flow, following the event stream with
// `hostcrypt events` while it runs.
func TestKeystoreAcceptance(t *testing.T) {
	keystored, hostcrypt := bin(t, "keystored"), bin(t, "hostcrypt")
	dir := filepath.Join(t.TempDir(), "ks")
	p := startKeystored(t, keystored, dir)
	admin := p.cli(hostcrypt, filepath.Join(dir, "admin.token"))
	platform := p.cli(hostcrypt, filepath.Join(dir, "platform.token"))

	// Follow the event stream for the whole flow.
	follow := exec.Command(hostcrypt, "-o", "json", "events", "--wait", "5s")
	follow.Env = append(os.Environ(), "HOSTCRYPT_KEYSTORE="+p.url, "HOSTCRYPT_KEYSTORE_CA="+filepath.Join(dir, "ca.pem"), "HOSTCRYPT_TOKEN_FILE="+filepath.Join(dir, "admin.token"))
	followOut, err := follow.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, follow.Start())
	t.Cleanup(func() { follow.Process.Kill(); follow.Wait() })
	streamed := make(chan ksapi.Event, 100)
	go func() {
		sc := bufio.NewScanner(followOut)
		for sc.Scan() {
			var ev ksapi.Event
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				streamed <- ev
			}
		}
		close(streamed)
	}()

	// Create a premium vault and an RSA-HSM 3072 key.
	admin.ok(nil, "keyvault", "create", "--name", "accvault", "--sku", "premium", "--location", "westeurope")
	var key kb
	admin.ok(&key, "key", "create", "--vault-name", "accvault", "--name", "cmk", "--kty", "RSA-HSM", "--size", "3072")
	require.Equal(t, "RSA-HSM", key.Key.Kty)
	require.Empty(t, key.Key.D)
	kid1 := key.Key.Kid
	require.True(t, strings.HasPrefix(kid1, p.url+"/vaults/accvault/keys/cmk/"), kid1)

	// The platform creates an identity; the admin grants it get/wrapKey/unwrapKey.
	idToken := filepath.Join(t.TempDir(), "id.token")
	var ident ksapi.Identity
	platform.ok(&ident, "identity", "create", "--type", "SystemAssigned", "--token-out", idToken)
	require.Empty(t, ident.Token, "the token went to the file")
	admin.ok(nil, "keyvault", "set-policy", "--name", "accvault", "--object-id", ident.PrincipalID, "--key-permissions", "get,wrapKey,unwrapKey")
	id := p.cli(hostcrypt, idToken)

	// Wrap and unwrap a 32-byte key as the identity.
	dek := make([]byte, 32)
	rand.Read(dek)
	var wrapped, unwrapped opResult
	id.ok(&wrapped, "key", "wrap", "--id", kid1, "--algorithm", "RSA-OAEP-256", "--value", b64(dek))
	require.Equal(t, kid1, wrapped.Kid)
	id.ok(&unwrapped, "key", "unwrap", "--id", kid1, "--value", wrapped.Value)
	require.Equal(t, b64(dek), unwrapped.Value)

	// Disable: unwrap fails with KeyDisabled; enable: works again.
	admin.ok(nil, "key", "set-attributes", "--id", kid1, "--enabled", "false")
	msg := id.fails("key", "unwrap", "--id", kid1, "--value", wrapped.Value)
	assert.Contains(t, msg, "KeyDisabled")
	assert.Contains(t, msg, "accvault")
	assert.Contains(t, msg, "--enabled true", "the message says what to do")
	admin.ok(nil, "key", "set-attributes", "--vault-name", "accvault", "--name", "cmk", "--enabled=true")
	id.ok(&unwrapped, "key", "unwrap", "--id", kid1, "--value", wrapped.Value)
	require.Equal(t, b64(dek), unwrapped.Value)

	// Rotate: a new version; the old one still unwraps.
	var rotated kb
	admin.ok(&rotated, "key", "rotate", "--vault-name", "accvault", "--name", "cmk")
	kid2 := rotated.Key.Kid
	require.NotEqual(t, kid1, kid2)
	var wrapped2 opResult
	id.ok(&wrapped2, "key", "wrap", "--vault-name", "accvault", "--name", "cmk", "--value", b64(dek))
	require.Equal(t, kid2, wrapped2.Kid, "a version-less wrap uses the current version")
	id.ok(&unwrapped, "key", "unwrap", "--id", kid1, "--value", wrapped.Value)
	require.Equal(t, b64(dek), unwrapped.Value)
	var versions []ksapi.KeyItem
	admin.ok(&versions, "key", "list-versions", "--vault-name", "accvault", "--name", "cmk")
	require.Len(t, versions, 2)
	var shown kb
	admin.ok(&shown, "key", "show", "--id", kid1)
	require.Equal(t, kid1, shown.Key.Kid)

	// exp in the past: wrap refused, unwrap works.
	admin.ok(nil, "key", "set-attributes", "--vault-name", "accvault", "--name", "cmk", "--expires", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339))
	msg = id.fails("key", "wrap", "--id", kid2, "--value", b64(dek))
	assert.Contains(t, msg, "KeyExpired")
	id.ok(&unwrapped, "key", "unwrap", "--id", kid2, "--value", wrapped2.Value)
	require.Equal(t, b64(dek), unwrapped.Value)

	// Revoke the policy: ForbiddenByPolicy.
	admin.ok(nil, "keyvault", "delete-policy", "--name", "accvault", "--object-id", ident.PrincipalID)
	msg = id.fails("key", "unwrap", "--id", kid1, "--value", wrapped.Value)
	assert.Contains(t, msg, "ForbiddenByPolicy")
	assert.Contains(t, msg, "set-policy")

	// Expiry notification and expiry driven by the test-hook clock.
	var soon kb
	exp := time.Now().Add(40 * 24 * time.Hour).UTC().Format(time.RFC3339)
	admin.ok(&soon, "key", "create", "--vault-name", "accvault", "--name", "soon", "--expires", exp)
	hooks, err := client.New(p.url, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	defer hooks.Close()
	ctx := context.Background()
	require.NoError(t, hooks.AdvanceClock(ctx, 11*24*time.Hour))
	require.NoError(t, hooks.AdvanceClock(ctx, 30*24*time.Hour))
	// A user of the daemon cannot move the clock without the admin token.
	idc, err := client.New(p.url, filepath.Join(dir, "ca.pem"), idToken)
	require.NoError(t, err)
	defer idc.Close()
	require.Error(t, idc.AdvanceClock(ctx, time.Hour))

	// The event stream showed each event, in order. Setting exp in the
	// past on the current version also raises KeyExpired for it at the
	// scheduler's next pass, whose moment the test does not fix: it is
	// checked apart from the ordered list.
	want := []string{"KeyNewVersionCreated", "VaultAccessPolicyChanged", "KeyDisabled", "KeyEnabled", "KeyNewVersionCreated", "VaultAccessPolicyChanged", "KeyNewVersionCreated", "KeyNearExpiry", "KeyExpired"}
	var got []ksapi.Event
	var cmkExpired *ksapi.Event
	var last uint64
	timeout := time.After(30 * time.Second)
	for len(got) < len(want) || cmkExpired == nil {
		select {
		case ev, ok := <-streamed:
			require.True(t, ok, "hostcrypt events exited")
			assert.Greater(t, ev.Sequence, last)
			last = ev.Sequence
			if ev.EventType == "Microsoft.KeyVault.KeyExpired" && ev.Data.ObjectName == "cmk" {
				cmkExpired = &ev
				continue
			}
			got = append(got, ev)
		case <-timeout:
			t.Fatalf("event stream delivered %d of %d events (cmk expiry seen: %v)", len(got), len(want), cmkExpired != nil)
		}
	}
	for i, ev := range got {
		assert.Equal(t, "Microsoft.KeyVault."+want[i], ev.EventType, "event %d", i)
		assert.Equal(t, "accvault", ev.Data.VaultName)
	}
	assert.Equal(t, kid2, cmkExpired.Data.Id)
	assert.Equal(t, kid1, got[0].Data.Id)
	assert.Equal(t, "Key", got[0].Data.ObjectType)
	assert.Equal(t, "cmk", got[2].Data.ObjectName)
	assert.Equal(t, kid2, got[4].Data.Id)
	assert.Equal(t, soon.Key.Kid, got[7].Data.Id)
	assert.Equal(t, soon.Key.Kid, got[8].Data.Id)
	require.NotNil(t, got[8].Data.EXP)

	// The audit log shows each step with the right caller and result.
	var recs []ksapi.AuditRecord
	admin.ok(&recs, "keyvault", "audit", "--name", "accvault")
	type step struct {
		op, caller string
		code       int
		errCode    string
		kid        string
	}
	adminID := recs[0].CallerObjectID
	steps := []step{
		{"VaultCreate", adminID, 201, "", ""},
		{"KeyCreate", adminID, 200, "", kid1},
		{"VaultAccessPolicyChange", adminID, 200, "", ""},
		{"KeyWrap", ident.PrincipalID, 200, "", kid1},
		{"KeyUnwrap", ident.PrincipalID, 200, "", kid1},
		{"KeyUpdate", adminID, 200, "", kid1},
		{"KeyUnwrap", ident.PrincipalID, 403, "KeyDisabled", kid1},
		{"KeyUpdate", adminID, 200, "", kid1},
		{"KeyUnwrap", ident.PrincipalID, 200, "", kid1},
		{"KeyRotate", adminID, 200, "", kid2},
		{"KeyWrap", ident.PrincipalID, 200, "", kid2},
		{"KeyUnwrap", ident.PrincipalID, 200, "", kid1},
		{"KeyListVersions", adminID, 200, "", ""},
		{"KeyGet", adminID, 200, "", kid1},
		{"KeyUpdate", adminID, 200, "", kid2},
		{"KeyWrap", ident.PrincipalID, 403, "KeyExpired", kid2},
		{"KeyUnwrap", ident.PrincipalID, 200, "", kid2},
		{"VaultAccessPolicyChange", adminID, 200, "", ""},
		{"KeyUnwrap", ident.PrincipalID, 403, "ForbiddenByPolicy", kid1},
		{"KeyCreate", adminID, 200, "", soon.Key.Kid},
	}
	require.GreaterOrEqual(t, len(recs), len(steps))
	for i, s := range steps {
		r := recs[i]
		assert.Equal(t, s.op, r.OperationName, "audit line %d", i)
		assert.Equal(t, s.caller, r.CallerObjectID, "audit line %d (%s)", i, s.op)
		assert.Equal(t, s.code, r.ResultCode, "audit line %d (%s)", i, s.op)
		assert.Equal(t, s.errCode, r.ErrorCode, "audit line %d (%s)", i, s.op)
		if s.kid != "" {
			assert.Equal(t, s.kid, r.Kid, "audit line %d (%s)", i, s.op)
		}
		assert.NotEmpty(t, r.RequestID)
		assert.Equal(t, "accvault", r.Vault)
	}
	assert.Equal(t, ident.TenantID, recs[3].CallerTenantID)

	// A rotation policy set with the CLI runs by itself when its time comes.
	admin.ok(nil, "key", "create", "--vault-name", "accvault", "--name", "auto")
	var pol ksapi.RotationPolicy
	admin.ok(&pol, "key", "rotation-policy", "--vault-name", "accvault", "--name", "auto", "--rotate-after", "P30D", "--notify-before-expiry", "P10D", "--expiry-time", "P90D")
	require.Len(t, pol.LifetimeActions, 2)
	assert.Contains(t, admin.fails("key", "rotation-policy", "--vault-name", "accvault", "--name", "auto", "--rotate-after", "P1D"), "7 days")
	require.NoError(t, hooks.AdvanceClock(ctx, 31*24*time.Hour))
	var autoVersions []ksapi.KeyItem
	admin.ok(&autoVersions, "key", "list-versions", "--vault-name", "accvault", "--name", "auto")
	require.Len(t, autoVersions, 2, "the policy rotated the key")
	require.NotNil(t, autoVersions[1].Attributes.EXP, "the new version expires per expiryTime")

	// Import an RSA key from a PEM file; it wraps and its private parts never come back.
	pk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(pk)
	require.NoError(t, err)
	pemFile := filepath.Join(t.TempDir(), "key.pem")
	require.NoError(t, os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	var imported kb
	admin.ok(&imported, "key", "import", "--vault-name", "accvault", "--name", "byok", "--pem-file", pemFile, "--hsm", "true")
	assert.Equal(t, "RSA-HSM", imported.Key.Kty)
	assert.Empty(t, imported.Key.D)
	var w3 opResult
	admin.ok(&w3, "key", "wrap", "--id", imported.Key.Kid, "--value", b64(dek))
	raw, err := base64.RawURLEncoding.DecodeString(w3.Value)
	require.NoError(t, err)
	plain, err := rsa.DecryptOAEP(sha256.New(), nil, pk, raw, nil)
	require.NoError(t, err, "the key store wrapped with the imported key")
	assert.Equal(t, dek, plain)

	// The unwrapped key is in no file under DIR and not in the daemon's output.
	p.stop()
	assertNotInDir(t, dir, dek)
	assert.NotContains(t, p.output.String(), b64(dek))
}

// TestKeystoreBadInputCLI: refusals through the CLI are clear, non-zero exits.
func TestKeystoreBadInputCLI(t *testing.T) {
	keystored, hostcrypt := plainKeystored(t), bin(t, "hostcrypt")
	dir := filepath.Join(t.TempDir(), "ks")
	p := startKeystored(t, keystored, dir)
	admin := p.cli(hostcrypt, filepath.Join(dir, "admin.token"))
	platform := p.cli(hostcrypt, filepath.Join(dir, "platform.token"))
	admin.ok(nil, "keyvault", "create", "--name", "stdvault")
	assert.Contains(t, admin.fails("key", "create", "--vault-name", "stdvault", "--name", "k", "--size", "1024"), "2048, 3072 or 4096")
	assert.Contains(t, admin.fails("key", "create", "--vault-name", "stdvault", "--name", "k", "--kty", "RSA-HSM"), "premium")
	assert.Contains(t, admin.fails("key", "show", "--vault-name", "stdvault", "--name", "nokey"), "KeyNotFound")
	assert.Contains(t, admin.fails("key", "show", "--vault-name", "stdvault", "--name", "nokey", "stray"), "unexpected argument")
	assert.Contains(t, admin.fails("key", "set-attributes", "--vault-name", "stdvault", "--name", "k", "--enabled", "maybe"), "true or false")
	bad := filepath.Join(t.TempDir(), "bad.token")
	require.NoError(t, os.WriteFile(bad, []byte("not-a-token\n"), 0o600))
	assert.Contains(t, p.cli(hostcrypt, bad).fails("keyvault", "list"), "Unauthorized")
	// A principal of another tenant is refused.
	other := filepath.Join(t.TempDir(), "other.token")
	platform.ok(nil, "identity", "create", "--type", "User", "--tenant", "other-tenant", "--token-out", other)
	admin.ok(nil, "key", "create", "--vault-name", "stdvault", "--name", "k")
	assert.Contains(t, p.cli(hostcrypt, other).fails("key", "show", "--vault-name", "stdvault", "--name", "k"), "TenantNotAllowed")
	// Without testhooks there is no clock to move.
	c, err := client.New(p.url, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	defer c.Close()
	require.True(t, client.IsNotFound(c.AdvanceClock(context.Background(), time.Hour)))
	p.stop()
}

// TestKeystoreKill9DuringBurst kills the daemon with SIGKILL in the middle of
// a burst of key creations and policy changes; after a restart every
// acknowledged change is there and the state is readable.
func TestKeystoreKill9DuringBurst(t *testing.T) {
	keystored := bin(t, "keystored")
	dir := filepath.Join(t.TempDir(), "ks")
	p := startKeystored(t, keystored, dir)
	admin, err := client.New(p.url, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	ctx := context.Background()
	_, err = admin.CreateVault(ctx, "burstvault", ksapi.VaultCreate{})
	require.NoError(t, err)

	var mu sync.Mutex
	acked := map[string]bool{}    // key names
	policies := map[string]bool{} // object ids
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("k-%d-%d", w, i)
				if _, err := admin.CreateKey(ctx, "burstvault", name, ksapi.KeyCreate{Kty: "RSA", KeySize: ptrTo(2048)}); err == nil {
					mu.Lock()
					acked[name] = true
					mu.Unlock()
				}
				obj := fmt.Sprintf("obj-%d-%d", w, i)
				if _, err := admin.SetPolicy(ctx, "burstvault", obj, []string{"get", "wrapKey"}); err == nil {
					mu.Lock()
					policies[obj] = true
					mu.Unlock()
				}
			}
		}(w)
	}
	// Kill once a good number of changes were acknowledged.
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(acked) + len(policies)
		mu.Unlock()
		if n >= 40 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.kill()
	close(stop)
	wg.Wait()
	admin.Close()

	p2 := startKeystored(t, keystored, dir)
	admin2, err := client.New(p2.url, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	defer admin2.Close()
	keys, err := admin2.ListKeys(ctx, "burstvault")
	require.NoError(t, err)
	have := map[string]bool{}
	for _, k := range keys {
		have[k.Kid[strings.LastIndex(k.Kid, "/")+1:]] = true
	}
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, acked)
	for name := range acked {
		assert.True(t, have[name], "acknowledged key %s lost", name)
	}
	v, err := admin2.GetVault(ctx, "burstvault")
	require.NoError(t, err)
	havePol := map[string]bool{}
	for _, ap := range v.Properties.AccessPolicies {
		havePol[ap.ObjectID] = true
	}
	for obj := range policies {
		assert.True(t, havePol[obj], "acknowledged policy for %s lost", obj)
	}
	// Every key that exists is whole: it wraps and unwraps.
	for _, k := range keys {
		used, w, err := admin2.WrapKey(ctx, k.Kid, ksapi.RSAOAEP256, []byte("0123456789abcdef0123456789abcdef"))
		require.NoError(t, err, k.Kid)
		_, out, err := admin2.UnwrapKey(ctx, used, ksapi.RSAOAEP256, w)
		require.NoError(t, err, k.Kid)
		require.Equal(t, "0123456789abcdef0123456789abcdef", string(out))
	}
	recs, err := admin2.Audit(ctx, 0, "", 1000)
	require.NoError(t, err)
	for i := 1; i < len(recs); i++ {
		require.Equal(t, recs[i-1].Seq+1, recs[i].Seq, "audit sequence has a gap or a torn line")
	}
	p2.stop()
}

// TestKeystorePassphraseBackupRestore: a passphrase-sealed directory cannot
// be started or read without the passphrase; key backup then restore into
// another vault of the same tenant unwraps what the original wrapped; a
// restore into another tenant is refused.
func TestKeystorePassphraseBackupRestore(t *testing.T) {
	keystored, hostcrypt := bin(t, "keystored"), bin(t, "hostcrypt")
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "ks")
	pass := filepath.Join(tmp, "pass")
	require.NoError(t, os.WriteFile(pass, []byte("a long passphrase\n"), 0o600))
	p := startKeystored(t, keystored, dir, "--passphrase-file", pass)
	admin := p.cli(hostcrypt, filepath.Join(dir, "admin.token"))
	admin.ok(nil, "keyvault", "create", "--name", "srcvault", "--sku", "premium")
	var key kb
	admin.ok(&key, "key", "create", "--vault-name", "srcvault", "--name", "k", "--kty", "RSA-HSM")
	dek := make([]byte, 32)
	rand.Read(dek)
	var wrapped opResult
	admin.ok(&wrapped, "key", "wrap", "--id", key.Key.Kid, "--value", b64(dek))
	blob := filepath.Join(tmp, "k.backup")
	admin.ok(nil, "key", "backup", "--vault-name", "srcvault", "--name", "k", "--file", blob)
	p.stop()

	// A copy of DIR alone opens nothing.
	cp := filepath.Join(tmp, "copy")
	require.NoError(t, exec.Command("cp", "-a", dir, cp).Run())
	assert.Contains(t, startKeystoredFails(t, keystored, cp), "passphrase")
	wrong := filepath.Join(tmp, "wrong")
	require.NoError(t, os.WriteFile(wrong, []byte("guess"), 0o600))
	assert.Contains(t, startKeystoredFails(t, keystored, cp, "--passphrase-file", wrong), "passphrase")

	p = startKeystored(t, keystored, dir, "--passphrase-file", pass)
	admin = p.cli(hostcrypt, filepath.Join(dir, "admin.token"))
	admin.ok(nil, "keyvault", "create", "--name", "dstvault", "--sku", "premium")
	var restored kb
	admin.ok(&restored, "key", "restore", "--vault-name", "dstvault", "--file", blob)
	var unwrapped opResult
	admin.ok(&unwrapped, "key", "unwrap", "--id", restored.Key.Kid, "--value", wrapped.Value)
	require.Equal(t, b64(dek), unwrapped.Value)

	// Another tenant's vault refuses the backup.
	otherToken := filepath.Join(tmp, "other.token")
	p.cli(hostcrypt, filepath.Join(dir, "platform.token")).ok(nil, "identity", "create", "--type", "User", "--tenant", "tenant-b", "--token-out", otherToken)
	other := p.cli(hostcrypt, otherToken)
	other.ok(nil, "keyvault", "create", "--name", "othervault", "--sku", "premium")
	assert.Contains(t, other.fails("key", "restore", "--vault-name", "othervault", "--file", blob), "same tenant")
	p.stop()

	assertNotInDir(t, dir, dek)
	assertNotInDir(t, tmp, dek)
}

func assertNotInDir(t *testing.T, dir string, secret []byte) {
	t.Helper()
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || info.Mode()&os.ModeType != 0 {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return nil
		}
		defer f.Close()
		b, _ := io.ReadAll(f)
		for _, form := range [][]byte{secret, []byte(b64(secret)), []byte(base64.StdEncoding.EncodeToString(secret))} {
			assert.NotContains(t, string(b), string(form), "secret found in %s", path)
		}
		return nil
	})
}
