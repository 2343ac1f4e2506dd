package integration

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/internal/leakscan"
)

type reportJSON struct {
	EncryptionAtHost bool   `json:"encryptionAtHost"`
	Warning          string `json:"warning"`
	Entries          []struct {
		Disk        string `json:"disk"`
		Layer       string `json:"layer"`
		Encrypted   bool   `json:"encrypted"`
		EncryptedBy string `json:"encryptedBy"`
		Algorithm   string `json:"algorithm"`
		Key         string `json:"key"`
		Caching     string `json:"caching"`
		Location    string `json:"location"`
	} `json:"entries"`
}

// TestHostEncryptionAtHost is the plaintext scan in both directions: a VM
// with encryption at host leaves no plaintext on the host or in storage; a
// VM without it keeps plaintext in its host caches and temp disk, and
// still never in storage. The encryption report says which is which, write
// -back caches of both kinds lose nothing on a clean stop or kill -9, and
// encryption at host changes only while deallocated.
func TestHostEncryptionAtHost(t *testing.T) {
	h := newHost(t, startKeystore(t), slowStorage...)
	kid, _ := cmkVM(t, h) // vm1 runs with a CMK data disk c1; not used below
	h.ok("vm", "deallocate", "--name", "vm1")

	for _, vm := range []string{"on", "off"} {
		h.ok("disk", "create", "--name", vm+"-cmk", "--size", "16M", "--disk-encryption-set", "des1")
		h.ok("disk", "create", "--name", vm+"-pmk", "--size", "16M")
	}
	_, errOut, code := h.run("vm", "create", "--name", "on", "--os-disk-size", "16M", "--temp-disk-size", "16M",
		"--data-disks", "on-cmk:ReadOnly,on-pmk")
	require.Equal(t, 0, code, errOut)
	require.NotContains(t, errOut, "WARNING")
	_, errOut, code = h.run("vm", "create", "--name", "off", "--os-disk-size", "16M", "--temp-disk-size", "16M",
		"--data-disks", "off-cmk:ReadOnly,off-pmk", "--encryption-at-host", "false")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, errOut, "WARNING: encryption at host is off")
	_, errOut, _ = h.run("vm", "show", "--name", "off")
	require.Contains(t, errOut, "plaintext on this host")

	images := []string{"os.img", "data-0.img", "data-1.img", "temp.img"}
	patterns := map[string][]byte{}
	for _, vm := range []string{"on", "off"} {
		p := make([]byte, 1<<20)
		rand.Read(p)
		patterns[vm] = p
		pfile := filepath.Join(t.TempDir(), "pattern")
		require.NoError(t, os.WriteFile(pfile, p, 0o600))
		sum := sh(t, "sha256sum < "+pfile)
		for _, img := range images {
			// Random I/O, which the caches take in; the read fills the
			// ReadOnly caches.
			scatteredIO(t, h.img(vm, img), p, 7*64<<10, true)
			require.Equal(t, p, scatteredIO(t, h.img(vm, img), p, 7*64<<10, false), vm+"/"+img)
			require.Equal(t, sum, sh(t, "dd if="+h.img(vm, img)+" bs=64k skip=7 count=16 iflag=direct status=none | sha256sum"), vm+"/"+img)
		}
	}
	scan := func(dir string, p []byte) []leakscan.Hit {
		hits, err := leakscan.Scan(dir, p, 16)
		require.NoError(t, err)
		return hits
	}
	assert.Empty(t, scan(h.storage, patterns["on"]), "storage, encryption at host on")
	assert.Empty(t, scan(h.hostDir, patterns["on"]), "host, encryption at host on")
	assert.Empty(t, scan(h.storage, patterns["off"]), "storage, encryption at host off")
	where := map[string]bool{}
	for _, hit := range scan(h.hostDir, patterns["off"]) {
		rel, _ := filepath.Rel(h.hostDir, hit.Path)
		where[strings.SplitN(rel, string(filepath.Separator), 2)[0]] = true
	}
	assert.True(t, where["cache"], "the plaintext host caches hold the pattern: %v", where)
	assert.True(t, where["temp-plain"], "the plaintext temp disk holds the pattern: %v", where)

	var rep reportJSON
	h.json(&rep, "vm", "encryption-report", "--name", "on")
	require.True(t, rep.EncryptionAtHost)
	require.Empty(t, rep.Warning)
	layers := map[string]int{}
	for _, e := range rep.Entries {
		layers[e.Layer]++
		if e.Caching != "None" {
			assert.True(t, e.Encrypted, "%s %s", e.Disk, e.Layer)
		}
		if e.Disk == "on-cmk" {
			assert.Equal(t, kid, e.Key, e.Layer)
		}
		if e.Layer == "temp disk" {
			assert.Equal(t, "platform", e.Key)
			assert.Equal(t, "XAES-256-GCM", e.Algorithm)
		}
	}
	assert.Equal(t, map[string]int{"storage layer 1": 3, "host cache": 3, "temp disk": 1}, layers)
	h.json(&rep, "vm", "encryption-report", "--name", "off")
	require.False(t, rep.EncryptionAtHost)
	require.NotEmpty(t, rep.Warning)
	for _, e := range rep.Entries {
		switch e.Layer {
		case "storage layer 1":
			assert.True(t, e.Encrypted)
			assert.Equal(t, "storage", e.EncryptedBy)
		case "host cache":
			if e.Caching != "None" {
				assert.False(t, e.Encrypted, e.Disk)
			}
		case "temp disk":
			assert.False(t, e.Encrypted)
		}
	}
	table, errOut, code := h.run("vm", "encryption-report", "--name", "off")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, table, "no (plaintext)")
	assert.Contains(t, errOut, "WARNING")
	table, _, _ = h.run("vm", "encryption-report", "--name", "on")
	assert.NotContains(t, table, "plaintext", "a disk without a host cache keeps nothing on the host")
	assert.Contains(t, table, "- (no cache)")

	// Unflushed writes to a write-back cache, sealed or plaintext, survive
	// a clean stop; fsynced ones survive kill -9.
	for _, vm := range []string{"on", "off"} {
		sum := writePattern(t, h.img(vm, "os.img"))
		h.ok("vm", "stop", "--name", vm)
		h.ok("vm", "start", "--name", vm)
		require.Equal(t, sum, readBack(t, h.img(vm, "os.img")), vm)
	}
	src := filepath.Join(t.TempDir(), "q")
	sh(t, "head -c 3M /dev/urandom > "+src)
	sh(t, "dd if="+src+" of="+h.img("off", "os.img")+" bs=64k seek=5 oflag=direct conv=notrunc,fsync status=none")
	sum := sh(t, "sha256sum < "+src)
	h.stop(syscall.SIGKILL)
	h.start()
	require.Equal(t, sum, readBack(t, h.img("off", "os.img")))

	// Encryption at host and caching change only while deallocated; a
	// refusal changes nothing.
	_, errOut, code = h.run("vm", "update", "--name", "off", "--encryption-at-host", "true")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "vm deallocate --name off")
	_, errOut, code = h.run("vm", "update", "--name", "off", "--os-disk-caching", "Sometimes")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "use None, ReadOnly or ReadWrite")
	_, errOut, code = h.run("vm", "create", "--name", "bad", "--os-disk-size", "16M", "--os-disk-caching", "WriteOnly")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "use None, ReadOnly or ReadWrite")
	var vm struct {
		PowerState      string `json:"powerState"`
		SecurityProfile struct {
			EncryptionAtHost bool `json:"encryptionAtHost"`
		} `json:"securityProfile"`
	}
	h.json(&vm, "vm", "show", "--name", "off")
	require.Equal(t, "running", vm.PowerState)
	require.False(t, vm.SecurityProfile.EncryptionAtHost)
	_, _, code = h.run("vm", "show", "--name", "bad")
	require.NotEqual(t, 0, code, "a refused create made no VM")

	// Deallocated: the plaintext temp disk and caches are gone; switch
	// encryption at host on, and the disks keep their data.
	h.ok("vm", "deallocate", "--name", "off")
	_, err := os.Stat(filepath.Join(h.hostDir, "temp-plain", "off"))
	require.ErrorIs(t, err, os.ErrNotExist)
	assert.Empty(t, scan(h.hostDir, patterns["off"]), "plaintext left on the host after deallocation")
	h.ok("vm", "update", "--name", "off", "--encryption-at-host", "true", "--data-disk-caching", "off-pmk:ReadWrite")
	h.json(&vm, "vm", "show", "--name", "off")
	require.True(t, vm.SecurityProfile.EncryptionAtHost)
	h.ok("vm", "start", "--name", "off")
	for _, img := range images[1:3] {
		got := sh(t, "dd if="+h.img("off", img)+" bs=64k skip=7 count=16 iflag=direct status=none | sha256sum")
		p := filepath.Join(t.TempDir(), "p")
		require.NoError(t, os.WriteFile(p, patterns["off"], 0o600))
		require.Equal(t, sh(t, "sha256sum < "+p), got, img)
	}
	h.json(&rep, "vm", "encryption-report", "--name", "off")
	for _, e := range rep.Entries {
		if e.Caching != "None" {
			assert.True(t, e.Encrypted, "%s %s", e.Disk, e.Layer)
		}
	}
}

