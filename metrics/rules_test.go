package metrics

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/control/api"
	"hostcrypt/internal/promtest"
)

// The recording rules of docs/prometheus load and compute what their test
// file says: IOPS, bandwidth, p99 and mean latency, cache hit ratio.
func TestRecordingRules(t *testing.T) {
	promtool := promtest.Promtool(t)
	for _, args := range [][]string{
		{"check", "rules", "hostcrypt-rules.yml"},
		{"test", "rules", "hostcrypt-rules_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../docs/prometheus"
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// documented are the metric names docs/OBSERVABILITY.md lists (in its
// tables: a name in backquotes at the start of a row).
func documented(t *testing.T) []string {
	b, err := os.ReadFile("../docs/OBSERVABILITY.md")
	require.NoError(t, err)
	var names []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(hostcrypt_[a-z_]+)`").FindAllStringSubmatch(string(b), -1) {
		names = append(names, m[1])
	}
	return names
}

// Every metric hostcryptd serves is documented, and every documented
// hostcryptd metric is served.
func TestMetricsDocumented(t *testing.T) {
	h := NewHost()
	defer h.Close()
	f := newFixture(t, nil)
	v := f.open(t, h, cache.ReadWrite)
	defer v.Close()
	_, err := v.Image().WriteAt(pattern(4096), 0)
	require.NoError(t, err)
	v.SetLease(time.Now().Add(time.Hour)) // a lease makes its gauge
	h.Rewrapping("des1", 0, 1)
	h.SetCopies(func() map[string]api.CopyProgress {
		return map[string]api.CopyProgress{"snapshots/s1": {Done: 1, Total: 2}}
	})
	s := promtest.Handler(t, h.Handler())
	docs := documented(t)
	var served []string
	for name := range s.Families {
		if strings.HasPrefix(name, "hostcrypt_") {
			served = append(served, name)
			require.Contains(t, docs, name, "served but not in docs/OBSERVABILITY.md")
		}
	}
	for _, name := range docs {
		if !strings.HasPrefix(name, "hostcrypt_keystore_") {
			require.True(t, slices.Contains(served, name), "%s is documented but not served", name)
		}
	}
}
