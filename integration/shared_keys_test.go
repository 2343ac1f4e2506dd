//go:build ceph

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage/location"
)

// The tests of customer keys on a pool that several hosts share: each host
// has its own key store identity, acts for the disk encryption sets'
// identities, and seals the shared records with its group's key.

// hostToken has the key store's administrator create host name's identity
// in group, and returns the file holding its token.
func hostToken(t *testing.T, ks *ksProc, name, group string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name+".token")
	_, errOut, code := runCmd(bin(t, "hostcrypt"), "--keystore", ks.url, "--keystore-ca", filepath.Join(ks.dir, "ca.pem"),
		"--token-file", filepath.Join(ks.dir, "admin.token"),
		"identity", "create", "--type", "Host", "--host-group", group, "--display-name", "host/"+name, "--token-out", f)
	require.Equal(t, 0, code, errOut)
	return f
}

// keyedPoolHosts starts two hosts on one pool, each with its own host
// identity of one group.
func keyedPoolHosts(t *testing.T, extra ...string) (ks *ksProc, loc string, a, b *host) {
	ks = startKeystore(t)
	loc = sharedPool(t)
	a = newPoolHost(t, ks, loc, "host-a", append([]string{"--host-token-file", hostToken(t, ks, "host-a", "itest")}, extra...)...)
	b = newPoolHost(t, ks, loc, "host-b", append([]string{"--host-token-file", hostToken(t, ks, "host-b", "itest")}, extra...)...)
	return ks, loc, a, b
}

type actorAudit struct {
	Op        string `json:"operationName"`
	Caller    string `json:"callerObjectId"`
	Kid       string `json:"kid"`
	Result    int    `json:"resultCode"`
	ActorName string `json:"actorName"`
	ActorType string `json:"actorType"`
}

// TestTwoHostsCustomerKeyMove: a disk encryption set made on host A, whose
// identity no host keeps a credential of, serves host B: a VM with a
// customer-managed disk deallocated on A starts on B with its data; the
// key store's audit names the set's identity and the host for each use; a
// key disabled then stops the VM on B.
func TestTwoHostsCustomerKeyMove(t *testing.T) {
	_, _, a, b := keyedPoolHosts(t, "--key-check-interval", "1s")
	kid, principal := cmkVM(t, a)
	version := kid[strings.LastIndex(kid, "/")+1:]
	sum := writePattern(t, a.img("vm1", "data-0.img"))
	for _, h := range []*host{a, b} {
		raw, err := os.ReadFile(filepath.Join(h.state, "secrets.json"))
		if err == nil {
			assert.NotContains(t, string(raw), "des1", "no host keeps the set's credential")
		}
	}

	a.ok("vm", "deallocate", "--name", "vm1")
	b.ok("vm", "start", "--name", "vm1")
	var vm struct {
		PowerState string `json:"powerState"`
		Host       string `json:"host"`
	}
	a.json(&vm, "vm", "show", "--name", "vm1")
	assert.Equal(t, "host-b", vm.Host)
	assert.Equal(t, sum, readBack(t, b.img("vm1", "data-0.img")), "the customer-managed disk's data, on B")

	var recs []actorAudit
	a.json(&recs, "keyvault", "audit", "--name", "vault1")
	by := map[string]int{}
	for _, r := range recs {
		if r.Result != 200 || (r.Op != "KeyWrap" && r.Op != "KeyUnwrap") {
			continue
		}
		assert.Equal(t, principal, r.Caller, "%s as the set's identity", r.Op)
		assert.Equal(t, "Host", r.ActorType, "%s by a host", r.Op)
		by[r.ActorName+" "+r.Op]++
	}
	assert.Positive(t, by["host/host-a KeyWrap"], "A wrapped the disk's key: %v", by)
	assert.Positive(t, by["host/host-b KeyUnwrap"], "B unwrapped it: %v", by)

	// Disabled in the key store: B, which runs the VM, stops it.
	a.ok("key", "set-attributes", "--vault-name", "vault1", "--name", "k1", "--version", version, "--enabled", "false")
	st := a.waitPower(t, "stopped", 15*time.Second)
	assert.Contains(t, st.Reason, kid)
	_, errOut, code := a.run("vm", "start", "--name", "vm1")
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, kid, "A refuses it too")
}

