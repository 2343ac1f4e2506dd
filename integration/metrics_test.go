package integration

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	neturl "net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/internal/promtest"
)

var (
	ksMetricsURL = regexp.MustCompile(`keystored: metrics (https?://\S+/metrics)`)
	hcMetricsURL = regexp.MustCompile(`msg="metrics listening" url=(http://\S+/metrics)`)
)

// TestMetricsUnderFio scrapes both daemons (--metrics) while fio runs on a
// customer-key disk: the disk's operations, bytes, latency, sealed and
// opened blocks, key checks and lease, and the key store's unwraps, audit
// appends and keys move; both outputs pass promtool; neither carries a
// token or a key.
func TestMetricsUnderFio(t *testing.T) {
	promtest.Promtool(t) // before anything starts: skipped or failed at once without it
	ks := startKeystored(t, bin(t, "keystored"), filepath.Join(t.TempDir(), "ks"), "--metrics", "127.0.0.1:0")
	m := ksMetricsURL.FindStringSubmatch(ks.output.String())
	require.NotNil(t, m, "keystored prints where its metrics are:\n%s", ks.output.String())
	ksURL := m[1]
	require.True(t, strings.HasPrefix(ksURL, "http://127.0.0.1:"), ksURL)

	h := newHost(t, ks, "--metrics", "127.0.0.1:0", "--key-check-interval", "1s")
	m = hcMetricsURL.FindStringSubmatch(h.logs.String())
	require.NotNil(t, m, "hostcryptd logs where its metrics are:\n%s", h.logs.String())
	hcURL := m[1]

	h.ok("keyvault", "create", "--name", "vault1")
	kid := h.kid("create", "--vault-name", "vault1", "--name", "k1", "--size", "2048")
	var des struct {
		Identity struct {
			PrincipalID string `json:"principalId"`
		} `json:"identity"`
	}
	out, errOut, code := h.run("-o", "json", "des", "create", "--name", "des1", "--key-url", kid)
	require.Equal(t, 0, code, errOut)
	require.NoError(t, json.Unmarshal([]byte(out), &des))
	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", des.Identity.PrincipalID, "--key-permissions", "get,wrapKey,unwrapKey")
	h.ok("disk", "create", "--name", "c1", "--size", "64M", "--disk-encryption-set", "des1")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M", "--data-disks", "c1:ReadWrite")

	disk := []string{"vm=vm1", "disk=c1"}
	op := func(o string) []string { return append(disk[:2:2], "op="+o) }
	before := promtest.Get(t, nil, hcURL)
	ksBefore := promtest.Get(t, nil, ksURL)
	require.Equal(t, 0.0, before.Must(t, "hostcrypt_disk_operations_total", op("write")...))

	// fio for a few seconds; scrape while it runs. Without its random map,
	// fio reads blocks it wrote (with it, each block is read or written
	// once per pass, never both).
	fio := make(chan string, 1)
	go func() {
		out, errOut, code := runCmd("fio", "--name=m", "--filename="+h.img("vm1", "data-0.img"), "--direct=1", "--size=32M",
			"--rw=randrw", "--norandommap", "--bs=4k", "--ioengine=libaio", "--iodepth=8", "--time_based", "--runtime=4s", "--output=/dev/null")
		if code != 0 {
			fio <- out + errOut
			return
		}
		fio <- ""
	}()
	var during *promtest.Scrape
	waitFor(t, 30*time.Second, "writes to show in the metrics while fio runs", func() bool {
		during = promtest.Get(t, nil, hcURL)
		return during.Must(t, "hostcrypt_disk_operations_total", op("write")...) > 0
	})
	require.Empty(t, <-fio, "fio failed")
	// Key checks run every second; one after fio is enough.
	waitFor(t, 30*time.Second, "a key check", func() bool {
		v, _ := promtest.Get(t, nil, hcURL).Value("hostcrypt_disk_key_checks_total", append(disk[:2:2], "result=usable")...)
		return v > 0
	})
	after := promtest.Get(t, nil, hcURL)
	ksAfter := promtest.Get(t, nil, ksURL)

	moved := func(s0, s1 *promtest.Scrape, name string, labels ...string) {
		t.Helper()
		v0, _ := s0.Value(name, labels...)
		v1 := s1.Must(t, name, labels...)
		require.Greater(t, v1, v0, "%s%v did not move", name, labels)
	}
	for _, o := range []string{"read", "write"} {
		moved(before, during, "hostcrypt_disk_operations_total", op(o)...)
		moved(during, after, "hostcrypt_disk_operations_total", op(o)...)
		moved(before, after, "hostcrypt_disk_bytes_total", op(o)...)
		moved(before, after, "hostcrypt_disk_operation_duration_seconds", op(o)...)
	}
	require.Equal(t, after.Must(t, "hostcrypt_disk_bytes_total", op("write")...),
		4096*after.Must(t, "hostcrypt_disk_operations_total", op("write")...), "fio writes 4 KiB at a time")
	moved(before, after, "hostcrypt_disk_blocks_sealed_total", disk...)
	moved(before, after, "hostcrypt_disk_seal_seconds_total", disk...)
	moved(before, after, "hostcrypt_disk_blocks_opened_total", disk...)
	// What the host cache took in depends on its policy (fast local
	// storage sends most I/O around it): its series are there.
	for _, name := range []string{"hostcrypt_disk_cache_hits_total", "hostcrypt_disk_cache_misses_total", "hostcrypt_disk_cache_dirty_bytes", "hostcrypt_disk_cache_writeback_bytes_total"} {
		require.Equal(t, 1, after.Count(name, disk...), name)
	}
	moved(before, after, "hostcrypt_disk_key_checks_total", append(disk[:2:2], "result=usable")...)
	require.Positive(t, after.Must(t, "hostcrypt_disk_key_lease_remaining_seconds", disk...))
	require.Equal(t, 0.0, after.Must(t, "hostcrypt_disk_integrity_failures_total", disk...))
	require.Equal(t, 0.0, after.Must(t, "hostcrypt_disk_fenced", disk...))
	require.Positive(t, after.Must(t, "hostcrypt_disk_size_bytes", "vm=vm1", "disk=vm1_OsDisk"), "the OS disk too: %v", after.Families["hostcrypt_disk_size_bytes"])

	// The key store unwrapped the disk's key when the VM started, as the
	// set's identity, and audited every request.
	require.Positive(t, ksAfter.Must(t, "hostcrypt_keystore_requests_total", "operation=KeyUnwrap", "result=Success"))
	require.Positive(t, ksAfter.Must(t, "hostcrypt_keystore_key_operation_duration_seconds", "operation=unwrap", "key_size=2048"))
	require.Greater(t, ksAfter.Sum("hostcrypt_keystore_requests_total"), ksBefore.Sum("hostcrypt_keystore_requests_total"), "the key checks are requests")
	moved(ksBefore, ksAfter, "hostcrypt_keystore_audit_append_duration_seconds")
	require.Positive(t, ksAfter.Must(t, "hostcrypt_keystore_keys", "state=enabled"))

	// No token and no key in either.
	var secrets []string
	for _, f := range []string{"admin.token", "platform.token"} {
		b, err := os.ReadFile(filepath.Join(ks.dir, f))
		require.NoError(t, err)
		secrets = append(secrets, strings.TrimSpace(string(b)))
	}
	for _, s := range []*promtest.Scrape{after, ksAfter} {
		for _, secret := range append(secrets, "vault1", "k1", "des1", des.Identity.PrincipalID) {
			require.NotContains(t, s.Text, secret)
		}
		require.Subset(t, []string{"vm", "disk", "op", "le", "result", "des", "resource", "operation", "key_size", "type", "state", "version", "cause"}, s.LabelNames())
		s.CheckMetrics(t)
	}

	// A stopped VM's disks leave the metrics.
	h.ok("vm", "stop", "--name", "vm1")
	stopped := promtest.Get(t, nil, hcURL)
	require.Zero(t, stopped.Count("hostcrypt_disk_operations_total", "vm=vm1"))
}

