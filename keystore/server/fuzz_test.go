package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hostcrypt/internal/testenv"
	"io"
	"log/slog"
	"math"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// FuzzHandlers sends arbitrary methods, paths, bodies and tokens to the
// request handlers: every answer must be a JSON envelope below 500,
// without a panic or a hang.
func FuzzHandlers(f *testing.F) {
	fz := newFuzzServer(f)
	admin, do := fz.admin, fz.do

	seeds := []struct {
		method, path, body string
	}{
		{"POST", "/vaults/fuzzvault/keys/k/create", `{"kty":"RSA-HSM","key_size":2048}`},
		{"POST", "/vaults/fuzzvault/keys/k/wrapkey", `{"alg":"RSA-OAEP-256","value":"AAAA"}`},
		{"POST", "/vaults/fuzzvault/keys/k/unwrapkey", `{"alg":"RSA-OAEP","value":"AAAA"}`},
		{"PATCH", "/vaults/fuzzvault/keys/k", `{"attributes":{"enabled":false,"exp":1}}`},
		{"PUT", "/vaults/fuzzvault/keys/k/rotationpolicy", `{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P30D"},"action":{"type":"Rotate"}}],"attributes":{"expiryTime":"P90D"}}`},
		{"PUT", "/vaults/fuzzvault/accessPolicies/x", `{"permissions":{"keys":["get"]}}`},
		{"PUT", "/vaults/newvault", `{"location":"x","properties":{"softDeleteRetentionInDays":7}}`},
		{"PUT", "/vaults/fuzzvault/keys/imp", `{"key":{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQ","p":"Aw","q":"BQ"}}`},
		{"POST", "/vaults/fuzzvault/keys/restore", `{"value":"eyJmb3JtYXQiOiJob3N0Y3J5cHQta2V5LWJhY2t1cC8xIn0"}`},
		{"DELETE", "/vaults/fuzzvault/keys/k", ``},
		{"POST", "/vaults/fuzzvault/deletedkeys/k/recover", ``},
		{"GET", "/events?after=0&wait=1ms", ``},
		{"GET", "/audit?after=18446744073709551615", ``},
		{"POST", "/identities", `{"type":"User","tenantId":"t"}`},
		{"POST", "/webhooks", `{"url":"ftp://x"}`},
		{"GET", "/vaults/fuzzvault/keys/k/versions", `[]`},
		// Times and durations at and beyond what can be stored.
		{"PATCH", "/vaults/fuzzvault/keys/k", `{"attributes":{"exp":-99999999999999}}`},
		{"PATCH", "/vaults/fuzzvault/keys/k", `{"attributes":{"nbf":9223372036854775807}}`},
		{"POST", "/vaults/fuzzvault/keys/t/create", `{"kty":"RSA","attributes":{"exp":253402300800}}`},
		{"PUT", "/vaults/fuzzvault/keys/k/rotationpolicy", `{"attributes":{"expiryTime":"P100000Y"}}`},
		{"POST", "/vaults/fuzzvault/keys/k/rotate", ``},
		// Names that only differ in case from reserved ones, ids that are paths.
		{"PUT", "/vaults/PLATFORM", `{}`},
		{"POST", "/identities", `{"type":"User","tenantId":"../../x"}`},
		{"PUT", "/vaults/fuzzvault/accessPolicies/..%2F..%2Fx", `{"permissions":{"keys":["get"]}}`},
		{"POST", "/webhooks", `{"url":"http://169.254.169.254/latest"}`},
		{"POST", "/webhooks", `{"url":"https://hooks.example/a/../b","vault":"../x"}`},
		// The audit log's reads, head and verification.
		{"GET", "/audit?last=5&excludeOp=EventsRead,,x&polling=false", ``},
		{"GET", "/audit?last=18446744073709551615", ``},
		{"GET", "/audit/head", ``},
		{"GET", "/audit/verify?sinceHead=1:00", ``},
		{"GET", "/audit/verify?sinceHead=18446744073709551615:" + strings.Repeat("ab", 32), ``},
	}
	for _, sd := range seeds {
		f.Add(sd.method, sd.path, []byte(sd.body), true)
	}
	f.Add("GET", "/vaults", []byte(nil), false)
	methods := map[string]bool{"GET": true, "PUT": true, "POST": true, "PATCH": true, "DELETE": true}
	f.Fuzz(func(t *testing.T, method, path string, body []byte, withToken bool) {
		if !methods[method] || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#") {
			return
		}
		if _, err := url.ParseRequestURI(path); err != nil {
			return // not a request a client can send
		}
		if strings.Contains(path, "wait=") {
			return // long polls are bounded by their wait, not worth fuzzing time
		}
		if bytes.Contains(body, []byte("4096")) || bytes.Contains(body, []byte("3072")) {
			return // large RSA generation only slows the fuzzer down
		}
		token := ""
		if withToken {
			token = admin
		}
		fz.check(t, method, path, body, do(method, path, token, body))
		// Whatever the request changed, what it left must still read and
		// be worked on by the scheduler: no stored value may poison later
		// requests.
		fz.checkStateReadable(t)
	})
}