// TestTwoHostsSealedRecords: someone who writes the pool turns a
// customer-managed disk's record into a platform-managed one. Both hosts
// refuse the records, naming the disk, until it is put back; nothing was
// opened with the wrong wrapper.
func TestTwoHostsSealedRecords(t *testing.T) {
	_, loc, a, b := keyedPoolHosts(t)
	cmkVM(t, a)
	a.ok("vm", "deallocate", "--name", "vm1")

	ctx := context.Background()
	be, err := location.Open(ctx, loc)
	require.NoError(t, err)
	defer be.Close()
	good, err := be.ReadMeta(ctx, "cluster/records.json")
	require.NoError(t, err)
	require.Contains(t, string(good), `"seals"`)
	var top map[string]any
	require.NoError(t, json.Unmarshal(good, &top))
	c1 := top["disks"].(map[string]any)["c1"].(map[string]any)
	c1["encryption"] = map[string]any{"type": "EncryptionAtRestWithPlatformKey"}
	bad, err := json.Marshal(top)
	require.NoError(t, err)
	require.NoError(t, be.WriteMeta(ctx, "cluster/records.json", bad))

	for _, h := range []*host{a, b} {
		_, errOut, code := h.run("vm", "start", "--name", "vm1")
		assert.NotEqual(t, 0, code)
		assert.Contains(t, errOut, `disk "c1" does not match its seal`)
		_, errOut, code = h.run("disk", "show", "--name", "c1")
		assert.NotEqual(t, 0, code)
		assert.Contains(t, errOut, "integrity check")
	}
	_, err = os.Stat(b.img("vm1", "data-0.img"))
	assert.ErrorIs(t, err, os.ErrNotExist)

	require.NoError(t, be.WriteMeta(ctx, "cluster/records.json", good))
	b.ok("vm", "start", "--name", "vm1")
	var d struct {
		Encryption struct {
			Type string `json:"type"`
		} `json:"encryption"`
	}
	a.json(&d, "disk", "show", "--name", "c1")
	assert.Equal(t, "EncryptionAtRestWithCustomerKey", d.Encryption.Type)
}

