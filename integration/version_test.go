package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestVersion runs --version on the three binaries as make builds them: each
// names the commit the Makefile passes, the Go version, and go-fuse's
// version where it is linked (hostcryptd only: the CLI speaks to it through
// control/api and links none of it).
func TestVersion(t *testing.T) {
	bin := runBins(t)
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	require.NoError(t, err)
	commit := strings.TrimSpace(string(head))
	for _, prog := range []string{"hostcrypt", "hostcryptd", "keystored"} {
		out, err := exec.Command(filepath.Join(bin, prog), "--version").CombinedOutput()
		require.NoError(t, err, "%s --version: %s", prog, out)
		line := string(out)
		require.True(t, strings.HasPrefix(line, prog+" "), line)
		require.Contains(t, line, "commit "+commit)
		require.Contains(t, line, "go1.")
		if prog == "hostcryptd" {
			require.Contains(t, line, "go-fuse v2.")
		} else {
			// keystored and the CLI link no FUSE at all.
			require.Contains(t, line, "no go-fuse")
		}
	}
}
