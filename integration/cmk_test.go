package integration

import (
	"encoding/json"
	"errors"
	"hostcrypt/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestHostCustomerKeys: a disk encryption set over an RSA key in a vault; the
// set's identity must be granted access before a disk can use it; CMK and
// double-encrypted disks then work in a VM, and every key use is audited as
// the set's identity.
func TestHostCustomerKeys(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("keyvault", "create", "--name", "vault1")
	kid := h.kid("create", "--vault-name", "vault1", "--name", "k1", "--size", "2048")
	require.Contains(t, kid, "/vaults/vault1/keys/k1/")

	var des struct {
		Identity struct {
			PrincipalID string `json:"principalId"`
		} `json:"identity"`
		KeyAccess string `json:"keyAccess"`
		ID        string `json:"id"`
	}
	out, errOut, code := h.run("-o", "json", "des", "create", "--name", "des1", "--key-url", kid)
	require.Equal(t, 0, code, errOut)
	require.NoError(t, json.Unmarshal([]byte(out), &des))
	principal := des.Identity.PrincipalID
	require.NotEmpty(t, principal)
	require.NotEqual(t, "ok", des.KeyAccess)
	require.Contains(t, errOut, "set-policy", "des create warns that access is not granted yet")

	// No access yet: the refusal names the principal and the permission.
	_, errOut, code = h.run("disk", "create", "--name", "c1", "--size", "16M", "--disk-encryption-set", "des1")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, principal)
	require.Contains(t, errOut, "key permission 'wrapKey'")

	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", principal, "--key-permissions", "get,wrapKey,unwrapKey")
	h.json(&des, "des", "show", "--name", "des1")
	require.Equal(t, "ok", des.KeyAccess)

	var d diskJSON
	h.json(&d, "disk", "create", "--name", "c1", "--size", "16M", "--disk-encryption-set", "des1")
	require.Equal(t, kid, d.KeyID)
	var d2 struct {
		diskJSON
		Encryption struct {
			Type  string `json:"type"`
			DesID string `json:"diskEncryptionSetId"`
		} `json:"encryption"`
	}
	h.json(&d2, "disk", "create", "--name", "c2", "--size", "16M", "--disk-encryption-set", "des1",
		"--encryption-type", "EncryptionAtRestWithPlatformAndCustomerKeys")
	require.Equal(t, "EncryptionAtRestWithPlatformAndCustomerKeys", d2.Encryption.Type)
	require.Equal(t, des.ID, d2.Encryption.DesID)
	raw, err := os.ReadFile(filepath.Join(h.storage, d2.StoragePrefix, "meta.json"))
	require.NoError(t, err)
	var meta struct {
		Layers []struct {
			Algorithm   string `json:"algorithm"`
			WrappedKeys []struct {
				Kid string `json:"kid"`
				Alg string `json:"alg"`
			} `json:"wrappedKeys"`
		} `json:"layers"`
	}
	require.NoError(t, json.Unmarshal(raw, &meta))
	require.Len(t, meta.Layers, 2)
	require.Equal(t, kid, meta.Layers[0].WrappedKeys[0].Kid)
	require.Equal(t, "RSA-OAEP-256", meta.Layers[0].WrappedKeys[0].Alg)
	require.Contains(t, meta.Layers[1].WrappedKeys[0].Kid, "/vaults/platform/")
	require.Equal(t, "XChaCha20-Poly1305", meta.Layers[1].Algorithm)

	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M", "--data-disks", "c1,c2")
	for _, img := range []string{"data-0.img", "data-1.img"} {
		sh(t, "dd if=/dev/urandom of="+filepath.Join(t.TempDir(), "x")+" bs=1M count=2 status=none")
		sh(t, "fio --name=v --filename="+h.img("vm1", img)+" --direct=1 --size=8M --rw=randwrite --bs=4k --ioengine=libaio --iodepth=8 --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output=/dev/null")
	}
	h.ok("vm", "stop", "--name", "vm1")
	h.ok("vm", "start", "--name", "vm1")

	// The audit log shows the identity unwrapping with the versioned key.
	out = h.ok("-o", "json", "keyvault", "audit", "--name", "vault1")
	var recs []struct {
		Op     string `json:"operationName"`
		Caller string `json:"callerObjectId"`
		Kid    string `json:"kid"`
		Result int    `json:"resultCode"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &recs))
	unwraps := 0
	for _, r := range recs {
		if r.Op == "KeyUnwrap" && r.Caller == principal && r.Result == 200 {
			require.Equal(t, kid, r.Kid)
			unwraps++
		}
	}
	require.GreaterOrEqual(t, unwraps, 4, "two disks opened twice (create check aside) must be unwrapped as the set's identity")

	// Attaching a CMK disk fails the same way once the identity lacks a
	// permission: the error names the principal and the permission.
	h.ok("disk", "create", "--name", "c3", "--size", "16M", "--disk-encryption-set", "des1")
	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", principal, "--key-permissions", "get,wrapKey")
	_, errOut, code = h.run("vm", "disk", "attach", "--vm-name", "vm1", "--name", "c3")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, principal)
	require.Contains(t, errOut, "key permission 'unwrapKey'")
	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", principal, "--key-permissions", "get,wrapKey,unwrapKey")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "c3")

	// A set in use cannot go.
	_, errOut, code = h.run("des", "delete", "--name", "des1")
	require.NotEqual(t, 0, code)
	require.True(t, strings.Contains(errOut, "c1") && strings.Contains(errOut, "c2") && strings.Contains(errOut, "c3"), errOut)
}

// TestHostSwitchDiskKeys moves a populated disk from the platform key to a
// customer key and back by re-wrapping its data key; its data is unchanged,
// and the switch is refused while its VM runs.
func TestHostSwitchDiskKeys(t *testing.T) {
	h := newHost(t, startKeystore(t))
	kid, _ := cmkVM(t, h)
	h.ok("disk", "create", "--name", "p1", "--size", "16M")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "p1")
	img := h.img("vm1", "data-1.img")
	sum := writePattern(t, img)
	_, errOut, code := h.run("disk", "update", "--name", "p1", "--disk-encryption-set", "des1")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "deallocate")
	h.ok("vm", "deallocate", "--name", "vm1")

	var d diskJSON
	h.json(&d, "disk", "update", "--name", "p1", "--disk-encryption-set", "des1")
	require.Equal(t, kid, d.KeyID)
	h.ok("vm", "start", "--name", "vm1")
	require.Equal(t, sum, readBack(t, img))
	h.ok("vm", "deallocate", "--name", "vm1")
	h.json(&d, "disk", "update", "--name", "p1", "--encryption-type", "EncryptionAtRestWithPlatformKey")
	require.Contains(t, d.KeyID, "/vaults/platform/")
	h.ok("vm", "start", "--name", "vm1")
	require.Equal(t, sum, readBack(t, img))
}

// TestHostConvertToDouble turns double encryption on for a populated CMK
// disk; the conversion is interrupted by kill -9 and resumes after the
// restart; every byte is kept and the disk ends with two layers.
func TestHostConvertToDouble(t *testing.T) {
	h := newHost(t, startKeystore(t))
	cmkVM(t, h)
	h.ok("disk", "create", "--name", "big", "--size", "256M", "--disk-encryption-set", "des1")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "big")
	img := h.img("vm1", "data-1.img")
	sh(t, "dd if=/dev/urandom of="+img+" bs=1M count=200 oflag=direct conv=notrunc,fsync status=none")
	sum := sh(t, "dd if="+img+" bs=1M iflag=direct status=none | sha256sum")
	h.ok("vm", "deallocate", "--name", "vm1")
	var before diskJSON
	h.json(&before, "disk", "show", "--name", "big")

	// Start the conversion without waiting, then kill the daemon mid-way.
	type conv struct {
		Conversion *struct {
			NextChunk   int64 `json:"nextChunk"`
			TotalChunks int64 `json:"totalChunks"`
		} `json:"conversion"`
		StoragePrefix string `json:"storagePrefix"`
	}
	cli := exec.Command(filepath.Join(bins(t), "hostcrypt"), "--host-socket", h.socket(), "disk", "update", "--name", "big",
		"--encryption-type", "EncryptionAtRestWithPlatformAndCustomerKeys")
	var stderr testenv.Buffer
	cli.Stderr = &stderr
	require.NoError(t, cli.Start())
	var c conv
	waitFor(t, 60*time.Second, "the conversion to be under way", func() bool {
		c = conv{}
		h.json(&c, "disk", "show", "--name", "big")
		return c.Conversion != nil && c.Conversion.NextChunk > 2
	})
	require.Less(t, c.Conversion.NextChunk, c.Conversion.TotalChunks, "the conversion finished before it could be interrupted")
	h.stop(syscall.SIGKILL)
	cli.Wait()
	require.Contains(t, stderr.String(), "converting big")

	h.start()
	defer func() {
		if t.Failed() {
			t.Logf("hostcryptd log:\n%s", h.logs.String())
		}
	}()
	waitFor(t, 120*time.Second, "the resumed conversion to finish", func() bool {
		c = conv{}
		h.json(&c, "disk", "show", "--name", "big")
		return c.Conversion == nil
	})
	var d2 struct {
		Encryption struct {
			Type string `json:"type"`
		} `json:"encryption"`
	}
	h.json(&d2, "disk", "show", "--name", "big")
	require.Equal(t, "EncryptionAtRestWithPlatformAndCustomerKeys", d2.Encryption.Type)
	raw, err := os.ReadFile(filepath.Join(h.storage, c.StoragePrefix, "meta.json"))
	require.NoError(t, err)
	require.Contains(t, string(raw), "XChaCha20-Poly1305")
	// The conversion's end records the old copy's removal with the switch,
	// and removes it right after: wait for that.
	waitFor(t, 30*time.Second, "the single-layer copy to be destroyed after the conversion", func() bool {
		_, err := os.Stat(filepath.Join(h.storage, before.StoragePrefix))
		return errors.Is(err, os.ErrNotExist)
	})
	h.ok("vm", "start", "--name", "vm1")
	require.Equal(t, sum, sh(t, "dd if="+img+" bs=1M iflag=direct status=none | sha256sum"))
}
