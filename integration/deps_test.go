package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDepsQuiet runs scripts/deps.sh on a PATH where every tool it looks
// for is missing and apt-get is a stand-in that talks as apt and debconf do
// on a first install: a successful install prints one line, a failed one
// shows everything apt said.
func TestDepsQuiet(t *testing.T) {
	bin := t.TempDir()
	for _, tool := range []string{"bash", "env", "id", "sort", "mktemp", "cat", "rm"} {
		p, err := exec.LookPath(tool)
		require.NoError(t, err)
		require.NoError(t, os.Symlink(p, filepath.Join(bin, tool)))
	}
	if p, err := exec.LookPath("go"); err == nil { // deps.sh checks for Go last
		require.NoError(t, os.Symlink(p, filepath.Join(bin, "go")))
	}
	calls := filepath.Join(t.TempDir(), "calls")
	require.NoError(t, os.WriteFile(filepath.Join(bin, "apt-get"), []byte(`#!/bin/bash
echo "$DEBIAN_FRONTEND $*" >> `+calls+`
echo "Selecting previously unselected package fio."
echo "debconf: delaying package configuration, since apt-utils is not installed" >&2
exit ${FAKE_APT_STATUS:-0}
`), 0o755))
	run := func(status string) (string, error) {
		cmd := exec.Command("../scripts/deps.sh")
		cmd.Env = []string{"PATH=" + bin, "FAKE_APT_STATUS=" + status}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	out, err := run("0")
	require.NoError(t, err, out)
	require.Equal(t, "deps: installing chromium e2fsprogs fio fuse3 prometheus python3 qemu-utils util-linux (this takes a few minutes the first time)\n", out)
	got, err := os.ReadFile(calls)
	require.NoError(t, err)
	require.Contains(t, string(got), "noninteractive update -qq\n")
	require.Contains(t, string(got), "noninteractive install -y -qq --no-install-recommends")

	out, err = run("100")
	require.Error(t, err)
	require.Contains(t, out, "debconf: delaying package configuration")
	require.Contains(t, out, "installing chromium e2fsprogs fio fuse3 prometheus python3 qemu-utils util-linux failed")
	require.Equal(t, 1, strings.Count(out, "Selecting previously unselected package"))
}
