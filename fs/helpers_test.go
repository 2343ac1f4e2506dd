package fs

import (
	"bytes"
	"context"
	"errors"
	"hostcrypt/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The machine rules are package testenv's.
var (
	requireFUSE = testenv.RequireFUSE
	requireRoot = testenv.RequireRoot
)

// requireTool skips when a command is missing, except in CI.
func requireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is needed: %v", name, err)
		}
		t.Skipf("%s not installed", name)
	}
}

// mountTree mounts an empty tree in a temporary directory and unmounts it at
// the end of the test, failing if the mount is left behind.
func mountTree(t testing.TB, opts Options) *Tree {
	t.Helper()
	requireFUSE(t)
	dir := t.TempDir()
	tree, err := Mount(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, tree.Unmount())
		requireNotMounted(t, dir)
	})
	return tree
}

func requireNotMounted(t testing.TB, dir string) {
	t.Helper()
	_, mounted, err := mountedAt(dir)
	require.NoError(t, err)
	require.False(t, mounted, "%s is still mounted", dir)
}

// run runs a command (never in this process: a test that does I/O on its
// own mount can deadlock) and returns its stdout; stderr is appended to
// the error.
func run(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = errors.Join(err, errors.New(strings.TrimSpace(stderr.String())))
	}
	return stdout.String(), err
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := run(t, name, args...)
	require.NoError(t, err, "%s %s", name, strings.Join(args, " "))
	return out
}

// python runs a python3 script with args in a subprocess.
func python(t testing.TB, script string, args ...string) string {
	t.Helper()
	requireTool(t, "python3")
	return mustRun(t, pythonPath(), append([]string{"-c", script}, args...)...)
}

// pythonPath is the interpreter itself: a version-manager shim in front of
// it can cost seconds per start.
var pythonPath = sync.OnceValue(func() string {
	out, err := exec.Command("python3", "-c", "import sys; print(sys.executable)").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		return "python3"
	}
	return strings.TrimSpace(string(out))
})

func imgPath(tree *Tree, vm, name string) string {
	return filepath.Join(tree.Dir(), vm, name)
}
