package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/keystore/client"
)

// cmkVM sets up vault1/k1, a disk encryption set with access granted, and a
// running VM vm1 whose data disk c1 uses it. It returns the key id.
func cmkVM(t *testing.T, h *host) (kid, principal string) {
	t.Helper()
	h.ok("keyvault", "create", "--name", "vault1")
	keyKid := h.kid("create", "--vault-name", "vault1", "--name", "k1")
	var des struct {
		Identity struct {
			PrincipalID string `json:"principalId"`
		} `json:"identity"`
	}
	h.json(&des, "des", "create", "--name", "des1", "--key-url", keyKid)
	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", des.Identity.PrincipalID, "--key-permissions", "get,wrapKey,unwrapKey")
	h.ok("disk", "create", "--name", "c1", "--size", "16M", "--disk-encryption-set", "des1")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M", "--data-disks", "c1")
	return keyKid, des.Identity.PrincipalID
}

type vmState struct {
	PowerState string `json:"powerState"`
	Reason     string `json:"powerStateReason"`
	KeyWarning string `json:"keyWarning"`
}

func (h *host) waitPower(t *testing.T, state string, within time.Duration) vmState {
	t.Helper()
	var vm vmState
	waitFor(t, within, "vm1 to be "+state, func() bool {
		h.json(&vm, "vm", "show", "--name", "vm1")
		return vm.PowerState == state
	})
	return vm
}

// writePattern writes a file's bytes into the image with O_DIRECT (reaching
// the daemon) but without fsync: a clean stop must still keep them.
func writePattern(t *testing.T, img string) string {
	src := filepath.Join(t.TempDir(), "p")
	sh(t, "head -c 3M /dev/urandom > "+src)
	sh(t, "dd if="+src+" of="+img+" bs=64k seek=5 oflag=direct conv=notrunc status=none")
	return sh(t, "sha256sum < "+src)
}

func readBack(t *testing.T, img string) string {
	return sh(t, "dd if="+img+" bs=64k skip=5 count=48 iflag=direct status=none | sha256sum")
}

// TestHostKeyEnforcement: disabling the key version, then removing the access
// policy, each stops the VM within the check interval with a reason naming
// the key; start is refused until the key is usable again; no written byte is
// lost.
func TestHostKeyEnforcement(t *testing.T) {
	h := newHost(t, startKeystore(t), "--key-check-interval", "1s")
	kid, principal := cmkVM(t, h)
	img := h.img("vm1", "data-0.img")
	version := kid[strings.LastIndex(kid, "/")+1:]

	// Under fio load: disable the key version.
	fio := startFio(t, img)
	sum := writePattern(t, img)
	h.ok("key", "set-attributes", "--vault-name", "vault1", "--name", "k1", "--version", version, "--enabled", "false")
	vm := h.waitPower(t, "stopped", 15*time.Second)
	fio.Wait()
	require.Contains(t, vm.Reason, kid)
	_, err := os.Stat(img)
	require.ErrorIs(t, err, os.ErrNotExist, "the images go when the VM stops")
	_, errOut, code := h.run("vm", "start", "--name", "vm1")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, kid)
	require.Contains(t, errOut, "KeyDisabled")

	h.ok("key", "set-attributes", "--vault-name", "vault1", "--name", "k1", "--version", version, "--enabled", "true")
	h.ok("vm", "start", "--name", "vm1")
	require.Equal(t, sum, readBack(t, img))

	// Revoke the identity's access policy.
	h.ok("keyvault", "delete-policy", "--name", "vault1", "--object-id", principal)
	vm = h.waitPower(t, "stopped", 15*time.Second)
	require.Contains(t, vm.Reason, kid)
	_, errOut, code = h.run("vm", "start", "--name", "vm1")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "ForbiddenByPolicy")
	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", principal, "--key-permissions", "get,wrapKey,unwrapKey")
	h.ok("vm", "start", "--name", "vm1")
	require.Equal(t, sum, readBack(t, img))

	// Soft delete, then recover.
	h.ok("key", "delete", "--vault-name", "vault1", "--name", "k1")
	h.waitPower(t, "stopped", 15*time.Second)
	_, _, code = h.run("vm", "start", "--name", "vm1")
	require.NotEqual(t, 0, code)
	h.ok("key", "recover", "--vault-name", "vault1", "--name", "k1")
	h.ok("vm", "start", "--name", "vm1")
	require.Equal(t, sum, readBack(t, img))
}

