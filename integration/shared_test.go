//go:build ceph

package integration

import (
	"bytes"
	"fmt"
	"hostcrypt/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests of many hosts on one RADOS pool: real hostcryptd processes
// (built with the RADOS backend), one keystored, a throw-away cluster
// (make test-ceph; HOSTCRYPT_RADOS names it).

func init() { buildTags += ",ceph,pacific" }

// sharedPool returns the test cluster's location in a namespace of the
// test's own.
func sharedPool(t *testing.T) string {
	t.Helper()
	l := testenv.RADOS(t, "itest-")
	return l.String()
}

// newPoolHost starts hostcryptd as host name on the pool at loc.
func newPoolHost(t *testing.T, ks *ksProc, loc, name string, extra ...string) *host {
	t.Helper()
	requireFUSE(t)
	root := t.TempDir()
	h := &host{t: t, ks: ks, state: filepath.Join(root, "state"), storage: loc,
		hostDir: filepath.Join(root, "host"), mount: filepath.Join(root, "mnt"), extra: append([]string{"--host-name", name}, extra...)}
	h.start()
	t.Cleanup(func() { h.stop(syscall.SIGTERM) })
	return h
}

type hostJSON struct {
	Name  string   `json:"name"`
	State string   `json:"state"`
	This  bool     `json:"this"`
	VMs   []string `json:"vms"`
}

func hostStates(h *host) map[string]hostJSON {
	var hs []hostJSON
	h.json(&hs, "host", "list")
	out := map[string]hostJSON{}
	for _, x := range hs {
		out[x.Name] = x
	}
	return out
}

// TestTwoHostsShareRecordsAndMoveAVM: two hostcryptd on one pool see the
// same records; two CLIs creating one name on the two hosts race with one
// winner; a VM runs on one host, which the other names and leaves alone;
// deallocated on A and started on B, its ext4 data disk has every file
// with the same sha256 and checks clean, and its temp disk on B is new and
// empty while A's is shredded.
func TestTwoHostsShareRecordsAndMoveAVM(t *testing.T) {
	ks := startKeystore(t)
	loc := sharedPool(t)
	a := newPoolHost(t, ks, loc, "host-a")
	b := newPoolHost(t, ks, loc, "host-b")

	// One name, two hosts, at once: exactly one disk.
	for i := range 3 {
		name := fmt.Sprintf("race%d", i)
		codes := make([]int, 2)
		errs := make([]string, 2)
		var wg sync.WaitGroup
		for j, h := range []*host{a, b} {
			wg.Go(func() { _, errs[j], codes[j] = h.run("disk", "create", "--name", name, "--size", "16M") })
		}
		wg.Wait()
		assert.ElementsMatch(t, []bool{true, false}, []bool{codes[0] == 0, codes[1] == 0}, "%s: %v", name, errs)
		for j := range codes {
			if codes[j] != 0 {
				assert.Contains(t, errs[j], name, "the loser's error names the disk")
			}
		}
		var ds []diskJSON
		b.json(&ds, "disk", "list")
		n := 0
		for _, d := range ds {
			if d.Name == name {
				n++
			}
		}
		assert.Equal(t, 1, n)
	}

	hs := hostStates(b)
	assert.Equal(t, "alive", hs["host-a"].State)
	assert.Equal(t, "alive", hs["host-b"].State)
	assert.True(t, hs["host-b"].This)

	a.ok("disk", "create", "--name", "data1", "--size", "128M")
	a.ok("vm", "create", "--name", "vm1", "--os-disk-size", "64M", "--data-disks", "data1", "--temp-disk-size", "16M")
	var vm struct {
		PowerState string `json:"powerState"`
		Host       string `json:"host"`
	}
	b.json(&vm, "vm", "show", "--name", "vm1")
	assert.Equal(t, "running", vm.PowerState)
	assert.Equal(t, "host-a", vm.Host, "vm show on b names the VM's host")
	assert.Contains(t, b.ok("vm", "show", "--name", "vm1"), "host-a")
	assert.Equal(t, []string{"vm1"}, hostStates(b)["host-a"].VMs)
	_, errOut, code := b.run("vm", "start", "--name", "vm1")
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, `host "host-a"`)
	_, err := os.Stat(b.img("vm1", "data-0.img"))
	assert.ErrorIs(t, err, os.ErrNotExist, "nothing of vm1 on b")

	// ext4 with files on A.
	mnt := t.TempDir()
	loop := attachLoop(t, a.img("vm1", "data-0.img"), "--direct-io=on")
	sh(t, "mkfs.ext4 -q -F "+loop)
	sh(t, "mount "+loop+" "+mnt)
	sh(t, fmt.Sprintf(`cd %s && mkdir -p a/b && head -c 3M /dev/urandom > a/big && for i in $(seq 1 20); do head -c $((i*1000)) /dev/urandom > a/b/f$i; done && sync`, mnt))
	sums := sh(t, "cd "+mnt+" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum")
	sh(t, "umount "+mnt)
	sh(t, "losetup -d "+loop)
	// Something on A's temp disk, which must not follow the VM.
	sh(t, "printf 'temp-of-a' | dd of="+a.img("vm1", "temp.img")+" conv=notrunc,fsync status=none")

	// The move.
	tempOfA := func() string {
		out, err := exec.Command("find", a.hostDir, "-path", "*temp*", "-name", "*vm1*").Output()
		require.NoError(t, err)
		return strings.TrimSpace(string(out))
	}
	require.NotEmpty(t, tempOfA(), "A holds vm1's temp disk")
	a.ok("vm", "deallocate", "--name", "vm1")
	assert.Empty(t, tempOfA(), "A's temp disk of vm1 is shredded")
	b.ok("vm", "start", "--name", "vm1")
	b.json(&vm, "vm", "show", "--name", "vm1")
	assert.Equal(t, "host-b", vm.Host)
	loop = attachLoop(t, b.img("vm1", "data-0.img"))
	sh(t, "e2fsck -f -n "+loop)
	sh(t, "mount "+loop+" "+mnt)
	defer exec.Command("umount", mnt).Run()
	got := sh(t, "cd "+mnt+" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum")
	assert.Equal(t, sums, got, "every file has the same sha256 on B")
	sh(t, "umount "+mnt)
	sh(t, "losetup -d "+loop)
	zero := sh(t, "cmp -n 16777216 "+b.img("vm1", "temp.img")+" /dev/zero && echo empty")
	assert.Contains(t, zero, "empty", "the temp disk on B is new and empty")

	// A stops: B sees it lost at once (a clean stop gives its lock back).
	a.stop(syscall.SIGTERM)
	hs = hostStates(b)
	assert.Equal(t, "lost", hs["host-a"].State)
	assert.Equal(t, []string{"vm1"}, hs["host-b"].VMs)
}

