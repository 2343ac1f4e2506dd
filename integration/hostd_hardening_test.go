package integration

import (
	"bufio"
	"context"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
)

// storageFiles lists every file under dir, relative to it.
func storageFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	}))
	sort.Strings(out)
	return out
}

// TestHostSizeBounds: sizes above the largest disk are refused by the CLI
// and by the API before anything changes, also for a disk attached to a
// running VM, and the daemon stays up and starts again. Before, they
// panicked hostcryptd or ran it out of memory, one of them after rewriting
// meta.json so that every later start panicked.
func TestHostSizeBounds(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "d1", "--size", "16M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M", "--data-disks", "d1")
	before := storageFiles(t, h.storage)
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"disk", "create", "--name", "x", "--size", "4194304T"}, "the largest Premium_LRS disk is 32767G"},
		{[]string{"disk", "create", "--name", "x", "--size", "99999999999999999T"}, "too large"},
		{[]string{"disk", "create", "--name", "x", "--size", "1"}, "the smallest disk is 1M"},
		{[]string{"disk", "create", "--name", "x", "--size", "1GB"}, "GB is ambiguous"},
		{[]string{"disk", "update", "--name", "vm1_OsDisk", "--size", "4194304T"}, "the largest disk is 64T"},
		{[]string{"vm", "create", "--name", "vm2", "--os-disk-size", "40T"}, "the largest Premium_LRS disk"},
		{[]string{"vm", "create", "--name", "vm2", "--os-disk-size", "1G", "--temp-disk-size", "4194304T"}, "the largest temp disk"},
	} {
		out, errOut, code := h.run(c.args...)
		require.NotEqual(t, 0, code, "%v succeeded: %s", c.args, out)
		require.Contains(t, errOut, c.msg, "%v", c.args)
	}
	// The API refuses what a client other than the CLI may send.
	c := api.NewClient(h.socket())
	ctx := context.Background()
	for _, r := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/disks", map[string]any{"name": "x", "sizeBytes": int64(math.MaxInt64 - 511)}},
		{"POST", "/disks", map[string]any{"name": "x", "sizeBytes": int64(4194304) << 40}},
		{"PATCH", "/disks/vm1_OsDisk", map[string]any{"sizeBytes": int64(math.MaxInt64 - 511)}},
		{"PATCH", "/disks/vm1_OsDisk", map[string]any{"sizeBytes": int64(32768) << 30}},
		{"POST", "/vms", map[string]any{"name": "vm2", "osDiskSizeBytes": int64(math.MaxInt64 - 511)}},
	} {
		err := c.Do(ctx, r.method, r.path, r.body, nil)
		var e *api.Error
		require.ErrorAs(t, err, &e, "%s %s", r.method, r.path)
		require.Equal(t, http.StatusBadRequest, e.Status, e.Message)
		require.Contains(t, strings.ToLower(e.Message), "sizebytes")
	}
	require.Equal(t, before, storageFiles(t, h.storage), "a refused size changed storage")
	var vm vmJSON
	h.json(&vm, "vm", "show", "--name", "vm1")
	require.Equal(t, "running", vm.PowerState)

	// The largest disk of a sku is a disk like any other, and the host
	// starts again with it.
	h.ok("disk", "update", "--name", "vm1_OsDisk", "--size", "32767G")
	h.stop(syscall.SIGTERM)
	h.start()
	h.json(&vm, "vm", "show", "--name", "vm1")
	require.Equal(t, "running", vm.PowerState)
	st, err := os.Stat(h.img("vm1", "os.img"))
	require.NoError(t, err)
	require.Equal(t, int64(32767)<<30, st.Size())
}

