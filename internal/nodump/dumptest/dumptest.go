// Package dumptest tells whether a process leaves a core dump when it
// crashes, for tests of nodump.Protect in the daemons.
//
// A test is honest only if a core would be written without the
// protection, so Prepare sets up what a dump needs (a core size limit for
// the children, a directory for a relative core_pattern), and a test
// crashes an unprotected control process first: see Control.
package dumptest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// HelperEnv, set in a test binary's environment, makes Control's process
// wait to be crashed; its value says whether to protect itself first.
const HelperEnv = "DUMPTEST_HELPER"

// Prepare raises the calling process's soft core size limit to its hard
// limit for the rest of the test, so that children started meanwhile may
// dump core (the protection under test sets its own limit back to 0), and
// returns the directory to start them in: with a relative core_pattern,
// as the kernel's default "core", the core is written there. When the
// machine cannot write cores at all, Prepare skips the test, and fails it
// in CI.
func Prepare(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("/proc/sys/kernel/core_pattern")
	if err != nil {
		skip(t, "cannot read the core pattern: %v", err)
	}
	t.Logf("core_pattern %q", strings.TrimSpace(string(raw)))
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max == 0 {
		raised := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
		if err := unix.Setrlimit(unix.RLIMIT_CORE, &raised); err != nil {
			skip(t, "the hard core size limit is 0 and cannot be raised: %v", err)
		}
	} else if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: lim.Max, Max: lim.Max}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_CORE, &lim) })
	return t.TempDir()
}

func skip(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// Command returns a command running name in dir with GOTRACEBACK=crash,
// which makes the Go runtime end a fatal signal by dumping core.
func Command(dir, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOTRACEBACK=crash")
	return cmd
}

// Result is what a crash left.
type Result struct {
	// Dumped is the kernel's word (WCOREDUMP): a core was written, to a
	// file or to a core_pattern pipe.
	Dumped bool
	// Files are the core files in the process's directory.
	Files []string
}

// Abort sends SIGABRT to cmd, started by the caller, waits for it, checks
// that it died of that signal, and returns what it left.
func Abort(t *testing.T, cmd *exec.Cmd) Result {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGABRT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		// A guard against a hang, not a speed goal: a large core of a
		// race-enabled binary takes a while.
		cmd.Process.Kill()
		t.Fatal("the process did not end after SIGABRT")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("the process did not die of SIGABRT: %v", err)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGABRT {
		t.Fatalf("the process ended with %v, not SIGABRT", ws)
	}
	r := Result{Dumped: ws.CoreDump()}
	entries, _ := os.ReadDir(cmd.Dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "core") {
			r.Files = append(r.Files, filepath.Join(cmd.Dir, e.Name()))
		}
	}
	return r
}

// Control crashes an unprotected copy of the running test binary, which
// must call Helper first thing in a test named run, and returns what it
// left; a test asserts that it did dump core before it believes that a
// protected process would have.
func Control(t *testing.T, dir, run string) Result {
	t.Helper()
	cmd := Command(dir, os.Args[0], "-test.run=^"+run+"$")
	cmd.Env = append(cmd.Env, HelperEnv+"=control")
	return startAndAbort(t, cmd)
}

func startAndAbort(t *testing.T, cmd *exec.Cmd) Result {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil || string(buf) != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper did not get ready: %q %v", buf, err)
	}
	return Abort(t, cmd)
}

// Helper turns the test binary into Control's process when HelperEnv is
// set: it protects itself if asked, says "ready" and waits to be crashed.
// It returns at once otherwise.
func Helper(protect func() error) {
	mode := os.Getenv(HelperEnv)
	if mode == "" {
		return
	}
	if mode == "protected" {
		if err := protect(); err != nil {
			os.Stdout.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
	}
	os.Stdout.WriteString("ready\n")
	select {}
}

// Protected is Control with the helper protecting itself with protect.
func Protected(t *testing.T, dir, run string) Result {
	t.Helper()
	cmd := Command(dir, os.Args[0], "-test.run=^"+run+"$")
	cmd.Env = append(cmd.Env, HelperEnv+"=protected")
	return startAndAbort(t, cmd)
}

// RequireControlDumped fails (or skips, outside CI) the test unless r, a
// control process's, shows a core dump: without one, the absence of a
// core elsewhere proves nothing.
func RequireControlDumped(t *testing.T, r Result) {
	t.Helper()
	if !r.Dumped {
		skip(t, "this machine wrote no core even for an unprotected process, so the test cannot tell")
	}
	t.Logf("control process dumped core; files: %v", r.Files)
}
