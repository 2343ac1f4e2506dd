package cli

import (
	"bytes"
	"context"
	"encoding/json"
	ksapi "hostcrypt/keystore/api"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/keystore/auditchain"
	"hostcrypt/keystore/client"
	"hostcrypt/keystore/server"
)

func TestAuditFlagConflicts(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--head", "--verify"}, "not both"},
		{[]string{"--head", "--last", "3"}, "--last selects records"},
		{[]string{"--verify", "--name", "v"}, "--name selects records"},
		{[]string{"--since-head", "1:ab"}, "goes with --verify"},
		{[]string{"--head", "--since-head", "1:ab"}, "goes with --verify"},
		{[]string{"--dir", "x"}, "goes with --head or --verify"},
		{[]string{"--last", "5", "--limit", "5"}, "not both"},
		{[]string{"--last", "0"}, "out of range"},
		{[]string{"--last", "1001"}, "out of range"},
		{[]string{"--exclude-op", "a,,b"}, "empty item"},
		{[]string{"--verify", "maybe"}, "unexpected argument"},
		{[]string{"--verify", "--dir", "/nonexistent/x"}, "--dir"},
		{[]string{"--verify", "--dir", t.TempDir()}, "holds no audit files"},
		{[]string{"--verify", "--since-head", "12", "--dir", "."}, "SEQ:HASH"},
	}
	for _, c := range cases {
		_, _, err := runCLI(t, nil, append([]string{"keyvault", "audit"}, c.args...)...)
		require.Error(t, err, "%v", c.args)
		assert.Contains(t, err.Error(), c.want, "%v", c.args)
	}
}

func TestSwitchArgsAndCells(t *testing.T) {
	assert.Equal(t, []string{"--head=true", "--x", "true"}, switchArgs([]string{"--head", "true", "--x", "true"}, "head"))
	assert.Equal(t, []string{"--verify", "--dir", "d"}, switchArgs([]string{"--verify", "--dir", "d"}, "verify"))
	assert.Equal(t, `vault\x1b[31m\x07`, cell("vault\x1b[31m\x07"))
	assert.Equal(t, "plain-vault", cell("plain-vault"))
}

// writeTestLog writes a chained audit log of n records into dir/audit.
func writeTestLog(t *testing.T, dir string, n int) auditchain.Head {
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "audit"), 0o700))
	var buf bytes.Buffer
	var prev auditchain.Hash
	buf.Write(auditchain.CheckpointLine(auditchain.Head{}, time.Now()))
	buf.WriteByte('\n')
	for seq := 1; seq <= n; seq++ {
		rec, _ := json.Marshal(ksapi.AuditRecord{Seq: uint64(seq), OperationName: "KeyGet", ResultCode: 200, RequestID: "r"})
		line, h := auditchain.Seal(prev, rec)
		buf.Write(line)
		buf.WriteByte('\n')
		prev = h
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "audit", auditchain.Current), buf.Bytes(), 0o600))
	return auditchain.Head{Seq: uint64(n), Hash: prev}
}

// TestAuditVerifyOffline: --dir verifies a copy of the key store's
// directory without the key store, and locates a change.
func TestAuditVerifyOffline(t *testing.T) {
	dir := t.TempDir()
	head := writeTestLog(t, dir, 6)
	out, _, err := runCLI(t, nil, "keyvault", "audit", "--head", "--dir", dir)
	require.NoError(t, err)
	assert.Equal(t, head.String()+"\n", out)
	out, _, err = runCLI(t, nil, "keyvault", "audit", "--verify", "--dir", filepath.Join(dir, "audit"), "--since-head", head.String())
	require.NoError(t, err)
	assert.Contains(t, out, "audit log verified: 6 lines in 1 files")
	assert.Contains(t, out, "the saved head "+head.String())

	path := filepath.Join(dir, "audit", auditchain.Current)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := bytes.Split(data, []byte("\n"))
	lines[3] = bytes.Replace(lines[3], []byte(`"resultCode":200`), []byte(`"resultCode":201`), 1)
	require.NoError(t, os.WriteFile(path, bytes.Join(lines, []byte("\n")), 0o600))
	out, _, err = runCLI(t, nil, "-o", "json", "keyvault", "audit", "--verify", "true", "--dir", dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "audit log altered: audit.log line 4")
	var rep ksapi.AuditVerification
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	require.NotNil(t, rep.Problem)
	assert.Equal(t, 4, rep.Problem.Line)
	assert.False(t, rep.OK)
}

// TestAuditCommandsAgainstKeystore runs the audit verbs against a real key
// store over TLS: --last, the host's polling hidden by default and shown
// with --polling, --exclude-op, --head and --verify [--since-head].
func TestAuditCommandsAgainstKeystore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ks")
	s, err := server.Open(server.Config{Dir: dir, Listen: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), TickInterval: time.Hour})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, s.Shutdown(ctx))
		require.NoError(t, <-done)
	})
	env := map[string]string{
		"HOSTCRYPT_KEYSTORE":    s.BaseURL(),
		"HOSTCRYPT_KEYSTORE_CA": filepath.Join(dir, "ca.pem"),
		"HOSTCRYPT_TOKEN_FILE":  filepath.Join(dir, "admin.token"),
	}
	platform, err := client.New(s.BaseURL(), filepath.Join(dir, "ca.pem"), filepath.Join(dir, "platform.token"))
	require.NoError(t, err)
	defer platform.Close()
	ctx := context.Background()
	_, _, err = runCLI(t, env, "keyvault", "create", "--name", "auditvault")
	require.NoError(t, err)
	for i := 0; i < 6; i++ {
		_, err := platform.Events(ctx, 0, 0)
		require.NoError(t, err)
	}
	_, _, err = runCLI(t, env, "key", "list", "--vault-name", "auditvault")
	require.NoError(t, err)

	out, errOut, err := runCLI(t, env, "keyvault", "audit")
	require.NoError(t, err)
	assert.NotContains(t, out, "EventsRead")
	assert.Contains(t, errOut, "6 lines of the host's own event polling not shown; --polling shows them")
	out, errOut, err = runCLI(t, env, "keyvault", "audit", "--polling")
	require.NoError(t, err)
	assert.Equal(t, 6, strings.Count(out, "EventsRead"))
	assert.Empty(t, errOut)

	var recs []ksapi.AuditRecord
	out, _, err = runCLI(t, env, "-o", "json", "keyvault", "audit", "--last", "2", "--exclude-op", "AuditRead")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(out), &recs))
	require.Len(t, recs, 2)
	assert.Equal(t, "VaultCreate", recs[0].OperationName, "the host's polling in between is hidden")
	assert.Equal(t, "KeyList", recs[1].OperationName)

	head, _, err := runCLI(t, env, "keyvault", "audit", "--head")
	require.NoError(t, err)
	h, err := auditchain.ParseHead(head)
	require.NoError(t, err, head)
	out, _, err = runCLI(t, env, "keyvault", "audit", "--verify", "--since-head", strings.TrimSpace(head))
	require.NoError(t, err)
	assert.Contains(t, out, "audit log verified")
	assert.Contains(t, out, "the saved head "+h.String())
	out, _, err = runCLI(t, env, "-o", "json", "keyvault", "audit", "--head")
	require.NoError(t, err)
	var hj ksapi.AuditHead
	require.NoError(t, json.Unmarshal([]byte(out), &hj))
	assert.Greater(t, hj.Seq, h.Seq, "the head moved with the calls since")
}
