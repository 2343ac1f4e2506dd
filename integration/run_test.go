package integration

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The tests of `make run` (scripts/run.sh): however the run ends, no daemon
// and no mount stay behind, and a daemon that cannot start says why.

var (
	makeBinOnce sync.Once
	makeBinDir  string
	makeBinErr  error
)

// runBins is where `make run BIN=…` builds the binaries for these tests:
// a directory of their own, so that make's build never replaces the
// race-built binaries the other tests share.
func runBins(t *testing.T) string {
	t.Helper()
	makeBinOnce.Do(func() {
		makeBinDir, makeBinErr = os.MkdirTemp("", "hostcrypt-run-bin-")
		if makeBinErr != nil {
			return
		}
		out, err := exec.Command("make", "-C", "..", "-s", "build", "BIN="+makeBinDir).CombinedOutput()
		if err != nil {
			makeBinErr = fmt.Errorf("make build: %v\n%s", err, out)
		}
	})
	require.NoError(t, makeBinErr)
	return makeBinDir
}

// aRun is one `make run` or scripts/run.sh, in a process group of its own
// as a shell's foreground job is, on a fresh VAR.
type aRun struct {
	t      *testing.T
	vr     string
	out    string // what the run printed
	cmd    *exec.Cmd
	exited chan struct{}
}

func startRun(t *testing.T, shell string, env ...string) *aRun {
	t.Helper()
	return startRunOn(t, filepath.Join(t.TempDir(), "var"), shell, env...)
}

// startRunOn starts a run on the VAR directory vr.
func startRunOn(t *testing.T, vr, shell string, env ...string) *aRun {
	t.Helper()
	requireFUSE(t)
	bin := runBins(t)
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	r := &aRun{t: t, vr: vr, exited: make(chan struct{})}
	r.out = filepath.Join(t.TempDir(), "out")
	f, err := os.Create(r.out)
	require.NoError(t, err)
	defer f.Close()
	r.cmd = exec.Command("bash", "-c", shell)
	r.cmd.Dir = root
	r.cmd.Env = append(os.Environ(), append([]string{"VAR=" + r.vr, "BIN=" + bin, "KEYSTORE_LISTEN=127.0.0.1:0"}, env...)...)
	r.cmd.Stdout, r.cmd.Stderr = f, f
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, r.cmd.Start())
	go func() { r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(func() {
		syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.exited
		for _, p := range r.daemons() {
			syscall.Kill(p, syscall.SIGKILL)
		}
		exec.Command("umount", "-l", filepath.Join(r.vr, "mnt")).Run()
	})
	return r
}

func (r *aRun) output() string {
	b, _ := os.ReadFile(r.out)
	return string(b)
}

