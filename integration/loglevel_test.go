package integration

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLogLevel: hostcryptd --log-level keeps out what is less severe than
// it, and a level it does not know is refused before anything starts. At
// debug level the disks' own messages come through too (a disk logs through
// the process's default logger): each background sync of a running VM's
// disks.
func TestLogLevel(t *testing.T) {
	ks := startKeystore(t)
	for _, c := range []struct {
		level   string
		started bool // whether "VM started" (info) is logged
		synced  bool // whether "background sync" (debug, by a disk) is
	}{{"debug", true, true}, {"info", true, false}, {"warn", false, false}} {
		h := newHost(t, ks, "--log-level", c.level, "--flush-interval", "1s")
		h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M")
		require.Equal(t, c.started, strings.Contains(h.logs.String(), `msg="VM started"`), "--log-level %s:\n%s", c.level, h.logs.String())
		synced := func() bool { return strings.Contains(h.logs.String(), `msg="background sync"`) }
		if c.synced {
			waitFor(t, 20*time.Second, "a disk's background sync logged at debug level", synced)
			continue
		}
		time.Sleep(2500 * time.Millisecond) // two flush intervals
		require.False(t, synced(), "--log-level %s logged a debug message:\n%s", c.level, h.logs.String())
	}

	root := t.TempDir()
	_, errOut, code := runCmd(bin(t, "hostcryptd"), "--state", filepath.Join(root, "state"), "--storage", filepath.Join(root, "storage"),
		"--log-level", "loud")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, `--log-level "loud": give debug, info, warn or error`)
}
