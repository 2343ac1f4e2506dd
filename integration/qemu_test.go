package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// requireQEMU skips on a developer machine without QEMU or a guest kernel;
// in CI (where make test installs them) their absence is a failure.
func requireQEMU(t *testing.T) {
	t.Helper()
	missing := ""
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		missing = "qemu-system-x86_64"
	} else if k, _ := filepath.Glob("/boot/vmlinuz-*"); len(k) == 0 {
		missing = "a kernel in /boot (linux-image-amd64)"
	} else if _, err := os.Stat("/bin/busybox"); err != nil {
		missing = "/bin/busybox (busybox-static)"
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("booting a guest needs %s (scripts/deps.sh qemu installs it)", missing)
	}
	t.Skipf("no %s; scripts/deps.sh qemu installs it", missing)
}

// readmeQEMU returns the README's QEMU command line, continuation lines
// joined, so that the test boots exactly what a reader would.
func readmeQEMU(t *testing.T) string {
	t.Helper()
	f, err := os.Open("../README.md")
	require.NoError(t, err)
	defer f.Close()
	var cmd []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if len(cmd) == 0 && !strings.HasPrefix(line, "qemu-system-x86_64 ") {
			continue
		}
		cmd = append(cmd, strings.TrimSuffix(line, "\\"))
		if !strings.HasSuffix(line, "\\") {
			break
		}
	}
	require.NotEmpty(t, cmd, "the README has a qemu-system-x86_64 command line")
	return strings.Join(cmd, " ")
}

// TestGuestBootsFromImage boots a small Linux guest under QEMU (TCG) from a
// VM's os.img served by hostcryptd, with the README's command line, and
// checks through the data disk that the guest read and wrote it: the guest
// reads a token from the data disk and writes it back into a new file,
// which the test reads from an export of the disk after the VM stopped.
func TestGuestBootsFromImage(t *testing.T) {
	requireFUSE(t)
	requireQEMU(t)
	qemu := readmeQEMU(t)
	require.Contains(t, qemu, "cache=none,aio=native")

	guest := t.TempDir()
	sh(t, "../scripts/mkguest.sh "+guest)
	tok := make([]byte, 16)
	rand.Read(tok)
	token := hex.EncodeToString(tok)
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "in.txt"), []byte(token+"\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(src, "autorun.sh"), []byte(`#!/bin/sh
echo "autorun: read $(cat /data/in.txt) from the data disk"
echo "the guest wrote $(cat /data/in.txt)" > /data/out.txt
sync
`), 0o755))
	data := filepath.Join(t.TempDir(), "data.img")
	sh(t, "truncate -s 64M "+data+" && mkfs.ext4 -q -F -d "+src+" "+data)

	h := newHost(t, startKeystore(t))
	h.ok("disk", "import", "--name", "guest-os", "--source", filepath.Join(guest, "os.img"))
	h.ok("disk", "import", "--name", "guest-data", "--source", data)
	h.ok("vm", "create", "--name", "guest", "--os-disk", "guest-os", "--data-disks", "guest-data")

	// The README's paths are relative to the checkout, under var/.
	qemu = strings.ReplaceAll(qemu, "var/mnt/", h.mount+"/")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", qemu)
	cmd.Env = append(os.Environ(), "G="+guest)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	console := string(out)
	require.NoError(t, err, "qemu:\n%s", console)
	t.Logf("the guest booted, did its work and powered off in %v", time.Since(start).Round(time.Second))
	require.Contains(t, console, "guest: booted from os.img")
	require.Contains(t, console, "autorun: read "+token+" from the data disk")
	require.Contains(t, console, "guest: autorun.sh exited with status 0")

	h.ok("vm", "stop", "--name", "guest")
	exported := filepath.Join(t.TempDir(), "data.raw")
	h.ok("disk", "export", "--name", "guest-data", "--target", exported)
	got := sh(t, "debugfs -R 'cat /out.txt' "+exported+" 2>/dev/null")
	require.Contains(t, got, "the guest wrote "+token)
	// And none of it reached storage as plaintext.
	require.Error(t, exec.Command("grep", "-rq", token, h.storage).Run(), "the token is in storage as plaintext")
}
