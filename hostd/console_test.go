package hostd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
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

// The daemon with --web, in clear and with TLS: a new token in
// STATE/console.token (0600), its place in the log, and a console that logs
// in with it and shows the daemon's VMs and the key store's platform key.
func TestRunServesTheConsole(t *testing.T) {
	requireFUSE(t)
	ksURL, ksDir := startKeystore(t)
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "http", true: "https"}[withTLS], func(t *testing.T) {
			cfg := daemonConfig(t.TempDir(), ksURL, ksDir)
			cfg.Socket = filepath.Join(cfg.StateDir, "hostcryptd.sock")
			cfg.Web = WebConfig{Addr: "127.0.0.1:0"}
			hc := &http.Client{Timeout: 30 * time.Second}
			scheme := "http"
			if withTLS {
				scheme = "https"
				var pool *x509.CertPool
				cfg.Web.TLSCert, cfg.Web.TLSKey, pool = selfSigned(t)
				hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
			}
			hc.Jar, _ = cookiejar.New(nil)
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
			m := regexp.MustCompile(`web console listening" url=(` + scheme + `://127\.0\.0\.1:\d+)/`).FindStringSubmatch(logs.String())
			require.NotNil(t, m, logs.String())
			base := m[1]

			c := api.NewClient(cfg.Socket)
			_, err = c.CreateVM(context.Background(), api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 16 << 20})
			require.NoError(t, err)

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
			require.Len(t, resp.Request.Response.Cookies(), 1)
			assert.Equal(t, withTLS, resp.Request.Response.Cookies()[0].Secure)

			var s console.State
			var lastErr error
			seen := assert.Eventually(t, func() bool {
				resp, err := hc.Get(base + "/api/state")
				if lastErr = err; err != nil {
					return false
				}
				defer resp.Body.Close()
				if lastErr = json.NewDecoder(resp.Body).Decode(&s); lastErr != nil {
					return false
				}
				platformKey := false
				for _, k := range s.Keys {
					platformKey = platformKey || (k.Platform && k.Name == "disk-encryption")
				}
				// A reading taken while the VM was being created shows it
				// deallocated; the next one shows it running.
				return len(s.VMs) == 1 && s.VMs[0].PowerState == api.PowerRunning && s.Reports["vm1"] != nil && platformKey
			}, 20*time.Second, 100*time.Millisecond)
			if !seen {
				t.Fatalf("the console never showed vm1 and the platform key: last state %+v, last error %v", s, lastErr)
			}
			assert.True(t, s.BlocksAvailable)
			assert.False(t, s.DemoPlaintext)
		})
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their files and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "console"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
