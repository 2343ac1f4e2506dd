package integration

import (
	"bytes"
	"context"
	ksapi "hostcrypt/keystore/api"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/keystore/client"
)

func dirBytes(t *testing.T, dir string) int64 {
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var n int64
	for _, e := range ents {
		info, err := e.Info()
		require.NoError(t, err)
		n += info.Size()
	}
	return n
}

// TestKeystoreAbuseAndAuditChain drives the real keystored and CLI as an
// attacker and a clumsy operator would: out-of-range times, a vault named
// PLATFORM, a tenant id that is a path, a webhook at the metadata address,
// a flood of bad tokens; then saves the audit head, verifies the chain
// through the key store and offline, and finds a line altered on disk.
func TestKeystoreAbuseAndAuditChain(t *testing.T) {
	keystored, hostcrypt := bin(t, "keystored"), bin(t, "hostcrypt")
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "ks")

	// Flags that do not parse stop the daemon before it starts.
	assert.Contains(t, startKeystoredFails(t, keystored, filepath.Join(tmp, "bad1"), "--audit-max-size", "1GB"), "binary units")
	assert.Contains(t, startKeystoredFails(t, keystored, filepath.Join(tmp, "bad2"), "--audit-max-age", "soon"), "90d")
	assert.Contains(t, startKeystoredFails(t, keystored, filepath.Join(tmp, "bad3"), "--webhook-allow", "ftp://x"), "--webhook-allow")

	var hooked atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hooked.Add(1) }))
	t.Cleanup(hook.Close)
	p := startKeystored(t, keystored, dir, "--webhook-allow", hook.URL+"/hooks/", "--audit-max-size", "64MiB", "--audit-max-age", "30d")
	admin := p.cli(hostcrypt, filepath.Join(dir, "admin.token"))
	platform := p.cli(hostcrypt, filepath.Join(dir, "platform.token"))
	ctx := context.Background()
	ac, err := client.New(p.url, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	defer ac.Close()

	admin.ok(nil, "keyvault", "create", "--name", "abusevault")
	assert.Contains(t, admin.fails("keyvault", "create", "--name", "PLATFORM"), "reserved")
	assert.Contains(t, platform.fails("identity", "create", "--type", "User", "--tenant", "../../x"), "letters, digits and hyphens")
	admin.ok(nil, "key", "create", "--vault-name", "abusevault", "--name", "k")
	_, err = ac.UpdateKey(ctx, "abusevault", "k", "", ksapi.KeyUpdate{Attributes: &ksapi.KeyAttributes{EXP: ptrTo(int64(-99999999999999))}})
	var ce *client.Error
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 400, ce.Status)
	assert.Contains(t, ce.Message, "attributes.exp")

	_, err = ac.CreateWebhook(ctx, "http://169.254.169.254/latest", "")
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 400, ce.Status)
	assert.Contains(t, ce.Message, "--webhook-allow")
	_, err = ac.CreateWebhook(ctx, hook.URL+"/hooks/k", "abusevault")
	require.NoError(t, err)
	admin.ok(nil, "key", "rotate", "--vault-name", "abusevault", "--name", "k")
	deadline := time.Now().Add(20 * time.Second)
	for hooked.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	assert.NotZero(t, hooked.Load(), "the allowed webhook got the rotation's event")

	// A flood of bad tokens: throttled, and the audit barely grows.
	auditDir := filepath.Join(dir, "audit")
	before := dirBytes(t, auditDir)
	bad, err := client.NewWithToken(p.url, filepath.Join(dir, "ca.pem"), "not-a-token")
	require.NoError(t, err)
	throttled := 0
	for i := 0; i < 500; i++ {
		_, err := bad.ListVaults(ctx)
		require.ErrorAs(t, err, &ce)
		if ce.Status == http.StatusTooManyRequests {
			throttled++
		}
	}
	bad.Close()
	growth := dirBytes(t, auditDir) - before
	assert.GreaterOrEqual(t, throttled, 480)
	assert.Less(t, growth, int64(16<<10), "500 bad-token requests grew the audit by %d bytes", growth)
	t.Logf("500 bad-token requests to keystored: %d throttled, audit grew %d bytes", throttled, growth)

	// Head, verify, verify against the head.
	head, stderr, code := admin.run("keyvault", "audit", "--head")
	require.Equal(t, 0, code, stderr)
	head = strings.TrimSpace(head)
	admin.ok(nil, "key", "list", "--vault-name", "abusevault")
	out, stderr, code := admin.run("keyvault", "audit", "--verify", "--since-head", head)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "audit log verified")
	out, _, code = admin.run("keyvault", "audit", "--last", "3")
	require.Equal(t, 0, code)
	assert.Equal(t, 4, len(strings.Split(strings.TrimSpace(out), "\n")), "a header and three lines: %s", out)

	// Alter one line of the stopped store's log: found offline and by the
	// restarted store, with the file and line.
	p.stop()
	path := filepath.Join(auditDir, "audit.log")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := bytes.Split(data, []byte("\n"))
	require.Contains(t, string(lines[1]), `"operationName":"VaultCreate"`)
	lines[1] = bytes.Replace(lines[1], []byte(`"resultCode":201`), []byte(`"resultCode":409`), 1)
	require.NoError(t, os.WriteFile(path, bytes.Join(lines, []byte("\n")), 0o600))
	msg := admin.fails("keyvault", "audit", "--verify", "--dir", dir)
	assert.Contains(t, msg, "audit log altered: audit.log line 2")
	p2 := startKeystored(t, keystored, dir)
	admin2 := p2.cli(hostcrypt, filepath.Join(dir, "admin.token"))
	assert.Contains(t, admin2.fails("keyvault", "audit", "--verify", "--since-head", head), "audit.log line 2")
	p2.stop()
}

func ptrTo[T any](v T) *T { return &v }