// TestTwoHostsKeyDisable: a customer key disabled in the key store stops
// the VM on the host that runs it (B), within its check interval; host A
// sees the VM stopped, with the reason naming the key, and B refuses to
// start it again until the key is enabled.
func TestTwoHostsKeyDisable(t *testing.T) {
	ks := startKeystore(t)
	loc := sharedPool(t)
	a := newPoolHost(t, ks, loc, "host-a", "--key-check-interval", "1s")
	b := newPoolHost(t, ks, loc, "host-b", "--key-check-interval", "1s")
	kid, _ := cmkVM(t, b)
	version := kid[strings.LastIndex(kid, "/")+1:]
	var vm struct {
		PowerState string `json:"powerState"`
		Reason     string `json:"powerStateReason"`
		Host       string `json:"host"`
	}
	a.json(&vm, "vm", "show", "--name", "vm1")
	require.Equal(t, "running", vm.PowerState)
	require.Equal(t, "host-b", vm.Host)
	sum := writePattern(t, b.img("vm1", "data-0.img"))

	// The key store's admin disables the key (through A's CLI: any host).
	a.ok("key", "set-attributes", "--vault-name", "vault1", "--name", "k1", "--version", version, "--enabled", "false")
	st := a.waitPower(t, "stopped", 15*time.Second)
	assert.Contains(t, st.Reason, kid, "A sees B's enforcement, naming the key")
	_, err := os.Stat(b.img("vm1", "data-0.img"))
	assert.ErrorIs(t, err, os.ErrNotExist, "the image is gone on B")
	_, errOut, code := b.run("vm", "start", "--name", "vm1")
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, kid)

	a.ok("key", "set-attributes", "--vault-name", "vault1", "--name", "k1", "--version", version, "--enabled", "true")
	b.ok("vm", "start", "--name", "vm1")
	assert.Equal(t, sum, readBack(t, b.img("vm1", "data-0.img")), "no written byte lost")
}

