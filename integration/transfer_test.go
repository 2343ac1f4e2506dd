package integration

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/internal/leakscan"
)

// transferImage writes a raw image of 256 MiB + 512 B: 1 MiB of random
// bytes at 0, a 1 MiB recognisable pattern at 100 MiB, and 512 random bytes
// at the very end; the rest is a hole. It returns the path and the pattern.
func transferImage(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	src := filepath.Join(dir, "src.raw")
	pattern := []byte(strings.Repeat("hostcrypt import pattern 0123456789abcdef\n", (1<<20)/42+1)[:1<<20])
	f, err := os.Create(src)
	require.NoError(t, err)
	size := int64(256<<20 + 512)
	require.NoError(t, f.Truncate(size))
	head := make([]byte, 1<<20)
	rand.Read(head)
	tail := make([]byte, 512)
	rand.Read(tail)
	for _, w := range []struct {
		b   []byte
		off int64
	}{{head, 0}, {pattern, 100 << 20}, {tail, size - 512}} {
		_, err := f.WriteAt(w.b, w.off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
	return src, pattern
}

// allocated is how many bytes of the file or tree at path take on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	out := sh(t, "du -s --block-size=1 "+path+" | cut -f1")
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	require.NoError(t, err)
	return n
}

// sameAs compares an image in the mount with a file, reading the image in
// large requests (cmp's small reads are slow through FUSE).
func sameAs(t *testing.T, img, file string) {
	t.Helper()
	sh(t, "dd if="+img+" bs=4M status=none | cmp - "+file)
}

func fileBlocks(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}

// TestHostDiskImportExport imports a raw image and a qcow2 one (into a
// customer-key disk), reads both back through a VM's mount, exports them
// again and checks the bytes and the sparseness of each copy.
func TestHostDiskImportExport(t *testing.T) {
	h := newHost(t, startKeystore(t))
	dir := t.TempDir()
	src, pattern := transferImage(t, dir)
	const size = 256<<20 + 512

	// Raw: import, then read through the mount.
	var d diskJSON
	h.json(&d, "disk", "import", "--name", "imp", "--source", src)
	require.EqualValues(t, size, d.DiskSizeBytes, "the disk has the image's size, rounded up to 512 bytes")
	require.Equal(t, "Unattached", d.DiskState)
	// Format 3 writes a block's first version into both of its slots, so
	// 2 MiB of data take 4 MiB, plus each chunk's selector state and entries.
	require.Less(t, allocated(t, filepath.Join(h.storage, d.StoragePrefix)), int64(5<<20),
		"2 MiB of data in a 256 MiB image must stay sparse in storage")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M", "--data-disks", "imp")
	sameAs(t, h.img("vm1", "data-0.img"), src)

	// The disk of a running VM is not exported.
	out := filepath.Join(dir, "out.raw")
	_, errOut, code := h.run("disk", "export", "--name", "imp", "--target", out)
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "vm stop --name vm1")
	_, err := os.Stat(out)
	require.ErrorIs(t, err, os.ErrNotExist)

	h.ok("vm", "stop", "--name", "vm1")
	h.ok("disk", "export", "--name", "imp", "--target", out)
	sh(t, "cmp "+src+" "+out)
	require.Less(t, fileBlocks(t, out), int64(4<<20), "the export must be sparse")
	st, err := os.Stat(out)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	h.json(&d, "disk", "show", "--name", "imp")
	require.Equal(t, "Reserved", d.DiskState, "the disk is back in its VM's hands")

	// An existing target needs --force.
	_, errOut, code = h.run("disk", "export", "--name", "imp", "--target", out)
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "--force")
	h.ok("disk", "export", "--name", "imp", "--target", out, "--force", "true")
	sh(t, "cmp "+src+" "+out)

	// qcow2, into a customer-key disk, attached to the running VM.
	qcow := filepath.Join(dir, "src.qcow2")
	sh(t, "qemu-img convert -f raw -O qcow2 "+src+" "+qcow)
	h.ok("keyvault", "create", "--name", "vault1")
	keyKid := h.kid("create", "--vault-name", "vault1", "--name", "k1", "--size", "2048")
	var des struct {
		Identity struct {
			PrincipalID string `json:"principalId"`
		} `json:"identity"`
	}
	desOut, _, code := h.run("-o", "json", "des", "create", "--name", "des1", "--key-url", keyKid)
	require.Equal(t, 0, code)
	require.NoError(t, json.Unmarshal([]byte(desOut), &des))
	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", des.Identity.PrincipalID, "--key-permissions", "get,wrapKey,unwrapKey")

	h.json(&d, "disk", "import", "--name", "impq", "--source", qcow, "--disk-encryption-set", "des1")
	require.EqualValues(t, size, d.DiskSizeBytes)
	require.Equal(t, keyKid, d.KeyID, "the imported disk is wrapped by the customer key")
	require.Less(t, allocated(t, filepath.Join(h.storage, d.StoragePrefix)), int64(5<<20))
	h.ok("vm", "start", "--name", "vm1")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "impq")
	sameAs(t, h.img("vm1", "data-1.img"), src)
	h.ok("vm", "stop", "--name", "vm1")
	outq := filepath.Join(dir, "outq.raw")
	h.ok("disk", "export", "--name", "impq", "--target", outq)
	sh(t, "cmp "+src+" "+outq)
	require.Less(t, fileBlocks(t, outq), int64(4<<20))

	// The recognisable pattern is nowhere in the daemon's directories.
	for _, dir := range []string{h.storage, h.hostDir, h.state} {
		hits, err := leakscan.Scan(dir, pattern, 16)
		require.NoError(t, err)
		require.Empty(t, hits, "plaintext found under %s", dir)
	}
}

