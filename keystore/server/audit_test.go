package server

import (
	"hostcrypt/internal/testenv"
	"hostcrypt/keystore/api"

	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/keystore/auditchain"
	"hostcrypt/keystore/client"
)

// auditDir is the audit directory of e's store.
func (e *env) auditDir() string { return filepath.Join(e.dir, dirAudit) }

func dirSize(t *testing.T, dir string) int64 {
	var n int64
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, de := range ents {
		info, err := de.Info()
		require.NoError(t, err)
		n += info.Size()
	}
	return n
}

func copyDir(t *testing.T, from string) string {
	to := t.TempDir()
	ents, err := os.ReadDir(from)
	require.NoError(t, err)
	for _, de := range ents {
		b, err := os.ReadFile(filepath.Join(from, de.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(to, de.Name()), b, 0o600))
	}
	return to
}

func fileLines(t *testing.T, path string) [][]byte {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	lines, partial := auditchain.Lines(b)
	require.False(t, partial)
	return lines
}

func putLines(t *testing.T, path string, lines [][]byte) {
	require.NoError(t, os.WriteFile(path, append(bytes.Join(lines, []byte("\n")), '\n'), 0o600))
}

// TestAuditChainOnRealLog: the store's own log, rotated several times,
// verifies; the head it reports is its last line; and altering, deleting,
// swapping or truncating lines of it is each detected and located, by an
// offline check of a copy and by the running store.
func TestAuditChainOnRealLog(t *testing.T) {
	e := startEnv(t, func(c *Config) { c.AuditMaxBytes = 4096 })
	e.vault("chainvault", "standard")
	for i := 0; i < 40; i++ {
		_, err := e.admin.ListKeys(bg, "chainvault")
		require.NoError(t, err)
	}
	h, err := e.admin.AuditHead(bg)
	require.NoError(t, err)
	page, err := e.admin.AuditQuery(bg, client.AuditQuery{After: h.Seq - 1, Limit: 1})
	require.NoError(t, err)
	require.Len(t, page.Value, 1)
	assert.Equal(t, h.Seq, page.Value[0].Seq)
	assert.Equal(t, h.Hash, page.Value[0].Hash, "the head is the hash of the last line written")
	assert.Equal(t, fmt.Sprintf("%d:%s", h.Seq, h.Hash), h.Head)

	rep, err := e.admin.AuditVerify(bg, "")
	require.NoError(t, err)
	require.Nil(t, rep.Problem)
	assert.True(t, rep.OK)
	assert.Greater(t, len(rep.Files), 3, "the log rotated")
	rep, err = e.admin.AuditVerify(bg, h.Head)
	require.NoError(t, err)
	assert.True(t, rep.OK)
	assert.Equal(t, h.Head, rep.SinceHead)
	_, err = e.admin.AuditVerify(bg, "12:nothex")
	requireCode(t, err, 400, "BadParameter")
	_, err = e.platform.AuditVerify(bg, "")
	requireCode(t, err, 403, "ForbiddenByPolicy")

	names, err := auditchain.Files(e.auditDir())
	require.NoError(t, err)
	mid := names[1] // a rotated file in the middle
	tamper := func(name string, f func([][]byte) [][]byte) string {
		d := copyDir(t, e.auditDir())
		putLines(t, filepath.Join(d, name), f(fileLines(t, filepath.Join(d, name))))
		return d
	}
	check := func(d, kind, file string, line int) {
		t.Helper()
		r, err := auditchain.Verify(d, auditchain.Options{})
		require.NoError(t, err)
		require.NotNil(t, r.Problem, "%s not detected", kind)
		assert.Equal(t, kind, r.Problem.Kind, r.Problem.Message)
		assert.Equal(t, file, r.Problem.File, r.Problem.Message)
		assert.Equal(t, line, r.Problem.Line, r.Problem.Message)
	}
	check(tamper(mid, func(l [][]byte) [][]byte {
		l[2] = bytes.Replace(l[2], []byte(`"resultCode":200`), []byte(`"resultCode":403`), 1)
		return l
	}), "altered", mid, 3)
	check(tamper(mid, func(l [][]byte) [][]byte { return append(l[:2:2], l[3:]...) }), "removed", mid, 3)
	check(tamper(mid, func(l [][]byte) [][]byte { l[1], l[2] = l[2], l[1]; return l }), "reordered", mid, 2)
	midLines := len(fileLines(t, filepath.Join(e.auditDir(), mid)))
	check(tamper(mid, func(l [][]byte) [][]byte { return l[:len(l)-1] }), "removed", mid, midLines)

	// The running store checks against its own head: a line cut from the
	// end of the current file is found without a saved head.
	cur := filepath.Join(e.auditDir(), auditchain.Current)
	lines := fileLines(t, cur)
	putLines(t, cur, lines[:len(lines)-1])
	rep, err = e.admin.AuditVerify(bg, "")
	require.NoError(t, err)
	require.NotNil(t, rep.Problem)
	assert.Equal(t, "removed", rep.Problem.Kind, rep.Problem.Message)
	assert.Equal(t, auditchain.Current, rep.Problem.File)
	assert.Equal(t, len(lines), rep.Problem.Line)

	// A store restarted on an altered log starts, and reports the change.
	e.stop()
	lines = fileLines(t, filepath.Join(e.auditDir(), mid))
	lines[4] = bytes.Replace(lines[4], []byte(`"operationName":"KeyList"`), []byte(`"operationName":"KeyGet"`), 1)
	putLines(t, filepath.Join(e.auditDir(), mid), lines)
	e2 := startEnvIn(t, e.dir, e.clock)
	rep, err = e2.admin.AuditVerify(bg, "")
	require.NoError(t, err)
	require.NotNil(t, rep.Problem)
	assert.Equal(t, "altered", rep.Problem.Kind)
	assert.Equal(t, mid, rep.Problem.File)
	assert.Equal(t, 5, rep.Problem.Line)
}

