package server

import (
	"context"
	"crypto/x509"
	"errors"
	"hostcrypt/internal/testenv"
	"hostcrypt/keystore/api"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWebhookAllowEntries(t *testing.T) {
	for _, bad := range []string{"ftp://h", "https://u@h/", "https://h/?q=1", "https://h/#f", "h/path", "https://h/a/../b", "https://h/a%2Fb", "h:0", "h:99999", "h:", "https://:443/"} {
		_, err := parseWebhookAllow([]string{bad})
		assert.Error(t, err, "entry %q", bad)
		if err != nil {
			assert.Contains(t, err.Error(), "--webhook-allow")
		}
	}
	allow, err := parseWebhookAllow([]string{
		"hooks.example.com",
		"Hooks2.Example.com:8443",
		"https://events.example.com/tenant-a/",
		"https://exact.example.com/hook",
		"http://10.0.0.1:8080/h/",
		"[fd00::1]:8443",
		"", // an empty item of a comma list is nothing
	})
	require.NoError(t, err)
	require.Len(t, allow, 6)
	s := &Server{webhookAllow: allow}
	cases := []struct {
		url, entry, err string
	}{
		{"https://hooks.example.com/any/path?x=1", "hooks.example.com", ""},
		{"https://HOOKS.example.com:443/", "hooks.example.com", ""},
		{"https://hooks.example.com:8443/", "", "not a destination"},
		{"http://hooks.example.com/", "", "https only"},
		{"https://hooks2.example.com:8443/x", "Hooks2.Example.com:8443", ""},
		{"https://events.example.com/tenant-a/x", "https://events.example.com/tenant-a/", ""},
		{"https://events.example.com/tenant-b/x", "", "not a destination"},
		{"https://events.example.com/tenant-a/../tenant-b/x", "", "dot segments"},
		{"https://events.example.com/tenant-a%2F..%2Ftenant-b", "", "dot segments"},
		{"https://exact.example.com/hook", "https://exact.example.com/hook", ""},
		{"https://exact.example.com/hook/sub", "https://exact.example.com/hook", ""},
		{"https://exact.example.com/hookevil", "", "not a destination"},
		{"http://10.0.0.1:8080/h/x", "http://10.0.0.1:8080/h/", ""},
		{"https://10.0.0.1:8080/h/x", "", "not a destination"},
		{"https://[fd00::1]:8443/", "[fd00::1]:8443", ""},
		{"https://user:pw@hooks.example.com/", "", "user"},
		{"ftp://hooks.example.com/", "", "not an https URL"},
		{"https://hooks.example.com/" + strings.Repeat("a", maxWebhookURL), "", "at most"},
		{"http://169.254.169.254/latest", "", "--webhook-allow"},
	}
	for _, c := range cases {
		e, err := s.webhookEntry(c.url)
		if c.err != "" {
			require.Error(t, err, c.url)
			assert.Contains(t, err.Error(), c.err, c.url)
			continue
		}
		require.NoError(t, err, c.url)
		assert.Equal(t, c.entry, e.raw, c.url)
	}
	_, err = (&Server{}).webhookEntry("https://hooks.example.com/")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "allows no webhook destinations")
}

func TestWebhookDialCheck(t *testing.T) {
	entry := func(raw string) *allowEntry {
		e, err := parseAllowEntry(raw)
		require.NoError(t, err)
		return &e
	}
	cases := []struct {
		entry, addr string
		ok          bool
	}{
		{"hooks.example", "93.184.216.34:443", true},
		{"hooks.example", "10.0.0.5:443", true},
		{"hooks.example", "[2001:db8::1]:443", true},
		{"hooks.example", "93.184.216.34:80", false},
		{"hooks.example", "127.0.0.1:443", false},
		{"hooks.example", "[::1]:443", false},
		{"hooks.example", "169.254.169.254:443", false},
		{"hooks.example", "[::ffff:169.254.169.254]:443", false},
		{"hooks.example", "[64:ff9b::a9fe:a9fe]:443", false},
		{"hooks.example", "[fe80::1%eth0]:443", false},
		{"hooks.example", "0.0.0.0:443", false},
		{"hooks.example", "[::]:443", false},
		{"hooks.example", "224.0.0.1:443", false},
		{"hooks.example", "255.255.255.255:443", false},
		{"hooks.example", "[fd00:ec2::254]:443", false},
		{"hooks.example", "100.100.100.200:443", false},
		{"localhost:8080", "127.0.0.1:8080", true},
		{"localhost:8080", "[::1]:8080", true},
		{"localhost:8080", "169.254.1.1:8080", false},
		{"http://169.254.169.254/", "169.254.169.254:80", true},
		{"http://169.254.169.254/", "169.254.169.253:80", false},
		{"127.0.0.1:9", "127.0.0.1:9", true},
		{"127.0.0.1:9", "127.0.0.2:9", false},
		{"[::1]:9", "[::1]:9", true},
		{"10.1.2.3:443", "10.1.2.3:443", true},
	}
	for _, c := range cases {
		err := entry(c.entry).checkDial(c.addr)
		if c.ok {
			assert.NoError(t, err, "%s -> %s", c.entry, c.addr)
		} else {
			assert.Error(t, err, "%s -> %s", c.entry, c.addr)
		}
	}
}