// TestHostLeftoversAndGC: what no record owns is listed at start and by
// host gc --dry-run true, removed only by host gc; a fresh, empty state
// directory pointed at the same storage and host directory removes nothing.
func TestHostLeftoversAndGC(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "d1", "--size", "16M")
	h.ok("snapshot", "create", "--name", "s1", "--source", "d1")
	h.ok("image", "create", "--name", "i1", "--source", "s1")
	var d diskJSON
	h.json(&d, "disk", "show", "--name", "d1")
	// A leftover as a crash in disk create leaves one: a disk's objects,
	// with its wrapped key, that no record names.
	orphan := "disks/0123abcd-0000-4000-8000-000000000000"
	sh(t, "cp -a "+filepath.Join(h.storage, d.StoragePrefix)+" "+filepath.Join(h.storage, orphan))
	h.stop(syscall.SIGTERM)
	h.start()
	require.Contains(t, h.logs.String(), "leftover that no record owns")
	require.Contains(t, h.logs.String(), orphan)
	require.DirExists(t, filepath.Join(h.storage, orphan), "start-up removed a leftover")

	out := h.ok("host", "gc", "--dry-run", "true")
	require.Contains(t, out, orphan)
	require.Contains(t, out, "would remove")
	require.DirExists(t, filepath.Join(h.storage, orphan), "a dry run removed a leftover")
	out = h.ok("host", "gc")
	require.Contains(t, out, orphan)
	require.Contains(t, out, "removed")
	require.NoDirExists(t, filepath.Join(h.storage, orphan))
	out = h.ok("host", "gc", "--dry-run", "true")
	require.NotContains(t, out, orphan)
	h.ok("disk", "create", "--name", "d2", "--source", "s1")
	h.ok("disk", "create", "--name", "d3", "--source", "i1")

	// A wrong --state: empty, on the same storage. Nothing goes.
	h.stop(syscall.SIGTERM)
	storageBefore, hostBefore := storageFiles(t, h.storage), storageFiles(t, h.hostDir)
	h.state = filepath.Join(t.TempDir(), "other-state")
	h.start()
	require.Contains(t, h.logs.String(), "nothing was removed")
	h.ok("disk", "list")
	h.stop(syscall.SIGTERM)
	require.Equal(t, storageBefore, storageFiles(t, h.storage))
	require.Equal(t, hostBefore, storageFiles(t, h.hostDir))
}

// TestHostOutputClosed: hostcryptd whose log goes to a pipe nobody reads
// any more (a terminal closed, a tee interrupted) keeps serving, and on
// SIGTERM flushes its disks, unmounts and says it stopped. Before, its next
// log line ended it with SIGPIPE, leaving a dead mount and unflushed disks.
func TestHostOutputClosed(t *testing.T) {
	requireFUSE(t)
	ks := startKeystore(t)
	root := t.TempDir()
	h := &host{t: t, ks: ks, state: filepath.Join(root, "state"), storage: filepath.Join(root, "storage"),
		hostDir: filepath.Join(root, "host"), mount: filepath.Join(root, "mnt")}
	r, w, err := os.Pipe()
	require.NoError(t, err)
	cmd := exec.Command(filepath.Join(bins(t), "hostcryptd"), "--state", h.state, "--storage", h.storage,
		"--host-dir", h.hostDir, "--mount", h.mount, "--keystore", ks.url, "--keystore-ca", filepath.Join(ks.dir, "ca.pem"),
		"--token-file", filepath.Join(ks.dir, "platform.token"))
	cmd.Stdout, cmd.Stderr = w, w
	require.NoError(t, cmd.Start())
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		exec.Command("umount", "-l", h.mount).Run()
	})
	lines := bufio.NewScanner(r)
	for lines.Scan() && !strings.Contains(lines.Text(), "hostcryptd ready") {
	}
	r.Close() // nobody reads the log from now on

	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M")
	sh(t, "printf 'flushed at stop' | dd of="+h.img("vm1", "os.img")+" bs=4k conv=notrunc status=none")
	h.ok("vm", "list")
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		require.NoError(t, err, "hostcryptd did not stop cleanly")
	case <-time.After(60 * time.Second):
		t.Fatal("hostcryptd did not stop")
	}
	require.False(t, isMounted(h.mount), "the mount stayed")

	h.start()
	t.Cleanup(func() { h.stop(syscall.SIGTERM) })
	out := sh(t, "head -c 15 "+h.img("vm1", "os.img"))
	require.Equal(t, "flushed at stop", out)
	h.stop(syscall.SIGTERM)
	require.Contains(t, lastLine(h.logs.String()), "hostcryptd stopped")
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndex(s, "\n")+1:]
}
