package hostd

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"log/slog"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/console"
	"hostcrypt/control/api"
	"hostcrypt/internal/testenv"
)

func TestWebOptionsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		w    WebConfig
		want string
	}{
		{WebConfig{DemoPlaintext: true}, "need --web"},
		{WebConfig{Hosts: []string{"demo.example"}}, "need --web"},
		{WebConfig{Addr: "0.0.0.0:8080"}, "not a loopback address"},
		{WebConfig{Addr: ":8080"}, "not a loopback address"},
		{WebConfig{Addr: "127.0.0.1"}, "HOST:PORT"},
		{WebConfig{Addr: "0.0.0.0:8080", TLSCert: "c.pem"}, "go together"},
	} {
		assert.ErrorContains(t, tc.w.check(), tc.want, "%+v", tc.w)
	}
	for _, w := range []WebConfig{{}, {Addr: "127.0.0.1:0"}, {Addr: "localhost:8080", DemoPlaintext: true},
		{Addr: "0.0.0.0:8080", AllowRemote: true}, {Addr: "0.0.0.0:8443", TLSCert: "c.pem", TLSKey: "k.pem"}} {
		assert.NoError(t, w.check(), "%+v", w)
	}
}

// The daemon with --web: a new token in STATE/console.token (0600), its
// place in the log, and a console that logs in with it and shows the
// daemon's VMs and the key store's platform key.
func TestRunServesTheConsole(t *testing.T) {
	requireFUSE(t)
	ksURL, ksDir := startKeystore(t)
	cfg := daemonConfig(t.TempDir(), ksURL, ksDir)
	cfg.Socket = filepath.Join(cfg.StateDir, "hostcryptd.sock")
	cfg.Web = WebConfig{Addr: "127.0.0.1:0"}
	logs := &testenv.Buffer{}
	cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
	runDaemon(t, cfg)

	tokenPath := filepath.Join(cfg.StateDir, console.TokenFile)
	fi, err := os.Stat(tokenPath)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	raw, err := os.ReadFile(tokenPath)
	require.NoError(t, err)
	token := strings.TrimSpace(string(raw))
	assert.NotContains(t, logs.String(), token, "the log says where the token is, not what it is")
	assert.Contains(t, logs.String(), "token_file="+tokenPath)
	m := regexp.MustCompile(`web console listening" url=(http://127\.0\.0\.1:\d+)/`).FindStringSubmatch(logs.String())
	require.NotNil(t, m, logs.String())
	base := m[1]

	c := api.NewClient(cfg.Socket)
	_, err = c.CreateVM(context.Background(), api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 16 << 20})
	require.NoError(t, err)

	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	resp, err := hc.Get(base + "/api/state")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, err = hc.Get(base + "/login?token=" + token)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "/", resp.Request.URL.Path)
	assert.Empty(t, resp.Request.URL.RawQuery)

	var s console.State
	require.Eventually(t, func() bool {
		resp, err := hc.Get(base + "/api/state")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		if json.NewDecoder(resp.Body).Decode(&s) != nil {
			return false
		}
		platformKey := false
		for _, k := range s.Keys {
			platformKey = platformKey || (k.Platform && k.Name == "disk-encryption")
		}
		return len(s.VMs) == 1 && s.Reports["vm1"] != nil && platformKey
	}, 20*time.Second, 100*time.Millisecond, "state: %+v", s)
	assert.Equal(t, api.PowerRunning, s.VMs[0].PowerState)
	assert.True(t, s.BlocksAvailable)
	assert.False(t, s.DemoPlaintext)
}