// TestAuditSinceHeadCatchesRewrite: a log rewritten without one line
// before a saved head, its chain recomputed, verifies on its own; checked
// against the saved head it does not.
func TestAuditSinceHeadCatchesRewrite(t *testing.T) {
	e := startEnv(t, func(c *Config) { c.AuditMaxBytes = 4096 })
	e.vault("chainvault", "standard")
	for i := 0; i < 20; i++ {
		_, err := e.admin.ListKeys(bg, "chainvault")
		require.NoError(t, err)
	}
	saved, err := e.admin.AuditHead(bg)
	require.NoError(t, err)
	for i := 0; i < 10; i++ {
		_, err := e.admin.ListKeys(bg, "chainvault")
		require.NoError(t, err)
	}
	e.stop()
	rewriteChain(t, e.auditDir(), 3)

	e2 := startEnvIn(t, e.dir, e.clock)
	rep, err := e2.admin.AuditVerify(bg, "")
	require.NoError(t, err)
	require.Nil(t, rep.Problem, "the rewritten chain verifies on its own")
	rep, err = e2.admin.AuditVerify(bg, saved.Head)
	require.NoError(t, err)
	require.NotNil(t, rep.Problem)
	assert.Equal(t, "head-mismatch", rep.Problem.Kind, rep.Problem.Message)
	assert.Equal(t, saved.Seq, rep.Problem.Seq)
}

// rewriteChain does what a forger who can write the audit directory can:
// drops the line with seq drop, renumbers the rest, and recomputes every
// hash and checkpoint, keeping the files' sizes in lines.
func rewriteChain(t *testing.T, dir string, drop uint64) {
	names, err := auditchain.Files(dir)
	require.NoError(t, err)
	var records [][]byte
	var sizes []int
	for _, name := range names {
		lines := fileLines(t, filepath.Join(dir, name))
		sizes = append(sizes, len(lines)-1)
		for _, l := range lines[1:] {
			c, _, ok := auditchain.Split(l)
			require.True(t, ok)
			var r api.AuditRecord
			require.NoError(t, json.Unmarshal(c, &r))
			if r.Seq != drop {
				records = append(records, c)
			}
		}
		require.NoError(t, os.Remove(filepath.Join(dir, name)))
	}
	sizes[len(sizes)-1]--
	var prev auditchain.Hash
	var seq uint64
	for i, n := range sizes {
		out := [][]byte{auditchain.CheckpointLine(auditchain.Head{Seq: seq, Hash: prev}, time.Now())}
		for j := 0; j < n; j++ {
			var r api.AuditRecord
			require.NoError(t, json.Unmarshal(records[seq], &r))
			c := bytes.Replace(records[seq], []byte(fmt.Sprintf(`{"seq":%d,`, r.Seq)), []byte(fmt.Sprintf(`{"seq":%d,`, seq+1)), 1)
			seq++
			line, h := auditchain.Seal(prev, c)
			out = append(out, line)
			prev = h
		}
		name := auditchain.Current
		if i < len(sizes)-1 {
			name = auditchain.RotatedName(seq)
		}
		putLines(t, filepath.Join(dir, name), out)
	}
}

