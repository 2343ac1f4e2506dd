package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The host tests start the real binaries: keystored, hostcryptd and the
// hostcrypt CLI, built once per test run into a temporary directory.

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func bins(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "hostcrypt-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-race", "-tags", "testhooks", "-o", binDir+"/", "../cmd/...")
		if os.Getenv("HOSTCRYPT_TEST_NORACE") != "" {
			cmd = exec.Command("go", "build", "-tags", "testhooks", "-o", binDir+"/", "../cmd/...")
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building the binaries: %v\n%s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return binDir
}

// requireFUSE skips only on a developer machine without FUSE; in CI a missing
// /dev/fuse is a failure.
func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the host tests need root (FUSE mounts, loop devices)")
		}
		t.Skip("needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("/dev/fuse is missing: %v", err)
		}
		t.Skip("no /dev/fuse")
	}
}

type hostKS struct {
	dir  string
	url  string
	cmd  *exec.Cmd
	logs *syncBuffer
}

func startKeystore(t *testing.T) *hostKS {
	t.Helper()
	b := bins(t)
	ks := &hostKS{dir: filepath.Join(t.TempDir(), "ks"), logs: &syncBuffer{}}
	ks.cmd = exec.Command(filepath.Join(b, "keystored"), "--dir", ks.dir, "--listen", "127.0.0.1:0")
	ks.cmd.Stdout, ks.cmd.Stderr = ks.logs, ks.logs
	require.NoError(t, ks.cmd.Start())
	t.Cleanup(func() {
		ks.cmd.Process.Signal(syscall.SIGTERM)
		ks.cmd.Wait()
	})
	waitFor(t, 20*time.Second, "keystored to write its address", func() bool {
		raw, err := os.ReadFile(filepath.Join(ks.dir, "address"))
		if err != nil || len(bytes.TrimSpace(raw)) == 0 {
			return false
		}
		addr := strings.TrimSpace(string(raw))
		if !strings.HasPrefix(addr, "https://") {
			addr = "https://" + addr
		}
		ks.url = addr
		return true
	})
	return ks
}

type host struct {
	t                              *testing.T
	ks                             *hostKS
	state, storage, hostDir, mount string
	cmd                            *exec.Cmd
	exited                         chan struct{}
	logs                           *syncBuffer
	extra                          []string
}

func newHost(t *testing.T, ks *hostKS, extra ...string) *host {
	t.Helper()
	requireFUSE(t)
	root := t.TempDir()
	h := &host{t: t, ks: ks, state: filepath.Join(root, "state"), storage: filepath.Join(root, "storage"),
		hostDir: filepath.Join(root, "host"), mount: filepath.Join(root, "mnt"), extra: extra}
	h.start()
	t.Cleanup(func() { h.stop(syscall.SIGTERM) })
	return h
}

func (h *host) socket() string { return filepath.Join(h.state, "hostcryptd.sock") }

// start runs hostcryptd and waits until its API answers and the tree is
// mounted.
func (h *host) start() {
	t := h.t
	t.Helper()
	args := append([]string{"--state", h.state, "--storage", h.storage, "--host-dir", h.hostDir, "--mount", h.mount,
		"--keystore", h.ks.url, "--keystore-ca", filepath.Join(h.ks.dir, "ca.pem"),
		"--token-file", filepath.Join(h.ks.dir, "platform.token")}, h.extra...)
	h.logs = &syncBuffer{}
	h.cmd = exec.Command(filepath.Join(bins(t), "hostcryptd"), args...)
	h.cmd.Stdout, h.cmd.Stderr = h.logs, h.logs
	require.NoError(t, h.cmd.Start())
	exited := make(chan struct{})
	go func() { h.cmd.Wait(); close(exited) }()
	waitFor(t, 30*time.Second, "hostcryptd to serve its API", func() bool {
		select {
		case <-exited:
			t.Fatalf("hostcryptd exited during start-up:\n%s", h.logs.String())
		default:
		}
		_, _, code := h.run("vm", "list")
		return code == 0 && isMounted(h.mount)
	})
	h.exited = exited
}

// stop ends hostcryptd with sig and waits for it.
func (h *host) stop(sig syscall.Signal) {
	if h.cmd == nil || h.exited == nil {
		return
	}
	h.cmd.Process.Signal(sig)
	select {
	case <-h.exited:
	case <-time.After(60 * time.Second):
		h.t.Errorf("hostcryptd did not exit after %v:\n%s", sig, h.logs.String())
		h.cmd.Process.Kill()
		<-h.exited
	}
	h.exited = nil
}

// run calls the hostcrypt CLI against this host.
func (h *host) run(args ...string) (stdout, stderr string, code int) {
	full := append([]string{"--host-socket", h.socket(), "--keystore", h.ks.url,
		"--keystore-ca", filepath.Join(h.ks.dir, "ca.pem"), "--token-file", filepath.Join(h.ks.dir, "admin.token")}, args...)
	return runCmd(filepath.Join(bins(h.t), "hostcrypt"), full...)
}

// ok calls the CLI and fails the test unless it succeeds.
func (h *host) ok(args ...string) string {
	h.t.Helper()
	out, errOut, code := h.run(args...)
	require.Equal(h.t, 0, code, "hostcrypt %s failed:\n%s\n%s", strings.Join(args, " "), out, errOut)
	return out
}

// json calls the CLI with -o json and decodes the result.
func (h *host) json(v any, args ...string) {
	h.t.Helper()
	out := h.ok(append([]string{"-o", "json"}, args...)...)
	require.NoError(h.t, json.Unmarshal([]byte(out), v), out)
}

func runCmd(name string, args ...string) (string, string, int) {
	var out, errOut bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		errOut.WriteString(err.Error())
	}
	return out.String(), errOut.String(), code
}

// sh runs a shell command and fails the test unless it succeeds.
func sh(t *testing.T, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script).CombinedOutput()
	require.NoError(t, err, "%s\n%s", script, out)
	return string(out)
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func isMounted(dir string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	return false
}