// TestHostDiskImportExportBadInput: each refusal says what to do and
// changes nothing.
func TestHostDiskImportExportBadInput(t *testing.T) {
	h := newHost(t, startKeystore(t))
	dir := t.TempDir()
	h.ok("disk", "create", "--name", "d1", "--size", "16M")
	empty := filepath.Join(dir, "empty.raw")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	small := filepath.Join(dir, "small.raw")
	require.NoError(t, os.WriteFile(small, []byte("data"), 0o600))
	vmdk := filepath.Join(dir, "disk.vmdk")
	sh(t, "qemu-img convert -f raw -O vmdk "+small+" "+vmdk)
	broken := filepath.Join(dir, "broken.qcow2")
	require.NoError(t, os.WriteFile(broken, append([]byte("QFI\xfb"), make([]byte, 4092)...), 0o600))
	exists := filepath.Join(dir, "exists.raw")
	require.NoError(t, os.WriteFile(exists, []byte("keep me"), 0o600))

	var before []diskJSON
	h.json(&before, "disk", "list")
	storageBefore := sh(t, "cd "+h.storage+" && find . | sort")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"disk", "import", "--name", "x", "--source", filepath.Join(dir, "nope.raw")}, "does not exist"},
		{[]string{"disk", "import", "--name", "x", "--source", empty}, "empty"},
		{[]string{"disk", "import", "--name", "x", "--source", dir}, "not a regular file"},
		{[]string{"disk", "import", "--name", "x", "--source", vmdk}, "VMDK"},
		{[]string{"disk", "import", "--name", "x", "--source", broken}, "qemu cannot read it"},
		{[]string{"disk", "import", "--name", "d1", "--source", small}, "already exists"},
		{[]string{"disk", "import", "--name", "x", "--source", small, "--encryption-type", "EncryptionAtRestWithCustomerKey"}, "--disk-encryption-set"},
		{[]string{"disk", "import", "--name", "x"}, "--source is required"},
		{[]string{"disk", "export", "--name", "d1", "--target", exists}, "--force"},
		{[]string{"disk", "export", "--name", "nope", "--target", filepath.Join(dir, "out.raw")}, "does not exist"},
		{[]string{"disk", "export", "--name", "d1", "--target", filepath.Join(dir, "no", "out.raw")}, "create it first"},
	} {
		_, errOut, code := h.run(c.args...)
		require.NotEqual(t, 0, code, "%v", c.args)
		require.Contains(t, errOut, c.want, "%v", c.args)
	}
	var after []diskJSON
	h.json(&after, "disk", "list")
	require.Equal(t, before, after)
	require.Equal(t, storageBefore, sh(t, "cd "+h.storage+" && find . | sort"), "a refused import changed storage")
	keep, err := os.ReadFile(exists)
	require.NoError(t, err)
	require.Equal(t, "keep me", string(keep))
	_, err = os.Stat(filepath.Join(dir, "out.raw"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestHostDiskImportInterrupted: an import cut short — the CLI interrupted,
// hostcryptd stopped, hostcryptd killed — leaves no disk and no storage
// behind.
func TestHostDiskImportInterrupted(t *testing.T) {
	h := newHost(t, startKeystore(t))
	src := filepath.Join(t.TempDir(), "big.raw")
	sh(t, "{ yes hostcrypt || true; } | head -c 1G > "+src)
	storageBefore := sh(t, "cd "+h.storage+" && find . | sort")

	// importing starts an import in the background and waits until the
	// disk exists.
	importing := func() *exec.Cmd {
		cmd := exec.Command(filepath.Join(bins(t), "hostcrypt"), "--host-socket", h.socket(), "disk", "import", "--name", "big", "--source", src)
		require.NoError(t, cmd.Start())
		waitFor(t, 30*time.Second, "the import to start", func() bool {
			out, _, code := h.run("disk", "show", "--name", "big")
			return code == 0 && strings.Contains(out, "ActiveUpload")
		})
		return cmd
	}
	gone := func(what string) {
		t.Helper()
		waitFor(t, 30*time.Second, "the half-imported disk to go after "+what, func() bool {
			_, _, code := h.run("disk", "show", "--name", "big")
			return code != 0
		})
		require.Equal(t, storageBefore, sh(t, "cd "+h.storage+" && find . | sort"), "storage left after %s", what)
	}

	cli := importing()
	require.NoError(t, cli.Process.Signal(os.Interrupt))
	require.Error(t, cli.Wait(), "an interrupted import must fail")
	gone("interrupting the CLI")

	cli = importing()
	start := time.Now()
	h.stop(syscall.SIGTERM)
	require.Less(t, time.Since(start), 20*time.Second, "an import must not hold up the shutdown")
	require.Error(t, cli.Wait())
	h.start()
	gone("stopping hostcryptd")

	cli = importing()
	h.stop(syscall.SIGKILL)
	cli.Wait()
	h.start()
	gone("killing hostcryptd")
}