// TestTwoHostsKeyRotationOnce: a new version of a set's key, with both
// hosts' rotation loops running every second: each of the set's disks is
// re-wrapped exactly once (one unwrap with the old version each, in the
// key store's audit), the one of the VM running on B by B, and the set's
// rotation ends with no claim left.
func TestTwoHostsKeyRotationOnce(t *testing.T) {
	_, _, a, b := keyedPoolHosts(t, "--rotation-interval", "1s", "--key-check-interval", "1s")
	kid, principal := cmkVM(t, b)
	a.ok("disk", "create", "--name", "c2", "--size", "16M", "--disk-encryption-set", "des1")
	a.ok("disk", "create", "--name", "c3", "--size", "16M", "--disk-encryption-set", "des1")
	sum := writePattern(t, b.img("vm1", "data-0.img"))

	// (des update and des show check the set's access with a wrap and an
	// unwrap: before the mark.)
	a.ok("des", "update", "--name", "des1", "--enable-auto-key-rotation", "true")
	var last []struct {
		Seq uint64 `json:"seq"`
	}
	a.json(&last, "keyvault", "audit", "--name", "vault1", "--last", "1")
	require.Len(t, last, 1)

	newKid := a.kid("rotate", "--vault-name", "vault1", "--name", "k1")
	require.NotEqual(t, kid, newKid)
	waitFor(t, 30*time.Second, "every disk of the set on the new version", func() bool {
		for _, n := range []string{"c1", "c2", "c3"} {
			var d diskJSON
			a.json(&d, "disk", "show", "--name", n)
			if d.KeyID != newKid {
				return false
			}
		}
		var des desJSON
		a.json(&des, "des", "show", "--name", "des1")
		return len(des.PreviousKeys) == 0
	})
	// Both loops have had their passes since.
	time.Sleep(2 * time.Second)

	var recs []actorAudit
	a.json(&recs, "keyvault", "audit", "--name", "vault1", "--after", fmt.Sprint(last[0].Seq))
	by := map[string]int{}
	for _, r := range recs {
		if r.Op == "KeyUnwrap" && r.Result == 200 && r.Kid == kid {
			assert.Equal(t, principal, r.Caller)
			by[r.ActorName]++
		}
	}
	assert.Equal(t, 3, by["host/host-a"]+by["host/host-b"], "three disks, each re-wrapped once: %v", by)
	assert.Positive(t, by["host/host-b"], "B re-wrapped the disk of the VM it runs: %v", by)

	var vm vmState
	b.json(&vm, "vm", "show", "--name", "vm1")
	assert.Equal(t, "running", vm.PowerState)
	b.ok("vm", "stop", "--name", "vm1")
	b.ok("vm", "start", "--name", "vm1")
	assert.Equal(t, sum, readBack(t, b.img("vm1", "data-0.img")), "the disk opens under its new wrap with its data")
}

// hostFails runs hostcryptd as h would start, and expects it to exit
// with an error within 30 s; it returns the output.
func hostFails(t *testing.T, ks *ksProc, loc, name string, extra ...string) string {
	t.Helper()
	root := t.TempDir()
	args := append([]string{"--state", filepath.Join(root, "state"), "--storage", loc, "--host-dir", filepath.Join(root, "host"),
		"--mount", filepath.Join(root, "mnt"), "--keystore", ks.url, "--keystore-ca", filepath.Join(ks.dir, "ca.pem"),
		"--token-file", filepath.Join(ks.dir, "platform.token"), "--host-name", name}, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin(t, "hostcryptd"), args...).CombinedOutput()
	require.Error(t, err, "hostcryptd started: %s", out)
	require.NoError(t, ctx.Err(), "hostcryptd neither served nor exited: %s", out)
	return string(out)
}

// TestTwoHostsAdoptUnsealedRecords: records written by hosts without an
// identity (as an older version did) are refused by a host with one, at
// start, until one host adopts them with --adopt-unsealed-records; then
// every host with an identity uses them, and a host without one is
// refused rather than drop their seals.
func TestTwoHostsAdoptUnsealedRecords(t *testing.T) {
	ks := startKeystore(t)
	loc := sharedPool(t)
	old := newPoolHost(t, ks, loc, "host-a")
	old.ok("disk", "create", "--name", "d1", "--size", "16M")
	old.stop(syscall.SIGTERM)

	tokA, tokB := hostToken(t, ks, "host-a", "itest"), hostToken(t, ks, "host-b", "itest")
	out := hostFails(t, ks, loc, "host-a", "--host-token-file", tokA)
	assert.Contains(t, out, "no seal")
	assert.Contains(t, out, "--adopt-unsealed-records")

	a := newPoolHost(t, ks, loc, "host-a", "--host-token-file", tokA, "--adopt-unsealed-records")
	assert.Contains(t, a.logs.String(), "unsealed shared records adopted")
	b := newPoolHost(t, ks, loc, "host-b", "--host-token-file", tokB)
	var d diskJSON
	b.json(&d, "disk", "show", "--name", "d1")
	assert.Equal(t, "d1", d.Name)

	out = hostFails(t, ks, loc, "host-c")
	assert.Contains(t, out, "are sealed")
	assert.Contains(t, out, "--host-token-file")
}