// ext4Files puts ext4 with files on img (through a loop device), syncs,
// unmounts and returns the files' sha256 sums.
func ext4Files(t *testing.T, img string) string {
	t.Helper()
	mnt := t.TempDir()
	loop := attachLoop(t, img, "--direct-io=on")
	sh(t, "mkfs.ext4 -q -F "+loop)
	sh(t, "mount "+loop+" "+mnt)
	sh(t, fmt.Sprintf(`cd %s && mkdir -p a/b && head -c 2M /dev/urandom > a/big && for i in $(seq 1 10); do head -c $((i*1000)) /dev/urandom > a/b/f$i; done && sync`, mnt))
	sums := sh(t, "cd "+mnt+" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum")
	sh(t, "umount "+mnt)
	sh(t, "losetup -d "+loop)
	return sums
}

// checkExt4 checks img with e2fsck -f -n and returns its files' sums.
func checkExt4(t *testing.T, img string) string {
	t.Helper()
	mnt := t.TempDir()
	loop := attachLoop(t, img)
	sh(t, "e2fsck -f -n "+loop)
	sh(t, "mount -o ro "+loop+" "+mnt)
	defer func() {
		exec.Command("umount", mnt).Run()
		exec.Command("losetup", "-d", loop).Run()
	}()
	return sh(t, "cd "+mnt+" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum")
}

type vmView struct {
	PowerState string `json:"powerState"`
	Reason     string `json:"powerStateReason"`
	Host       string `json:"host"`
}

func waitHost(t *testing.T, h *host, vm, host string) vmView {
	t.Helper()
	var v vmView
	waitFor(t, 60*time.Second, vm+" to run on "+host, func() bool {
		h.json(&v, "vm", "show", "--name", vm)
		return v.PowerState == "running" && v.Host == host && strings.HasPrefix(v.Reason, "taken over by host "+host)
	})
	return v
}

// TestTwoHostsHealAfterKill: host A is killed (kill -9) with its VM
// running; once its leases run out, B takes the VM over by itself (the
// reason in vm show), its ext4 disk checks clean with every file; A,
// restarted, brings back nothing of it.
func TestTwoHostsHealAfterKill(t *testing.T) {
	ks := startKeystore(t)
	loc := sharedPool(t)
	a := newPoolHost(t, ks, loc, "host-a", "--writer-lease", "4s")
	b := newPoolHost(t, ks, loc, "host-b", "--writer-lease", "4s")
	a.ok("disk", "create", "--name", "data1", "--size", "64M")
	a.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M", "--data-disks", "data1", "--temp-disk-size", "8M")
	sums := ext4Files(t, a.img("vm1", "data-0.img"))

	a.stop(syscall.SIGKILL)
	v := waitHost(t, b, "vm1", "host-b")
	assert.Contains(t, v.Reason, "taken over by host host-b: host host-a was lost")
	assert.Equal(t, sums, checkExt4(t, b.img("vm1", "data-0.img")), "every flushed file is there")

	a.start()
	_, err := os.Stat(a.img("vm1", "data-0.img"))
	assert.ErrorIs(t, err, os.ErrNotExist, "the restarted old owner brings back nothing of vm1")
	assert.Equal(t, []string{"vm1"}, hostStates(a)["host-b"].VMs)
}

