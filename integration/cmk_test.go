package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestHostCustomerKeys: a disk encryption set over an RSA key in a vault; the
// set's identity must be granted access before a disk can use it; CMK and
// double-encrypted disks then work in a VM, and every key use is audited as
// the set's identity.
func TestHostCustomerKeys(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("keyvault", "create", "--name", "vault1")
	var key struct {
		Key struct {
			Kid string `json:"kid"`
		} `json:"key"`
	}
	h.json(&key, "key", "create", "--vault-name", "vault1", "--name", "k1", "--size", "2048")
	kid := key.Key.Kid
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
	require.Contains(t, errOut, "wrapKey")

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

	// A set in use cannot go.
	_, errOut, code = h.run("des", "delete", "--name", "des1")
	require.NotEqual(t, 0, code)
	require.True(t, strings.Contains(errOut, "c1") && strings.Contains(errOut, "c2"), errOut)
}