// TestAuditRetentionBySize: the audit files together stay under the size
// cap; what goes is said in a retention line; what stays verifies.
func TestAuditRetentionBySize(t *testing.T) {
	const maxTotal = 16 << 10
	e := startEnv(t, func(c *Config) {
		c.AuditMaxBytes = 2048
		c.AuditMaxTotalBytes = maxTotal
		c.AuditSummaryInterval = time.Hour
	})
	e.vault("retvault", "standard")
	for i := 0; i < 150; i++ {
		_, err := e.admin.ListKeys(bg, "retvault")
		require.NoError(t, err)
	}
	require.NoError(t, e.s.audit.retain())
	// Check the stopped store's files: a running one rotates (and so
	// applies retention) at the check's own requests.
	e.stop()
	size := dirSize(t, e.auditDir())
	assert.LessOrEqual(t, size, int64(maxTotal+1024), "audit files hold %d bytes", size)

	rep, err := auditchain.Verify(e.auditDir(), auditchain.Options{})
	require.NoError(t, err)
	require.Nil(t, rep.Problem)
	assert.Greater(t, rep.FirstSeq, uint64(1), "old lines were removed")
	var last api.AuditRecord
	names, err := auditchain.Files(e.auditDir())
	require.NoError(t, err)
	for _, name := range names {
		for _, l := range fileLines(t, filepath.Join(e.auditDir(), name)) {
			var r api.AuditRecord
			if json.Unmarshal(l, &r) == nil && r.OperationName == "AuditRetention" {
				last = r
			}
		}
	}
	require.NotZero(t, last.Seq, "a retention line says what went")
	assert.Equal(t, rep.FirstSeq, last.RetainedFromSeq)
	assert.Contains(t, last.Message, "--audit-max-size")

	// Removing one more old file by hand is told apart from retention.
	require.NoError(t, os.Remove(filepath.Join(e.auditDir(), names[0])))
	rep, err = auditchain.Verify(e.auditDir(), auditchain.Options{})
	require.NoError(t, err)
	require.NotNil(t, rep.Problem)
	assert.Equal(t, "removed", rep.Problem.Kind)
	assert.Contains(t, rep.Problem.Message, "someone other than the key store")
}

// TestAuditRetentionByAge: files whose newest line is older than the age
// cap go, the current file included once it is old enough to rotate.
func TestAuditRetentionByAge(t *testing.T) {
	e := startEnv(t, func(c *Config) {
		c.AuditMaxBytes = 2048
		c.AuditMaxTotalBytes = -1
		c.AuditMaxAge = 48 * time.Hour
		c.AuditSummaryInterval = time.Hour
	})
	e.vault("agevault", "standard")
	for i := 0; i < 30; i++ {
		_, err := e.admin.ListKeys(bg, "agevault")
		require.NoError(t, err)
	}
	h, err := e.admin.AuditHead(bg)
	require.NoError(t, err)
	require.NoError(t, e.s.audit.retain())
	page, err := e.admin.AuditQuery(bg, client.AuditQuery{})
	require.NoError(t, err)
	assert.Equal(t, uint64(1), page.Value[0].Seq, "nothing is old yet")

	e.clock.Advance(49 * time.Hour)
	require.NoError(t, e.s.audit.retain())
	page, err = e.admin.AuditQuery(bg, client.AuditQuery{})
	require.NoError(t, err)
	require.NotEmpty(t, page.Value)
	assert.Equal(t, "AuditRetention", page.Value[0].OperationName, "every line older than the cap went")
	assert.Greater(t, page.Value[0].Seq, h.Seq)
	assert.Contains(t, page.Value[0].Message, "--audit-max-age")
	rep, err := e.admin.AuditVerify(bg, "")
	require.NoError(t, err)
	require.Nil(t, rep.Problem)
	// The saved head went with its line; verification says it cannot check it.
	rep, err = e.admin.AuditVerify(bg, h.Head)
	require.NoError(t, err)
	require.NotNil(t, rep.Problem)
	assert.Equal(t, "head-unavailable", rep.Problem.Kind)
}

