package integration

import (
	"bytes"
	"encoding/json"
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

// ksBinaries builds keystored (with the clock test hook when testhooks is
// set) and hostcrypt into a temporary directory.
func ksBinaries(t *testing.T, testhooks bool) (keystored, hostcrypt string) {
	t.Helper()
	dir := t.TempDir()
	args := []string{"build", "-o", dir + "/"}
	if testhooks {
		args = append(args, "-tags", "testhooks")
	}
	cmd := exec.Command("go", append(args, "hostcrypt/cmd/keystored", "hostcrypt/cmd/hostcrypt")...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return filepath.Join(dir, "keystored"), filepath.Join(dir, "hostcrypt")
}

// ksProc is a running keystored.
type ksProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	dir    string
	url    string
	output *syncBuffer
	exited chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startKeystored starts the binary and waits, by polling, until it has
// written its address; it fails if the process exits first.
func startKeystored(t *testing.T, bin, dir string, extra ...string) *ksProc {
	t.Helper()
	os.Remove(filepath.Join(dir, "address"))
	p := &ksProc{t: t, dir: dir, output: &syncBuffer{}, exited: make(chan struct{})}
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