type fioProc struct{ done chan struct{} }

func (f *fioProc) Wait() { <-f.done }

// startFio runs verified random writes against img until it fails (the VM
// stops) or a minute passes.
func startFio(t *testing.T, img string) *fioProc {
	f := &fioProc{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		runCmd("fio", "--name=load", "--filename="+img, "--direct=1", "--size=4M", "--offset=8M", "--rw=randwrite",
			"--bs=4k", "--ioengine=libaio", "--iodepth=8", "--time_based", "--runtime=60", "--verify=crc32c",
			"--verify_state_save=0", "--output=/dev/null")
	}()
	time.Sleep(500 * time.Millisecond)
	return f
}

func adminClient(t *testing.T, ks *ksProc) *client.Client {
	c, err := client.New(ks.url, filepath.Join(ks.dir, "ca.pem"), filepath.Join(ks.dir, "admin.token"))
	require.NoError(t, err)
	return c
}

// TestHostKeyExpiry: by default an expired key stops the VM; with
// --on-key-expiry next-start it keeps running and only the next start fails.
func TestHostKeyExpiry(t *testing.T) {
	for _, mode := range []string{"shutdown", "next-start"} {
		t.Run(mode, func(t *testing.T) {
			ks := startKeystore(t)
			h := newHost(t, ks, "--key-check-interval", "1s", "--on-key-expiry", mode)
			kid, _ := cmkVM(t, h)
			version := kid[strings.LastIndex(kid, "/")+1:]
			img := h.img("vm1", "data-0.img")
			sum := writePattern(t, img)
			h.ok("key", "set-attributes", "--vault-name", "vault1", "--name", "k1", "--version", version,
				"--expires", time.Now().Add(48*time.Hour).UTC().Format(time.RFC3339))
			require.NoError(t, adminClient(t, ks).AdvanceClock(context.Background(), 72*time.Hour))
			if mode == "shutdown" {
				vm := h.waitPower(t, "stopped", 15*time.Second)
				require.Contains(t, vm.Reason, kid)
			} else {
				time.Sleep(3 * time.Second) // several checks
				h.waitPower(t, "running", time.Second)
				require.Equal(t, sum, readBack(t, img))
				h.ok("vm", "stop", "--name", "vm1")
			}
			_, errOut, code := h.run("vm", "start", "--name", "vm1")
			require.NotEqual(t, 0, code)
			require.Contains(t, errOut, "expired")
		})
	}
}

// TestHostKeyStoreOutage: an unreachable key store is not a revocation: the
// VM keeps running and shows a warning; once the data key lease runs out I/O
// fails with EIO, and it works again when the key store is back.
func TestHostKeyStoreOutage(t *testing.T) {
	ks := startKeystore(t)
	h := newHost(t, ks, "--key-check-interval", "1s", "--dek-lease", "4s")
	cmkVM(t, h)
	img := h.img("vm1", "data-0.img")
	sum := writePattern(t, img)
	require.NoError(t, ks.cmd.Process.Signal(syscall.SIGSTOP))
	defer ks.cmd.Process.Signal(syscall.SIGCONT)
	waitFor(t, 30*time.Second, "I/O to fail once the lease ends", func() bool {
		_, _, code := runCmd("dd", "if="+img, "of=/dev/null", "bs=4k", "count=1", "iflag=direct", "status=none")
		return code != 0
	})
	var vm vmState
	waitFor(t, 30*time.Second, "the warning", func() bool {
		h.json(&vm, "vm", "show", "--name", "vm1")
		return vm.KeyWarning != ""
	})
	require.Equal(t, "running", vm.PowerState, "an outage is not a revocation")
	require.NoError(t, ks.cmd.Process.Signal(syscall.SIGCONT))
	waitFor(t, 30*time.Second, "I/O to work again", func() bool {
		_, _, code := runCmd("dd", "if="+img, "of=/dev/null", "bs=4k", "count=1", "iflag=direct", "status=none")
		return code == 0
	})
	require.Equal(t, sum, readBack(t, img))

}
