package server

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
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
	dir := filepath.Join(f.TempDir(), "ks")
	s, err := Open(Config{Dir: dir, Listen: "127.0.0.1:0", Clock: &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(f, err)
	f.Cleanup(func() { s.ln.Close(); s.cancel(); s.closeState() })
	h := s.http.Handler
	tok, _ := os.ReadFile(filepath.Join(dir, fileAdminToken))
	admin := strings.TrimSpace(string(tok))
	do := func(method, path, token string, body []byte) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, bytes.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	require.Equal(f, 201, do("PUT", "/vaults/fuzzvault", admin, []byte(`{"properties":{"sku":{"name":"premium"}}}`)).Code)
	require.Equal(f, 200, do("POST", "/vaults/fuzzvault/keys/k/create", admin, []byte(`{"kty":"RSA","key_size":2048}`)).Code)

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
		rec := do(method, path, token, body)
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
	})
}
