package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hostcrypt/internal/testenv"
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

// The one harness of the integration tests: they start the real binaries,
// keystored, hostcryptd and the hostcrypt CLI, built once per test run into
// a temporary directory (with the race detector and the testhooks tag, so
// that a test can move keystored's clock).

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error

	plainOnce sync.Once
	plainDir  string
	plainErr  error

	// buildTags are the binaries' build tags: the tests' own build adds
	// the RADOS backend's (shared_test.go).
	buildTags = "testhooks"
)

func bins(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "hostcrypt-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-race", "-tags", buildTags, "-o", binDir+"/", "../cmd/...")
		if os.Getenv("HOSTCRYPT_TEST_NORACE") != "" {
			cmd = exec.Command("go", "build", "-tags", buildTags, "-o", binDir+"/", "../cmd/...")
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building the binaries: %v\n%s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return binDir
}

// bin is the path of one binary of this run's build.
func bin(t *testing.T, name string) string { return filepath.Join(bins(t), name) }

// plainKeystored is keystored built without the testhooks tag (once per
// run), for the test that a production build has no clock to move.
func plainKeystored(t *testing.T) string {
	t.Helper()
	plainOnce.Do(func() {
		plainDir, plainErr = os.MkdirTemp("", "hostcrypt-bin-plain-")
		if plainErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", plainDir+"/", "../cmd/keystored").CombinedOutput()
		if err != nil {
			plainErr = fmt.Errorf("building keystored: %v\n%s", err, out)
		}
	})
	require.NoError(t, plainErr)
	return filepath.Join(plainDir, "keystored")
}

// requireFUSE: the host tests mount, as root (package testenv).
var requireFUSE = testenv.RequireDaemonMount

// startKeystore starts this run's keystored on a new directory.
func startKeystore(t *testing.T) *ksProc {
	t.Helper()
	return startKeystored(t, bin(t, "keystored"), filepath.Join(t.TempDir(), "ks"))
}

type host struct {
	t                              *testing.T
	ks                             *ksProc
	state, storage, hostDir, mount string
	cmd                            *exec.Cmd
	exited                         chan struct{}
	logs                           *testenv.Buffer
	extra                          []string
}

func newHost(t *testing.T, ks *ksProc, extra ...string) *host {
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
	h.logs = &testenv.Buffer{}
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

// kid runs a key verb (key create, key rotate...) and returns the key id
// with its version that it prints.
func (h *host) kid(args ...string) string {
	h.t.Helper()
	var key struct {
		Key struct {
			Kid string `json:"kid"`
		} `json:"key"`
	}
	h.json(&key, append([]string{"key"}, args...)...)
	require.NotEmpty(h.t, key.Key.Kid, "key %v printed no kid", args)
	return key.Key.Kid
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

// attachLoop attaches img to a new loop device (with losetup's options
// opts, e.g. "--direct-io=on") and returns the device. At the test's end
// the device is detached if it still serves img: a device the test detached
// itself may by then serve another test's image, and must be left alone.
func attachLoop(t *testing.T, img string, opts ...string) string {
	t.Helper()
	dev := strings.TrimSpace(sh(t, "losetup --find --show "+strings.Join(opts, " ")+" '"+img+"'"))
	t.Cleanup(func() {
		back, err := exec.Command("losetup", "--noheadings", "--output", "BACK-FILE", dev).Output()
		if err == nil && strings.TrimSpace(string(back)) == img {
			exec.Command("losetup", "-d", dev).Run()
		}
	})
	return dev
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

// ksProc is a running keystored.
type ksProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	dir    string
	url    string
	output *testenv.Buffer
	exited chan struct{}
}

// startKeystored starts the binary and waits, by polling, until it has
// written its address; it fails if the process exits first.
func startKeystored(t *testing.T, bin, dir string, extra ...string) *ksProc {
	t.Helper()
	os.Remove(filepath.Join(dir, "address"))
	p := &ksProc{t: t, dir: dir, output: &testenv.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"--dir", dir, "--listen", "127.0.0.1:0"}, extra...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	require.NoError(t, p.cmd.Start())
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(filepath.Join(dir, "address")); err == nil && strings.HasPrefix(string(b), "https://") && strings.Contains(p.output.String(), "listening on") {
			p.url = strings.TrimSpace(string(b))
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("keystored exited before it was ready: %s", p.output.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("keystored not ready after 30s: %s", p.output.String())
	return nil
}

// startKeystoredFails runs the binary and expects it to exit non-zero.
func startKeystoredFails(t *testing.T, bin, dir string, extra ...string) string {
	cmd := exec.Command(bin, append([]string{"--dir", dir, "--listen", "127.0.0.1:0"}, extra...)...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("keystored did not exit")
	}
	require.Error(t, err, "keystored should refuse to start: %s", out)
	return string(out)
}

func (p *ksProc) kill() {
	if p.cmd.Process != nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *ksProc) stop() {
	require.NoError(p.t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.t.Fatal("keystored did not stop on SIGTERM")
	}
	require.Equal(p.t, 0, p.cmd.ProcessState.ExitCode(), p.output.String())
}

// hcRunner runs the hostcrypt binary against a keystored.
type hcRunner struct {
	t         *testing.T
	bin       string
	p         *ksProc
	tokenFile string
}

func (p *ksProc) cli(bin, tokenFile string) *hcRunner {
	return &hcRunner{t: p.t, bin: bin, p: p, tokenFile: tokenFile}
}

// run returns stdout, stderr and the exit status.
func (h *hcRunner) run(args ...string) (string, string, int) {
	h.t.Helper()
	cmd := exec.Command(h.bin, args...)
	cmd.Env = append(os.Environ(),
		"HOSTCRYPT_KEYSTORE="+h.p.url,
		"HOSTCRYPT_KEYSTORE_CA="+filepath.Join(h.p.dir, "ca.pem"),
		"HOSTCRYPT_TOKEN_FILE="+h.tokenFile,
		"HOSTCRYPT_CONFIG=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		require.True(h.t, ok, "run hostcrypt: %v", err)
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// ok runs a command that must succeed and decodes its -o json output.
func (h *hcRunner) ok(out any, args ...string) {
	h.t.Helper()
	stdout, stderr, code := h.run(append([]string{"-o", "json"}, args...)...)
	require.Equal(h.t, 0, code, "hostcrypt %v: %s", args, stderr)
	if out != nil {
		require.NoError(h.t, json.Unmarshal([]byte(stdout), out), "hostcrypt %v printed %q", args, stdout)
	}
}

// fails runs a command that must fail and returns its stderr.
func (h *hcRunner) fails(args ...string) string {
	h.t.Helper()
	stdout, stderr, code := h.run(args...)
	require.NotEqual(h.t, 0, code, "hostcrypt %v should fail; printed %s", args, stdout)
	require.NotEmpty(h.t, stderr)
	return stderr
}
