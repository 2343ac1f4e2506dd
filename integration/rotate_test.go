package integration

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type desJSON struct {
	ActiveKey struct {
		KeyURL string `json:"keyUrl"`
	} `json:"activeKey"`
	PreviousKeys []struct {
		KeyURL string `json:"keyUrl"`
	} `json:"previousKeys"`
	LastKeyRotationTimestamp *time.Time `json:"lastKeyRotationTimestamp"`
	AutoKeyRotationError     string     `json:"autoKeyRotationError"`
}

// TestHostKeyRotation: a new key version is picked up by a set with
// auto-rotation while fio writes with verification: no I/O error, no
// restart, every disk re-wrapped, previousKeys empty, and from then on the
// audit log shows unwraps with the new version only. A manual switch to
// another key with des update re-wraps as well.
func TestHostKeyRotation(t *testing.T) {
	h := newHost(t, startKeystore(t), "--rotation-interval", "1s", "--key-check-interval", "1s")
	kid, principal := cmkVM(t, h)
	h.ok("des", "update", "--name", "des1", "--enable-auto-key-rotation", "true")
	img := h.img("vm1", "data-0.img")

	done := make(chan string, 1)
	go func() {
		_, errOut, code := runCmd("fio", "--name=rot", "--filename="+img, "--direct=1", "--size=8M", "--rw=randwrite",
			"--bs=4k", "--ioengine=libaio", "--iodepth=8", "--time_based", "--runtime=8", "--verify=crc32c",
			"--verify_fatal=1", "--verify_state_save=0", "--output=/dev/null")
		if code != 0 {
			done <- errOut
		}
		close(done)
	}()
	time.Sleep(time.Second)
	newKid := h.kid("rotate", "--vault-name", "vault1", "--name", "k1")
	require.NotEqual(t, kid, newKid)

	var d diskJSON
	waitFor(t, 20*time.Second, "the disk to be re-wrapped to the new version", func() bool {
		h.json(&d, "disk", "show", "--name", "c1")
		return d.KeyID == newKid
	})
	var des desJSON
	h.json(&des, "des", "show", "--name", "des1")
	require.Equal(t, newKid, des.ActiveKey.KeyURL)
	require.Empty(t, des.PreviousKeys)
	require.NotNil(t, des.LastKeyRotationTimestamp)
	require.Empty(t, des.AutoKeyRotationError)
	if errOut, failed := <-done; failed {
		t.Fatalf("fio failed during the rotation: %s", errOut)
	}
	var vm vmState
	h.json(&vm, "vm", "show", "--name", "vm1")
	require.Equal(t, "running", vm.PowerState)

	// From now on the disk is unwrapped with the new version only.
	var recs []struct {
		Seq    uint64 `json:"seq"`
		Op     string `json:"operationName"`
		Caller string `json:"callerObjectId"`
		Kid    string `json:"kid"`
	}
	require.NoError(t, json.Unmarshal([]byte(h.ok("-o", "json", "keyvault", "audit", "--name", "vault1")), &recs))
	mark := recs[len(recs)-1].Seq
	h.ok("vm", "stop", "--name", "vm1")
	h.ok("vm", "start", "--name", "vm1")
	recs = nil
	require.NoError(t, json.Unmarshal([]byte(h.ok("-o", "json", "keyvault", "audit", "--name", "vault1", "--after", strconv.FormatUint(mark, 10))), &recs))
	unwraps := 0
	for _, r := range recs {
		if r.Op == "KeyUnwrap" && r.Caller == principal {
			require.Equal(t, newKid, r.Kid)
			unwraps++
		}
	}
	require.Positive(t, unwraps)

	// A manual switch to another key.
	k2Kid := h.kid("create", "--vault-name", "vault1", "--name", "k2")
	h.ok("des", "update", "--name", "des1", "--key-url", k2Kid)
	h.json(&d, "disk", "show", "--name", "c1")
	require.Equal(t, k2Kid, d.KeyID)
	h.ok("vm", "stop", "--name", "vm1")
	h.ok("vm", "start", "--name", "vm1")
}