// waitReady waits until the run printed its last line of instructions.
func (r *aRun) waitReady() {
	r.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(r.output(), "Ctrl-C stops both daemons") {
		select {
		case <-r.exited:
			r.t.Fatalf("the run ended before it was ready:\n%s", r.output())
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("the run is not ready after 90s:\n%s", r.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.Len(r.t, r.daemons(), 2, "both daemons run:\n%s", r.output())
	require.True(r.t, isMounted(filepath.Join(r.vr, "mnt")))
}

// daemons lists the processes started for this run's VAR.
func (r *aRun) daemons() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cl), "\x00")
		if len(args) > 0 && (strings.HasSuffix(args[0], "/keystored") || strings.HasSuffix(args[0], "/hostcryptd")) &&
			bytes.Contains(cl, []byte(r.vr+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitClean waits for the run's shell to end, then checks that no daemon
// and no mount are left, and that both daemons stopped cleanly (a daemon
// killed outright would leave no such line in its log).
func (r *aRun) waitClean() {
	r.t.Helper()
	select {
	case <-r.exited:
	case <-time.After(60 * time.Second):
		r.t.Fatalf("the run did not end:\n%s\n%s", r.output(), r.stuck())
	}
	waitFor(r.t, 30*time.Second, "both daemons to exit", func() bool { return len(r.daemons()) == 0 })
	require.False(r.t, isMounted(filepath.Join(r.vr, "mnt")), "the mount is gone")
	hlog, _ := os.ReadFile(filepath.Join(r.vr, "hostcryptd.log"))
	require.Contains(r.t, string(hlog), "shutting down: flushing every disk", "hostcryptd stopped cleanly")
	klog, _ := os.ReadFile(filepath.Join(r.vr, "keystored.log"))
	require.Contains(r.t, string(klog), "keystored: stopped")
}

// stuck says what a run that does not end is doing: the processes of its
// process group and the daemons, each with its state and where it waits in
// the kernel, and the end of each daemon's log.
func (r *aRun) stuck() string {
	var b strings.Builder
	pids := r.daemons()
	if out, err := exec.Command("pgrep", "-g", strconv.Itoa(r.cmd.Process.Pid)).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	for _, pid := range pids {
		cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		wc, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", pid))
		fmt.Fprintf(&b, "pid %d: %s\n  stat: %s\n  wchan: %s\n", pid,
			strings.ReplaceAll(strings.TrimRight(string(cl), "\x00"), "\x00", " "), strings.TrimSpace(string(st)), wc)
	}
	for _, name := range []string{"hostcryptd.log", "keystored.log"} {
		l, _ := os.ReadFile(filepath.Join(r.vr, name))
		if len(l) > 4000 {
			l = l[len(l)-4000:]
		}
		fmt.Fprintf(&b, "--- the end of %s:\n%s\n", name, l)
	}
	return b.String()
}

// runShellPid is the pid of scripts/run.sh under the run's shell.
func (r *aRun) runShellPid() int {
	r.t.Helper()
	out, err := exec.Command("pgrep", "-g", strconv.Itoa(r.cmd.Process.Pid), "-f", "scripts/run.sh").Output()
	require.NoError(r.t, err, "finding scripts/run.sh")
	pid, err := strconv.Atoi(strings.Fields(string(out))[0])
	require.NoError(r.t, err)
	return pid
}

// TestRunCtrlCPiped is Ctrl-C on `make run 2>&1 | tee log`: the terminal
// sends SIGINT to the whole job, tee dies first, and the run's stop path
// writes into a pipe no one reads.
func TestRunCtrlCPiped(t *testing.T) {
	t.Parallel()
	log := filepath.Join(t.TempDir(), "log")
	r := startRun(t, "make -s run 2>&1 | tee "+log)
	r.waitReady()
	require.NoError(t, syscall.Kill(-r.cmd.Process.Pid, syscall.SIGINT))
	r.waitClean()
}

// TestRunSIGTERM sends SIGTERM to make alone, as kill or a service manager
// would; make passes it on to its recipe.
func TestRunSIGTERM(t *testing.T) {
	t.Parallel()
	r := startRun(t, "exec make -s run")
	r.waitReady()
	require.NoError(t, r.cmd.Process.Signal(syscall.SIGTERM))
	r.waitClean()
	require.Contains(t, r.output(), "run: hostcryptd stopped")
	require.Contains(t, r.output(), "run: keystored stopped")
}

// TestRunSIGHUP is a terminal hanging up on a run whose output is kept
// with tee: SIGHUP to the whole job.
func TestRunSIGHUP(t *testing.T) {
	t.Parallel()
	// Under nohup this process ignores SIGHUP, and so would make, the
	// script and the daemons it starts: no hangup could end the run, as
	// nohup means. A signal this process catches is reset to the default
	// in a child, so catching it here gives the run a terminal's hangup.
	if signal.Ignored(syscall.SIGHUP) {
		signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	}
	r := startRun(t, "make -s run 2>&1 | tee "+filepath.Join(t.TempDir(), "log"))
	r.waitReady()
	require.NoError(t, syscall.Kill(-r.cmd.Process.Pid, syscall.SIGHUP))
	r.waitClean()
}

// TestRunSIGKILL kills scripts/run.sh outright: it can run no stop path, so
// the daemons' lifeline must end them.
func TestRunSIGKILL(t *testing.T) {
	t.Parallel()
	r := startRun(t, "make -s run")
	r.waitReady()
	require.NoError(t, syscall.Kill(r.runShellPid(), syscall.SIGKILL))
	r.waitClean()
}

// TestRunPortTaken starts the run with the key store's port taken: it ends
// at once with keystored's own error and names the variable to change.
func TestRunPortTaken(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	r := startRun(t, "scripts/run.sh", "KEYSTORE_LISTEN="+l.Addr().String())
	select {
	case <-r.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("the run did not give up at once:\n%s", r.output())
	}
	require.NotEqual(t, 0, r.cmd.ProcessState.ExitCode())
	out := r.output()
	require.Contains(t, out, "keystored exited during start-up")
	require.Contains(t, out, "bind: address already in use")
	require.Contains(t, out, "KEYSTORE_LISTEN=")
	require.Empty(t, r.daemons())
}

// TestRunPicksAFreePort starts a fresh run while 8443 is taken (by this
// test, or by anything else): the key store listens on a free port, says
// so, and the next run keeps that port, which its key ids name.
func TestRunPicksAFreePort(t *testing.T) {
	t.Parallel()
	if l, err := net.Listen("tcp", "127.0.0.1:8443"); err == nil {
		defer l.Close()
	}
	r := startRun(t, "scripts/run.sh", "KEYSTORE_LISTEN=")
	r.waitReady()
	require.Contains(t, r.output(), "port 8443 is taken")
	addr, err := os.ReadFile(filepath.Join(r.vr, "keystore", "address"))
	require.NoError(t, err)
	require.NotContains(t, string(addr), ":8443")
	require.NoError(t, syscall.Kill(-r.cmd.Process.Pid, syscall.SIGTERM))
	r.waitClean()

	again := startRunOn(t, r.vr, "scripts/run.sh", "KEYSTORE_LISTEN=")
	again.waitReady()
	require.Contains(t, again.output(), "keystored listens on "+strings.TrimSpace(string(addr)))
	require.NoError(t, syscall.Kill(-again.cmd.Process.Pid, syscall.SIGTERM))
	again.waitClean()
}

// TestRunWithWebConsole: WEB= serves the console and the run prints how to
// log in (the token file, not the token); the printed URL logs in;
// WEB_DEMO_PLAINTEXT= turns the plaintext side of the block view on.
func TestRunWithWebConsole(t *testing.T) {
	t.Parallel()
	r := startRun(t, "scripts/run.sh", "WEB=127.0.0.1:0", "WEB_DEMO_PLAINTEXT=1")
	r.waitReady()
	waitFor(t, 10*time.Second, "the console's line", func() bool { return strings.Contains(r.output(), "The web console: open ") })
	m := regexp.MustCompile(`The web console: open (http://127\.0\.0\.1:\d+/)login\?token=\$\(cat (\S+)\)`).FindStringSubmatch(r.output())
	require.NotNil(t, m, r.output())
	require.Equal(t, filepath.Join(r.vr, "state", "console.token"), m[2])
	raw, err := os.ReadFile(m[2])
	require.NoError(t, err)
	token := strings.TrimSpace(string(raw))
	require.NotContains(t, r.output(), token)
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	resp, err := hc.Get(m[1] + "login?token=" + token)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "/", resp.Request.URL.Path)
	hlog, err := os.ReadFile(filepath.Join(r.vr, "hostcryptd.log"))
	require.NoError(t, err)
	require.Contains(t, string(hlog), "demo_plaintext=true")
	require.NoError(t, syscall.Kill(-r.cmd.Process.Pid, syscall.SIGTERM))
	r.waitClean()
}
