package server

import (
	"encoding/json"
	"hostcrypt/keystore/api"
	"net/http"
	"net/http/httptest"
	"testing"
)

// newHookServer starts a plain-http receiver on 127.0.0.1 and returns its
// URL, http://127.0.0.1:PORT.
func newHookServer(t *testing.T, f func([]api.Event) int) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var evs []api.Event
		json.NewDecoder(r.Body).Decode(&evs)
		w.WriteHeader(f(evs))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// withWebhookAllow sets the operator's webhook allow list.
func withWebhookAllow(entries ...string) envOpt {
	return func(c *Config) { c.WebhookAllow = append(c.WebhookAllow, entries...) }
}