// TestFailedAuthenticationsThrottled sends 2000 requests with a bad token
// over one TLS connection, with the platform's own calls in between: the
// bad ones beyond the allowance are answered 429 and not audited one by
// one, the audit grows by a bounded number of lines, and every platform
// call succeeds.
func TestFailedAuthenticationsThrottled(t *testing.T) {
	e := startEnv(t, func(c *Config) { c.AuditSummaryInterval = time.Hour })
	e.vault("authvault", "standard")
	before := dirSize(t, e.auditDir())
	h0, err := e.admin.AuditHead(bg)
	require.NoError(t, err)
	bad := e.clientWithToken("not-a-token")
	codes := map[int]int{}
	start := time.Now()
	platformCalls := 0
	for i := 0; i < 2000; i++ {
		_, err := bad.ListVaults(bg)
		var ce *client.Error
		require.ErrorAs(t, err, &ce)
		codes[ce.Status]++
		if ce.Status == http.StatusTooManyRequests {
			assert.Contains(t, ce.Message, "not valid")
		}
		if i%100 == 0 {
			_, err := e.platform.Events(bg, 0, 0)
			require.NoError(t, err, "the host's own call was refused")
			platformCalls++
		}
	}
	elapsed := time.Since(start)
	e.s.flushAuthSummaries()
	allowance := 10 + int(elapsed/(10*time.Second)) + 1
	assert.LessOrEqual(t, codes[401], allowance)
	assert.Equal(t, 2000, codes[401]+codes[429])

	page, err := e.admin.AuditQuery(bg, client.AuditQuery{After: h0.Seq})
	require.NoError(t, err)
	byOp := map[string]int{}
	suppressed := 0
	for _, r := range page.Value {
		byOp[r.OperationName]++
		if r.OperationName == "AuthenticationThrottled" {
			suppressed += r.Count
			assert.Contains(t, r.Message, "more failed authentications from 127.0.0.1 suppressed")
		}
	}
	assert.Equal(t, codes[401], byOp["VaultList"], "each allowed failure audited")
	assert.Equal(t, codes[429], suppressed, "every throttled failure counted in a summary")
	assert.LessOrEqual(t, byOp["AuthenticationThrottled"], codes[401]+1)
	assert.Equal(t, platformCalls, byOp["EventsRead"])
	growth := dirSize(t, e.auditDir()) - before
	assert.Less(t, growth, int64(len(page.Value)*1024))
	assert.Less(t, len(page.Value), 2*allowance+platformCalls+2)
	t.Logf("2000 bad-token requests in %s: %d answered 401, %d throttled (429); the audit grew by %d lines, %d bytes",
		elapsed.Round(time.Millisecond), codes[401], codes[429], len(page.Value), growth)
}

// TestAuditLineBounded: a request cannot make its audit line long by a
// long vault or key name in its path.
func TestAuditLineBounded(t *testing.T) {
	e := startEnv(t)
	long := strings.Repeat("v", 20000)
	_, err := e.admin.GetKey(bg, long, strings.Repeat("k", 20000), "")
	requireCode(t, err, 404, "VaultNotFound")
	page, err := e.admin.AuditQuery(bg, client.AuditQuery{Last: 1})
	require.NoError(t, err)
	raw, _ := json.Marshal(page.Value[0])
	assert.Less(t, len(raw), 2048)
	assert.Contains(t, page.Value[0].Vault, "(20000 bytes)")
}

