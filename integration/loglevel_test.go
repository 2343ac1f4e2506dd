package integration

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLogLevel: hostcryptd --log-level keeps out what is less severe than
// it, and a level it does not know is refused before anything starts.
func TestLogLevel(t *testing.T) {
	ks := startKeystore(t)
	for _, c := range []struct {
		level   string
		started bool // whether "VM started" (info) is logged
	}{{"info", true}, {"warn", false}} {
		h := newHost(t, ks, "--log-level", c.level)
		h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M")
		require.Equal(t, c.started, strings.Contains(h.logs.String(), `msg="VM started"`), "--log-level %s:\n%s", c.level, h.logs.String())
	}

	root := t.TempDir()
	_, errOut, code := runCmd(bin(t, "hostcryptd"), "--state", filepath.Join(root, "state"), "--storage", filepath.Join(root, "storage"),
		"--log-level", "loud")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, `--log-level "loud": give debug, info, warn or error`)
}