// TestTwoHostsHealAfterFreeze: host A, running a VM whose guest keeps
// writing sequence-numbered blocks, each flushed before the next, is frozen
// (SIGSTOP). B takes the VM over once A's leases ran out, fencing A's
// client first. A, resumed, writes nothing more to the store and stops its
// copy of the VM, leaving the record to B; on B the ext4 disk checks clean,
// every block A acknowledged is there and none written after.
func TestTwoHostsHealAfterFreeze(t *testing.T) {
	ks := startKeystore(t)
	loc := sharedPool(t)
	a := newPoolHost(t, ks, loc, "host-a", "--writer-lease", "4s")
	b := newPoolHost(t, ks, loc, "host-b", "--writer-lease", "4s")
	a.ok("disk", "create", "--name", "data1", "--size", "64M")
	a.ok("disk", "create", "--name", "seq", "--size", "16M")
	a.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M", "--data-disks", "data1,seq")
	sums := ext4Files(t, a.img("vm1", "data-0.img"))

	// The guest's writer, a process of its own (a file of a frozen FUSE
	// daemon must not be open in the test's process: every fork would
	// close it and wait): block i holds "seq=i", written with O_DIRECT
	// and fsynced; i is appended to acked once that returned.
	acked := filepath.Join(t.TempDir(), "acked")
	// It goes on past failures, 20 blocks more, so that writes A is
	// handed after the takeover are tried too.
	guest := exec.Command("sh", "-c", `i=0; fails=0; while [ $i -lt 4096 ]; do
		if printf 'seq=%08d\n' $i | dd of="$1" bs=4096 seek=$i conv=sync,notrunc,fsync oflag=direct status=none 2>/dev/null; then
			echo $i >> "$2"
		else
			fails=$((fails+1)); [ $fails -lt 20 ] || exit 1
		fi
		i=$((i+1)); done`, "guest", a.img("vm1", "data-1.img"), acked)
	require.NoError(t, guest.Start())
	done := make(chan error, 1)
	go func() { done <- guest.Wait() }()
	lastAcked := func() int {
		raw, _ := os.ReadFile(acked)
		lines := strings.Fields(string(raw))
		if len(lines) == 0 {
			return -1
		}
		n, _ := strconv.Atoi(lines[len(lines)-1])
		return n
	}
	waitFor(t, 30*time.Second, "the guest to write", func() bool { return lastAcked() > 20 })

	pid := a.cmd.Process.Pid
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			abortFUSE(t, a.mount)
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	v := waitHost(t, b, "vm1", "host-b")
	assert.Contains(t, v.Reason, "host host-a was lost")
	last := lastAcked()
	assert.Equal(t, "fenced", hostStates(b)["host-a"].State)

	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	resumed = true
	select {
	case err := <-done:
		require.Error(t, err, "the guest's next write or flush fails on A")
	case <-time.After(60 * time.Second):
		abortFUSE(t, a.mount)
		<-done
		t.Fatal("the guest's writes on A neither failed nor went on after A resumed")
	}
	// The write in flight at the freeze may have reached the store before
	// the fence, and its flush then be acknowledged without a call to the
	// store; nothing after it is.
	final := lastAcked()
	assert.LessOrEqual(t, final, last+1, "no write acknowledged on A after the one in flight at the takeover")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("host-a's log:\n%s", a.logs.String())
		}
	})
	waitFor(t, 30*time.Second, "A to stop its copy of vm1", func() bool {
		return strings.Contains(a.logs.String(), "taken over by host host-b")
	})
	b.json(&v, "vm", "show", "--name", "vm1")
	assert.Equal(t, "running", v.PowerState)
	assert.Equal(t, "host-b", v.Host, "A left the record alone")

	// On the store, as B reads it: every acknowledged block, the one in
	// flight at most, nothing later.
	got, err := os.ReadFile(b.img("vm1", "data-1.img"))
	require.NoError(t, err)
	for i := 0; i < len(got)/4096; i++ {
		blk := got[i*4096 : (i+1)*4096]
		want := fmt.Sprintf("seq=%08d\n", i)
		switch {
		case i <= final:
			require.Equal(t, want, string(blk[:len(want)]), "acknowledged block %d", i)
		case i == last+1:
			// In flight at the freeze: it may have landed before the fence.
			if !bytes.Equal(blk, make([]byte, 4096)) {
				require.Equal(t, want, string(blk[:len(want)]), "the block in flight, %d", i)
			}
		default:
			require.Equal(t, make([]byte, 4096), blk, "block %d, written to A after the takeover, is on the store", i)
		}
	}
	assert.Equal(t, sums, checkExt4(t, b.img("vm1", "data-0.img")))
	_, errOut, code := a.run("vm", "start", "--name", "vm1")
	assert.NotEqual(t, 0, code, "a second start is a Conflict")
	assert.Contains(t, errOut, `host "host-b"`)
	hs := hostStates(b)
	assert.Equal(t, "alive", hs["host-a"].State, "A renewed its registration on resuming")
}

// abortFUSE aborts the FUSE connection of the file system mounted at dir
// (through /sys/fs/fuse/connections/N/abort), failing every request that
// waits on it.
func abortFUSE(t *testing.T, dir string) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Logf("abort FUSE at %s: %v", dir, err)
		return
	}
	minor := (st.Dev & 0xff) | ((st.Dev >> 12) & 0xfff00)
	if err := os.WriteFile(fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", minor), []byte("1"), 0); err != nil {
		t.Logf("abort FUSE at %s: %v", dir, err)
	}
}