// TestAuditQueryLastAndPolling: the newest N records, without the host's
// event polling or named operations.
func TestAuditQueryLastAndPolling(t *testing.T) {
	e := startEnv(t, func(c *Config) { c.AuditMaxBytes = 4096 })
	e.vault("qvault", "standard")
	for i := 0; i < 30; i++ {
		_, err := e.platform.Events(bg, 0, 0)
		require.NoError(t, err)
		if i%3 == 0 {
			_, err = e.admin.ListKeys(bg, "qvault")
			require.NoError(t, err)
		}
	}
	_, err := e.admin.Events(bg, 0, 0) // an administrator's read is not the host's polling
	require.NoError(t, err)

	// A query's own line is written after it answers: each query sees the
	// ones before it.
	last, err := e.admin.AuditQuery(bg, client.AuditQuery{Last: 5})
	require.NoError(t, err)
	require.Len(t, last.Value, 5)
	all, err := e.admin.AuditQuery(bg, client.AuditQuery{})
	require.NoError(t, err)
	n := len(all.Value)
	assert.Equal(t, all.Value[n-6:n-1], last.Value, "the newest five, oldest first")

	quiet, err := e.admin.AuditQuery(bg, client.AuditQuery{HidePolling: true})
	require.NoError(t, err)
	assert.Equal(t, 30, quiet.HiddenPolling)
	assert.Len(t, quiet.Value, n+1-30)
	adminReads := 0
	for _, r := range quiet.Value {
		if r.OperationName == "EventsRead" {
			assert.Equal(t, "Admin", r.CallerType)
			adminReads++
		}
	}
	assert.Equal(t, 1, adminReads)
	lastQuiet, err := e.admin.AuditQuery(bg, client.AuditQuery{Last: 4, HidePolling: true, ExcludeOps: []string{"AuditRead"}})
	require.NoError(t, err)
	require.Len(t, lastQuiet.Value, 4)
	for _, r := range lastQuiet.Value {
		assert.NotEqual(t, "AuditRead", r.OperationName)
		assert.False(t, r.OperationName == "EventsRead" && r.CallerType == "Platform")
	}
	assert.Equal(t, "EventsRead", lastQuiet.Value[3].OperationName)

	// Both limit and last, or a last out of range, are refused.
	for _, q := range []string{"last=5&limit=5", "last=0", "last=1001", "polling=maybe"} {
		status, body := rawGet(t, e, "/audit?"+q)
		assert.Equal(t, 400, status, "%s: %s", q, body)
	}
}

func rawGet(t *testing.T, e *env, path string) (int, string) {
	ca, err := os.ReadFile(filepath.Join(e.dir, fileCA))
	require.NoError(t, err)
	tok, err := os.ReadFile(filepath.Join(e.dir, fileAdminToken))
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, e.s.BaseURL()+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := (&http.Client{Transport: tr}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestAuditUpgradeFromUnchainedLog: a log written before the chain existed
// is kept as a rotated file; the chain starts after it, its sequence
// numbers continue, and verification says how many lines it cannot check.
func TestAuditUpgradeFromUnchainedLog(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ks")
	require.NoError(t, os.MkdirAll(filepath.Join(dir, dirAudit), 0o700))
	var old bytes.Buffer
	for seq := 1; seq <= 7; seq++ {
		fmt.Fprintf(&old, `{"seq":%d,"time":"2029-12-31T00:00:00Z","operationName":"KeyGet","callerObjectId":"x","callerTenantId":"t","callerType":"Admin","resultCode":200,"resultType":"Success","requestId":"r","durationMs":1}`+"\n", seq)
	}
	old.WriteString(`{"seq":8,"time":"2029-12`) // cut short by a crash
	require.NoError(t, os.WriteFile(filepath.Join(dir, dirAudit, auditchain.Current), old.Bytes(), 0o600))
	e := startEnvIn(t, dir, testenv.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)))
	_, err := e.admin.ListVaults(bg)
	require.NoError(t, err)
	page, err := e.admin.AuditQuery(bg, client.AuditQuery{})
	require.NoError(t, err)
	require.Len(t, page.Value, 8)
	assert.Equal(t, uint64(8), page.Value[7].Seq, "the sequence continues after the old lines")
	assert.Empty(t, page.Value[6].Hash)
	assert.NotEmpty(t, page.Value[7].Hash)
	rep, err := e.admin.AuditVerify(bg, "")
	require.NoError(t, err)
	require.Nil(t, rep.Problem)
	assert.Equal(t, 7, rep.Unchained)
}

// TestAuditGarbageCurrentFileRefused: a current file that holds no records
// after the rotated files' is not renamed over one of them; the store
// refuses to start and says what to do.
func TestAuditGarbageCurrentFileRefused(t *testing.T) {
	e := startEnv(t, func(c *Config) { c.AuditMaxBytes = 2048 })
	for i := 0; i < 20; i++ {
		_, err := e.admin.ListVaults(bg)
		require.NoError(t, err)
	}
	e.stop()
	before := readAll(t, e.auditDir())
	require.NoError(t, os.WriteFile(filepath.Join(e.auditDir(), auditchain.Current), []byte("not a log\n"), 0o600))
	_, err := Open(Config{Dir: e.dir, Listen: "127.0.0.1:0", Clock: e.clock})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "move it out of")
	after := readAll(t, e.auditDir())
	for name, b := range before {
		if name != "/"+auditchain.Current {
			assert.Equal(t, b, after[name], "%s was changed", name)
		}
	}
}