// TestHostDeallocateShredsTempDisk: stop and start keep the temp disk;
// deallocation destroys its own key in the key store first, then its files,
// so a copy of the files taken before cannot be opened again, not even by
// the daemon that made it.
func TestHostDeallocateShredsTempDisk(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M", "--temp-disk-size", "16M")
	img := h.img("vm1", "temp.img")
	sum := writePattern(t, img)
	h.ok("vm", "stop", "--name", "vm1")
	h.ok("vm", "start", "--name", "vm1")
	require.Equal(t, sum, readBack(t, img), "stop/start lost the temp disk")
	h.ok("vm", "stop", "--name", "vm1")

	dir := filepath.Join(h.hostDir, "temp", "vm1")
	saved := filepath.Join(t.TempDir(), "saved")
	sh(t, "cp -a "+dir+" "+saved)
	meta := sh(t, "cat "+filepath.Join(dir, "meta.json"))
	require.Contains(t, meta, "/vaults/platform/keys/temp-disk-", "the temp disk has a platform key of its own")

	h.ok("vm", "deallocate", "--name", "vm1")
	_, err := os.Stat(dir)
	require.ErrorIs(t, err, os.ErrNotExist, "deallocation left the temp disk's files")

	sh(t, "mkdir -p "+filepath.Dir(dir)+" && cp -a "+saved+" "+dir)
	h.ok("vm", "start", "--name", "vm1")
	zeros := sh(t, "dd if="+img+" bs=64k skip=5 count=48 iflag=direct status=none | tr -d '\\0' | wc -c")
	require.Equal(t, "0", strings.TrimSpace(zeros), "the old temp disk's data came back")
	require.Contains(t, h.logs.String(), "the temp disk's key no longer exists")
}