// FuzzKeyTimes drives every path a time comes in (create, import-like
// update, rotation policy, rotation, scheduler) with arbitrary Unix times
// and ISO durations: nothing may answer 500 or leave a key that no longer
// reads.
func FuzzKeyTimes(f *testing.F) {
	fz := newFuzzServer(f)
	for _, v := range []int64{-99999999999999, math.MaxInt64, math.MinInt64, -1, 0, 253402300799, 253402300800, 1893456000} {
		f.Add(v, v, "P90D")
	}
	f.Add(int64(0), int64(253402300799), "P100000Y")
	f.Add(int64(1), int64(2), "P99999D")
	f.Add(int64(1), int64(2), "PT2562047H")
	f.Fuzz(func(t *testing.T, nbf, exp int64, expiry string) {
		attrs := fmt.Sprintf(`{"attributes":{"nbf":%d,"exp":%d}}`, nbf, exp)
		fz.check(t, "PATCH", "/vaults/fuzzvault/keys/k", []byte(attrs), fz.do("PATCH", "/vaults/fuzzvault/keys/k", fz.admin, []byte(attrs)))
		body := []byte(fmt.Sprintf(`{"kty":"RSA","attributes":{"exp":%d}}`, exp))
		fz.check(t, "POST", "/vaults/fuzzvault/keys/t/create", body, fz.do("POST", "/vaults/fuzzvault/keys/t/create", fz.admin, body))
		pol, _ := json.Marshal(map[string]any{
			"lifetimeActions": []any{map[string]any{"trigger": map[string]string{"timeBeforeExpiry": expiry}, "action": map[string]string{"type": "Notify"}}},
			"attributes":      map[string]string{"expiryTime": expiry},
		})
		fz.check(t, "PUT", "rotationpolicy", pol, fz.do("PUT", "/vaults/fuzzvault/keys/t/rotationpolicy", fz.admin, pol))
		fz.check(t, "POST", "rotate", nil, fz.do("POST", "/vaults/fuzzvault/keys/t/rotate", fz.admin, nil))
		fz.checkStateReadable(t)
	})
}

type fuzzServer struct {
	s     *Server
	admin string
	do    func(method, path, token string, body []byte) *httptest.ResponseRecorder
}

// newFuzzServer opens a key store for a fuzz target with a premium vault
// fuzzvault holding an RSA key k.
func newFuzzServer(f *testing.F) *fuzzServer {
	dir := filepath.Join(f.TempDir(), "ks")
	s, err := Open(Config{Dir: dir, Listen: "127.0.0.1:0", Clock: testenv.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(f, err)
	f.Cleanup(func() { s.ln.Close(); s.cancel(); s.closeState() })
	h := s.http.Handler
	tok, _ := os.ReadFile(filepath.Join(dir, fileAdminToken))
	fz := &fuzzServer{s: s, admin: strings.TrimSpace(string(tok))}
	fz.do = func(method, path, token string, body []byte) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, bytes.NewReader(body))
		req.RemoteAddr = "192.0.2.1:1234"
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	require.Equal(f, 201, fz.do("PUT", "/vaults/fuzzvault", fz.admin, []byte(`{"properties":{"sku":{"name":"premium"}}}`)).Code)
	require.Equal(f, 200, fz.do("POST", "/vaults/fuzzvault/keys/k/create", fz.admin, []byte(`{"kty":"RSA","key_size":2048}`)).Code)
	return fz
}

// check fails on a 5xx and on an error answer without Key Vault's envelope.
func (fz *fuzzServer) check(t *testing.T, method, path string, body []byte, rec *httptest.ResponseRecorder) {
	t.Helper()
	if rec.Code >= 500 {
		t.Fatalf("%s %s %q: status %d: %s", method, path, body, rec.Code, rec.Body.String())
	}
	if rec.Code >= 400 {
		var env struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil || env.Error.Code == "" || env.Error.Message == "" {
			t.Fatalf("%s %s: status %d without an error envelope: %s", method, path, rec.Code, rec.Body.String())
		}
	}
}

// checkStateReadable reads back every key of fuzzvault and runs a scheduler
// pass: a value stored by an earlier request must not make these fail.
func (fz *fuzzServer) checkStateReadable(t *testing.T) {
	t.Helper()
	for _, p := range []string{"/vaults/fuzzvault/keys", "/vaults/fuzzvault/keys/k/versions", "/vaults/fuzzvault/keys/t/versions", "/vaults/fuzzvault/deletedkeys", "/events?after=0", "/vaults"} {
		fz.check(t, "GET", p, nil, fz.do("GET", p, fz.admin, nil))
	}
	if err := fz.s.RunDue(); err != nil {
		t.Fatalf("scheduler pass after the request: %v", err)
	}
}
