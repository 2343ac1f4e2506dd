//go:build ceph

package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage/location"
)

// The tests of many hosts on one RADOS pool: real hostcryptd processes
// (built with the RADOS backend), one keystored, a throw-away cluster
// (make test-ceph; HOSTCRYPT_RADOS names it).

func init() { buildTags += ",ceph,pacific" }

// sharedPool returns the test cluster's location in a namespace of the
// test's own.
func sharedPool(t *testing.T) string {
	t.Helper()
	s := os.Getenv("HOSTCRYPT_RADOS")
	if s == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but HOSTCRYPT_RADOS is not: the RADOS tests need a cluster (make test-ceph starts one)")
		}
		t.Skip("no Ceph cluster: HOSTCRYPT_RADOS is unset")
	}
	l, err := location.Parse(s)
	require.NoError(t, err)
	require.NotNil(t, l.RADOS)
	ns := make([]byte, 5)
	rand.Read(ns)
	l.RADOS.Namespace = "itest-" + hex.EncodeToString(ns)
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

// TestTwoHostsFrozenOwnerLosesItsLease: host A, running a VM, is frozen
// (SIGSTOP) past its lease. B sees it lost, and still refuses the VM, which
// the records give to A. Resumed, A finds its writer lease gone on the OSD
// and stops the VM with the reason rather than write on; then B starts it
// with every write the guest had flushed.
func TestTwoHostsFrozenOwnerLosesItsLease(t *testing.T) {
	ks := startKeystore(t)
	loc := sharedPool(t)
	a := newPoolHost(t, ks, loc, "host-a", "--writer-lease", "4s")
	b := newPoolHost(t, ks, loc, "host-b", "--writer-lease", "4s")
	a.ok("disk", "create", "--name", "data1", "--size", "64M")
	a.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M", "--data-disks", "data1")
	src := filepath.Join(t.TempDir(), "p")
	sh(t, "head -c 3M /dev/urandom > "+src)
	sh(t, "dd if="+src+" of="+a.img("vm1", "data-0.img")+" bs=64k seek=5 oflag=direct conv=notrunc,fsync status=none")
	sum := sh(t, "sha256sum < "+src)

	pid := a.cmd.Process.Pid
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	waitFor(t, 30*time.Second, "host-a to be seen lost", func() bool { return hostStates(b)["host-a"].State == "lost" })
	_, errOut, code := b.run("vm", "start", "--name", "vm1")
	require.NotEqual(t, 0, code)
	assert.Contains(t, errOut, `host "host-a"`)
	// The disks' writer locks were last renewed before the freeze, as the
	// registration was, but not at the same moment: one more lease and
	// the OSD has seen them all expire.
	time.Sleep(4 * time.Second)

	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	resumed = true
	var vm struct {
		PowerState string `json:"powerState"`
		Reason     string `json:"powerStateReason"`
		Host       string `json:"host"`
	}
	waitFor(t, 30*time.Second, "host-a to stop vm1", func() bool {
		b.json(&vm, "vm", "show", "--name", "vm1")
		return vm.PowerState == "stopped"
	})
	assert.Contains(t, vm.Reason, "host-a lost its writer lease")
	assert.Contains(t, a.logs.String(), "writer lease is lost")
	b.ok("vm", "start", "--name", "vm1")
	assert.Equal(t, sum, readBack(t, b.img("vm1", "data-0.img")), "every flushed write is there on B")
	waitFor(t, 30*time.Second, "host-a to be alive again", func() bool { return hostStates(b)["host-a"].State == "alive" })
}
