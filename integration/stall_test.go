package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A key store that stops answering (SIGSTOP: the kernel still accepts its
// connections, kept-alive ones too) holds nothing up for longer than the
// key store timeout: vm list answers at once, disk create fails saying the
// key store did not answer, and both work as before once it continues.
// Before, disk create hung past 45 s and vm list past 40 s: the client had
// no response timeout and the control lock was held across key store
// calls.
func TestStoppedKeyStoreHoldsNothingUp(t *testing.T) {
	ks := startKeystore(t)
	h := newHost(t, ks, "--keystore-timeout", "2s")
	h.ok("disk", "create", "--name", "before", "--size", "8M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M")

	require.NoError(t, ks.cmd.Process.Signal(syscall.SIGSTOP))
	stopped := true
	cont := func() {
		if stopped {
			ks.cmd.Process.Signal(syscall.SIGCONT)
			stopped = false
		}
	}
	t.Cleanup(cont)

	// A generous bound on each command: it catches a hang, not slowness.
	const hang = 60 * time.Second
	timed := func(args ...string) (string, string, int) {
		t.Helper()
		type res struct {
			out, errOut string
			code        int
		}
		done := make(chan res, 1)
		go func() {
			o, e, c := h.run(args...)
			done <- res{o, e, c}
		}()
		select {
		case r := <-done:
			return r.out, r.errOut, r.code
		case <-time.After(hang):
			t.Fatalf("hostcrypt %s hung with the key store stopped", strings.Join(args, " "))
			return "", "", -1
		}
	}
	out, errOut, code := timed("vm", "list")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "vm1")
	_, errOut, code = timed("disk", "create", "--name", "during", "--size", "8M")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "did not answer within 2 s")
	require.Contains(t, errOut, "KeyStoreUnreachable")
	out, errOut, code = timed("disk", "list")
	require.Equal(t, 0, code, errOut)
	require.NotContains(t, out, "during", "a failed create leaves no disk")

	cont()
	h.ok("disk", "create", "--name", "after", "--size", "8M")
	out = h.ok("disk", "list")
	require.Contains(t, out, "before")
	require.Contains(t, out, "after")
}