// hookHits counts the requests local receivers get, by server and path.
type hookHits struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *hookHits) add(k string) {
	h.mu.Lock()
	h.n[k]++
	h.mu.Unlock()
}

func (h *hookHits) get(k string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[k]
}

// TestWebhookDestinations runs webhooks against real local HTTP and HTTPS
// receivers: only allowed destinations are accepted, plain http only where
// the operator wrote http://, a redirect is not followed, and a name that
// resolves to a loopback or link-local address is refused when dialled.
func TestWebhookDestinations(t *testing.T) {
	hits := &hookHits{n: map[string]int{}}
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.add("tls " + r.URL.Path)
	}))
	t.Cleanup(tlsSrv.Close)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.add("plain " + r.URL.Path)
		if r.URL.Path == "/hooks/redirect" {
			http.Redirect(w, r, tlsSrv.URL+"/redirected", http.StatusTemporaryRedirect)
		}
	}))
	t.Cleanup(plain.Close)
	tlsPort := tlsSrv.Listener.Addr().(*net.TCPAddr).Port
	plainPort := plain.Listener.Addr().(*net.TCPAddr).Port
	pool := x509.NewCertPool()
	pool.AddCert(tlsSrv.Certificate())
	var rebindLookups atomic.Int32
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) {
		switch host {
		case "hooks.test":
			rebindLookups.Add(1)
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		case "metadata.test":
			return []netip.Addr{netip.MustParseAddr("169.254.169.254")}, nil
		case "localhost":
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
		return nil, errors.New("no such host")
	}
	logs := &testenv.Buffer{}
	p := strconv.Itoa
	e := startEnv(t, withWebhookAllow(
		"127.0.0.1:"+p(tlsPort),
		"http://127.0.0.1:"+p(plainPort)+"/hooks/",
		"https://hooks.test:"+p(tlsPort)+"/",
		"http://metadata.test:"+p(plainPort)+"/",
		"http://localhost:"+p(plainPort)+"/local",
	), func(c *Config) {
		c.WebhookRootCAs = pool
		c.webhookLookup = lookup
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	e.vault("hookvault", "standard")

	for _, bad := range []struct{ url, want string }{
		{"http://169.254.169.254/latest", "--webhook-allow"},
		{"http://127.0.0.1:" + p(tlsPort) + "/x", "https only"},
		{"http://127.0.0.1:" + p(plainPort) + "/other", "not a destination"},
		{"http://127.0.0.1:" + p(plainPort) + "/hooks/../admin", "dot segments"},
		{"http://127.0.0.1:" + p(plainPort) + "/hooks%2F..%2Fadmin", "dot segments"},
		{"https://user@127.0.0.1:" + p(tlsPort) + "/", "user"},
		{"ftp://127.0.0.1/", "https URL"},
	} {
		_, err := e.admin.CreateWebhook(bg, bad.url, "")
		requireCode(t, err, 400, "BadParameter")
		assert.Contains(t, err.Error(), bad.want, bad.url)
	}
	for _, u := range []string{
		tlsSrv.URL + "/ok",
		plain.URL + "/hooks/ok",
		plain.URL + "/hooks/redirect",
		"https://hooks.test:" + p(tlsPort) + "/rebind",
		"http://metadata.test:" + p(plainPort) + "/latest",
		"http://localhost:" + p(plainPort) + "/local",
	} {
		_, err := e.admin.CreateWebhook(bg, u, "")
		require.NoError(t, err, u)
	}
	_, err := e.admin.CreateKey(bg, "hookvault", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)

	waitFor(t, "deliveries and refused retries", func() bool {
		return hits.get("tls /ok") >= 1 && hits.get("plain /hooks/ok") >= 1 && hits.get("plain /local") >= 1 &&
			hits.get("plain /hooks/redirect") >= 2 && rebindLookups.Load() >= 2 &&
			strings.Contains(logs.String(), "link-local") && strings.Contains(logs.String(), "loopback")
	})
	assert.Zero(t, hits.get("tls /redirected"), "a redirect was followed")
	assert.Zero(t, hits.get("tls /rebind"), "a name resolving to loopback was dialled")
	assert.Zero(t, hits.get("plain /latest"), "a name resolving to a link-local address was dialled")
	assert.Contains(t, logs.String(), "redirects are not followed")
}

// TestWebhookNoLongerAllowed: a webhook registered while its destination
// was allowed gets nothing after a restart without it.
func TestWebhookNoLongerAllowed(t *testing.T) {
	hits := &hookHits{n: map[string]int{}}
	hook := newHookServer(t, func([]api.Event) int { hits.add("hook"); return 200 })
	e := startEnv(t, withWebhookAllow(hook+"/"))
	e.vault("hookvault", "standard")
	_, err := e.admin.CreateWebhook(bg, hook+"/h", "")
	require.NoError(t, err)
	e.stop()
	logs := &testenv.Buffer{}
	e2 := startEnvIn(t, e.dir, e.clock, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	_, err = e2.admin.CreateKey(bg, "hookvault", "k", api.KeyCreate{Kty: "RSA"})
	require.NoError(t, err)
	waitFor(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), "not allowed by --webhook-allow") })
	assert.Zero(t, hits.get("hook"))
}

// waitFor polls cond for up to 20 s; the time is a limit, not what the
// test measures.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
