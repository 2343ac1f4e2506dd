package server

import (
	"encoding/json"
	"errors"
	"hostcrypt/internal/testenv"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/keystore/api"
)

// An internal failure is answered with an id only; its detail is in the
// log under that id, and the audit line says it failed.
func TestInternalErrorAnswersAnID(t *testing.T) {
	logs := &testenv.Buffer{}
	e := startEnv(t, func(c *Config) { c.Logger = newTestLogger(logs) })
	mux := http.NewServeMux()
	e.s.handle(mux, "GET /broken", "Broken", func(*call) (any, error) {
		return nil, errors.New("open /var/lib/secret/path: input/output error")
	})
	tok, err := os.ReadFile(filepath.Join(e.dir, fileAdminToken))
	require.NoError(t, err)
	req := httptest.NewRequest("GET", "/broken", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)

	require.Equal(t, http.StatusInternalServerError, rec.Code)
	var env api.ErrorEnvelope
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &env))
	assert.Equal(t, "InternalError", env.Error.Code)
	assert.NotContains(t, env.Error.Message, "/var/lib/secret", "the detail stays in the log")
	id := rec.Header().Get("x-ms-request-id")
	require.NotEmpty(t, id)
	assert.Contains(t, env.Error.Message, id, "the answer names the id")
	assert.Contains(t, string(logs.Bytes()), "/var/lib/secret/path")
	assert.Contains(t, string(logs.Bytes()), `"id":"`+id+`"`)
}
