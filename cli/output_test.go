package cli

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	ksapi "hostcrypt/keystore/api"
)

// openPTY returns both ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	require.NoError(t, unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0))
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	require.NoError(t, err)
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return m, s
}

// readLine reads what the terminal shows up to the first line end.
func readLine(t *testing.T, m *os.File) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		var b []byte
		buf := make([]byte, 256)
		for !bytes.Contains(b, []byte("\n")) {
			n, err := m.Read(buf)
			if err != nil {
				break
			}
			b = append(b, buf[:n]...)
		}
		got <- string(b)
	}()
	select {
	case s := <-got:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("nothing came out of the terminal")
		return ""
	}
}

func TestWarningColour(t *testing.T) {
	for _, tc := range []struct {
		name   string
		env    map[string]string
		colour bool
	}{
		{"terminal", map[string]string{"TERM": "xterm"}, true},
		{"NO_COLOR", map[string]string{"TERM": "xterm", "NO_COLOR": "1"}, false},
		{"dumb terminal", map[string]string{"TERM": "dumb"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, s := openPTY(t)
			c := &Context{Stderr: s, getenv: func(k string) string { return tc.env[k] }}
			c.warnf("encryption at host is off: %s", "plaintext")
			line := readLine(t, m)
			require.Contains(t, line, "WARNING: encryption at host is off: plaintext")
			require.Equal(t, tc.colour, strings.Contains(line, "\033["), "%q", line)
		})
	}
	var buf bytes.Buffer
	c := &Context{Stderr: &buf, getenv: func(string) string { return "" }}
	c.warnf("not a terminal")
	require.Equal(t, "WARNING: not a terminal\n", buf.String(), "no colour into a pipe or file")
}

func TestEventRows(t *testing.T) {
	at := time.Date(2026, 12, 4, 21, 45, 57, 0, time.UTC)
	policy := ksapi.Event{Sequence: 7, EventType: "Microsoft.KeyVault.VaultAccessPolicyChanged", EventTime: at,
		Data: ksapi.EventData{VaultName: "vault1", ObjectType: "Vault", ObjectName: "vault1"}}
	created := ksapi.Event{Sequence: 12345, EventType: "Microsoft.KeyVault.KeyNewVersionCreated", EventTime: at,
		Data: ksapi.EventData{VaultName: "a-much-longer-vault-name", ObjectType: "Key", ObjectName: "k1", Version: "30210b6dae1b74da9b852a1b266ef3b0"}}
	require.Equal(t, []string{"7", "2026-12-04T21:45:57Z", "VaultAccessPolicyChanged", "vault1", "-", "-"}, eventRow(&policy),
		"a vault event puts nothing in KEY")
	lines := []string{fixedRow(eventHeader), fixedRow(eventRow(&policy)), fixedRow(eventRow(&created))}
	for _, col := range []string{"TIME", "TYPE", "VAULT", "KEY", "VERSION"} {
		at := strings.Index(lines[0], col)
		for _, l := range lines[1:] {
			require.NotEqual(t, byte(' '), l[at], "column %s starts at %d in %q", col, at, l)
			require.Equal(t, byte(' '), l[at-1], "column %s starts at %d in %q", col, at, l)
		}
	}
}