// The metrics listeners refuse an address the network reaches, unless the
// flag says so (hostcryptd) or they are served over TLS (keystored, with
// its own certificate).
func TestMetricsListeners(t *testing.T) {
	root := t.TempDir()
	_, errOut, code := runCmd(bin(t, "hostcryptd"), "--state", filepath.Join(root, "state"), "--storage", filepath.Join(root, "storage"),
		"--host-dir", filepath.Join(root, "host"), "--mount", filepath.Join(root, "mnt"), "--keystore", "https://127.0.0.1:1",
		"--keystore-ca", filepath.Join(root, "ca.pem"), "--token-file", filepath.Join(root, "token"), "--metrics", "0.0.0.0:0")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "not a loopback address")
	require.Contains(t, errOut, "--metrics-allow-remote")

	dir := filepath.Join(t.TempDir(), "ks")
	ks := startKeystored(t, bin(t, "keystored"), dir, "--metrics", "0.0.0.0:0")
	m := ksMetricsURL.FindStringSubmatch(ks.output.String())
	require.NotNil(t, m, ks.output.String())
	require.True(t, strings.HasPrefix(m[1], "https://"), m[1])
	u, err := neturl.Parse(m[1])
	require.NoError(t, err)
	url := "https://127.0.0.1:" + u.Port() + "/metrics"
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(ca))
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	s := promtest.Get(t, c, url)
	require.Contains(t, s.Families, "hostcrypt_keystore_keys")
	resp, err := http.Get("http" + strings.TrimPrefix(url, "https"))
	if err == nil {
		resp.Body.Close()
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "no metrics in the clear")
	}
}
