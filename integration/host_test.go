package integration

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/internal/leakscan"
)

type vmJSON struct {
	Name       string   `json:"name"`
	PowerState string   `json:"powerState"`
	Images     []string `json:"images"`
}

type diskJSON struct {
	Name            string `json:"name"`
	DiskState       string `json:"diskState"`
	DiskSizeBytes   int64  `json:"diskSizeBytes"`
	StoragePrefix   string `json:"storagePrefix"`
	KeyID           string `json:"keyId"`
	IntegrityErrors uint64 `json:"integrityErrors"`
}

func (h *host) img(vm, file string) string { return filepath.Join(h.mount, vm, file) }

// TestHostExt4 puts ext4 on a data disk through a loop device, restarts the
// daemon, and checks the filesystem and every file afterwards.
func TestHostExt4(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "data1", "--size", "256M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "64M", "--data-disks", "data1", "--temp-disk-size", "64M")
	img := h.img("vm1", "data-0.img")
	st, err := os.Stat(img)
	require.NoError(t, err)
	require.EqualValues(t, 256<<20, st.Size())

	mnt := t.TempDir()
	loop := attachLoop(t, img, "--direct-io=on")
	sh(t, "mkfs.ext4 -q -F "+loop)
	sh(t, "mount "+loop+" "+mnt)
	sh(t, fmt.Sprintf(`cd %s && mkdir -p a/b c && head -c 5M /dev/urandom > a/big && for i in $(seq 1 50); do head -c $((i*1000)) /dev/urandom > a/b/f$i; done && echo hello > c/small && sync`, mnt))
	sums := sh(t, "cd "+mnt+" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum")
	sh(t, "umount "+mnt)
	sh(t, "losetup -d "+loop)

	h.ok("vm", "stop", "--name", "vm1")
	_, err = os.Stat(img)
	require.ErrorIs(t, err, os.ErrNotExist, "the image must be gone once the VM is stopped")
	h.stop(syscall.SIGTERM)
	h.start()
	var vm vmJSON
	h.json(&vm, "vm", "show", "--name", "vm1")
	require.Equal(t, "stopped", vm.PowerState)
	h.ok("vm", "start", "--name", "vm1")

	loop = attachLoop(t, img)
	sh(t, "e2fsck -f -n "+loop)
	sh(t, "mount "+loop+" "+mnt)
	defer exec.Command("umount", mnt).Run()
	got := sh(t, "cd "+mnt+" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum")
	require.Equal(t, sums, got)
	sh(t, "umount "+mnt)
	sh(t, "losetup -d "+loop)
}

// TestHostFio runs fio with verification through an image: async direct I/O
// at depth 32 and psync, random and sequential.
func TestHostFio(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "d1", "--size", "128M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M", "--data-disks", "d1")
	img := h.img("vm1", "data-0.img")
	for _, job := range []string{
		"--rw=randwrite --bs=4k --ioengine=libaio --iodepth=32",
		"--rw=write --bs=1M --ioengine=psync",
		"--rw=randrw --bs=16k --ioengine=libaio --iodepth=16 --numjobs=2 --offset_increment=48M --size=16M",
		"--rw=randwrite --bs=512 --ioengine=psync --size=4M",
	} {
		out := sh(t, fmt.Sprintf("fio --name=t --filename=%s --direct=1 --size=32M %s --verify=crc32c --verify_fatal=1 --verify_state_save=0 --do_verify=1 --output-format=terse 2>&1", img, job))
		require.NotContains(t, out, "verify:", job)
	}
}

// TestHostImageAndSparse: qemu-img reads the image like any raw file, and a
// sparse disk stays sparse in storage.
func TestHostImageAndSparse(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "big", "--size", "512M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M", "--data-disks", "big")
	img := h.img("vm1", "data-0.img")
	sh(t, "dd if=/dev/urandom of="+img+" bs=1M count=3 seek=100 oflag=direct conv=notrunc status=none")
	sh(t, "dd if=/dev/urandom of="+img+" bs=4k count=1 seek=100000 oflag=direct conv=notrunc status=none")
	var d diskJSON
	h.json(&d, "disk", "show", "--name", "big")
	usage := sh(t, "du -sk --block-size=1 "+filepath.Join(h.storage, d.StoragePrefix)+" | cut -f1")
	used, err := strconv.ParseInt(strings.TrimSpace(usage), 10, 64)
	require.NoError(t, err)
	require.Less(t, used, int64(8<<20), "a 512 MiB disk with 3 MiB written uses %d bytes of storage", used)

	out := filepath.Join(t.TempDir(), "out.raw")
	sh(t, "qemu-img convert -O raw "+img+" "+out)
	sh(t, "cmp "+img+" "+out)
}

// TestHostTwoVMsNoCrosstalk writes every disk of two VMs at once from
// separate processes and reads each back.
func TestHostTwoVMsNoCrosstalk(t *testing.T) {
	h := newHost(t, startKeystore(t))
	for _, d := range []string{"a1", "a2", "b1", "b2"} {
		h.ok("disk", "create", "--name", d, "--size", "32M")
	}
	h.ok("vm", "create", "--name", "vma", "--os-disk-size", "16M", "--data-disks", "a1,a2")
	h.ok("vm", "create", "--name", "vmb", "--os-disk-size", "16M", "--data-disks", "b1,b2:ReadOnly")
	imgs := []string{h.img("vma", "data-0.img"), h.img("vma", "data-1.img"), h.img("vmb", "data-0.img"), h.img("vmb", "data-1.img"), h.img("vma", "os.img"), h.img("vmb", "os.img")}
	var wg sync.WaitGroup
	for i, img := range imgs {
		wg.Go(func() {
			_, errOut, code := runCmd("fio", "--name=w", "--filename="+img, "--direct=1", "--size=16M", "--rw=randwrite",
				"--bs=4k", "--ioengine=libaio", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1",
				fmt.Sprintf("--randseed=%d", i+1), "--verify_state_save=0")
			if code != 0 {
				t.Errorf("fio on %s: %s", img, errOut)
			}
		})
	}
	wg.Wait()
}

// TestHostKill9 kills hostcryptd during a burst of synchronous writes: after
// a restart every write that was acknowledged reads back and no block fails
// authentication.
func TestHostKill9(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "d1", "--size", "64M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M", "--data-disks", "d1")
	img := h.img("vm1", "data-0.img")
	ackLog := filepath.Join(t.TempDir(), "acked")
	// The writer writes 4 KiB blocks tagged with their sequence number, each
	// followed by fdatasync, and logs each block once acknowledged.
	writer := exec.Command("python3", "-c", `
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
log = open(sys.argv[2], "w")
i = 0
while True:
    blk = (i * 7919) % 16000
    data = (b"%08d:%08d;" % (i, blk)) * 227 + b"\0" * 10
    try:
        os.pwrite(fd, data[:4096], blk * 4096)
        os.fdatasync(fd)
    except OSError:
        break
    log.write("%d %d\n" % (i, blk)); log.flush()
    i += 1
`, img, ackLog)
	require.NoError(t, writer.Start())
	waitFor(t, 30*time.Second, "the writer to get going", func() bool {
		st, err := os.Stat(ackLog)
		return err == nil && st.Size() > 20000
	})
	h.stop(syscall.SIGKILL)
	writer.Process.Kill()
	writer.Wait()
	// The dead mount stays behind: the restarted daemon must clean it.

	h.start()
	var vm vmJSON
	h.json(&vm, "vm", "show", "--name", "vm1")
	require.Equal(t, "running", vm.PowerState, "a VM that was running must come back running")

	raw, err := os.ReadFile(ackLog)
	require.NoError(t, err)
	last := map[int]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var i, blk int
		if _, err := fmt.Sscanf(line, "%d %d", &i, &blk); err == nil {
			last[blk] = i
		}
	}
	require.NotEmpty(t, last)
	f, err := os.Open(img)
	require.NoError(t, err)
	defer f.Close()
	// The whole disk reads without an integrity error.
	all := make([]byte, 64<<20)
	_, err = f.ReadAt(all, 0)
	require.NoError(t, err, "a block fails authentication after kill -9")
	for blk, i := range last {
		got := string(all[blk*4096 : blk*4096+18])
		var gi, gb int
		_, err := fmt.Sscanf(got, "%08d:%08d;", &gi, &gb)
		require.NoError(t, err, "block %d: %q", blk, got)
		require.Equal(t, blk, gb)
		// A later write that was not yet acknowledged may have landed too.
		require.GreaterOrEqual(t, gi, i, "block %d lost an acknowledged write", blk)
	}
	var d diskJSON
	h.json(&d, "disk", "show", "--name", "d1")
	require.Zero(t, d.IntegrityErrors)
}

// TestHostNoPlaintext writes a recognisable pattern through every image and
// scans the storage and host directories for any 16-byte window of it.
func TestHostNoPlaintext(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "d1", "--size", "16M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M", "--data-disks", "d1", "--temp-disk-size", "16M")
	pattern := make([]byte, 1<<20)
	rand.Read(pattern)
	pfile := filepath.Join(t.TempDir(), "pattern")
	require.NoError(t, os.WriteFile(pfile, pattern, 0o600))
	for _, f := range []string{"os.img", "data-0.img", "temp.img"} {
		sh(t, "dd if="+pfile+" of="+h.img("vm1", f)+" bs=64k seek=3 conv=notrunc,fsync status=none")
	}
	h.ok("vm", "stop", "--name", "vm1")
	for _, dir := range []string{h.storage, h.hostDir, h.state} {
		hits, err := leakscan.Scan(dir, pattern, 16)
		require.NoError(t, err)
		require.Empty(t, hits, "plaintext found under %s", dir)
	}
}

// TestHostHotplugGrowDelete: attach and detach on a running VM, growing a
// disk, and what disk delete leaves behind.
func TestHostHotplugGrowDelete(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "d1", "--size", "16M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "d1", "--lun", "3")
	img := h.img("vm1", "data-3.img")
	sh(t, "dd if=/dev/urandom of="+img+" bs=1M count=2 conv=notrunc,fsync status=none")
	sum := sh(t, "head -c 2M "+img+" | sha256sum")
	h.ok("disk", "update", "--name", "d1", "--size", "32M")
	st, err := os.Stat(img)
	require.NoError(t, err)
	require.EqualValues(t, 32<<20, st.Size())
	require.Equal(t, sum, sh(t, "head -c 2M "+img+" | sha256sum"))

	h.ok("vm", "disk", "detach", "--vm-name", "vm1", "--name", "d1")
	_, err = os.Stat(img)
	require.ErrorIs(t, err, os.ErrNotExist)
	var d diskJSON
	h.json(&d, "disk", "show", "--name", "d1")
	require.Equal(t, "Unattached", d.DiskState)
	h.ok("disk", "delete", "--name", "d1")
	_, err = os.Stat(filepath.Join(h.storage, d.StoragePrefix))
	require.ErrorIs(t, err, os.ErrNotExist, "storage of a deleted disk remains")
}

// TestHostBadInput: each refusal is a clear error with a non-zero status and
// changes nothing.
func TestHostBadInput(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "d1", "--size", "16M")
	h.ok("disk", "create", "--name", "d2", "--size", "16M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M", "--data-disks", "d1")
	before := h.ok("-o", "json", "disk", "list") + h.ok("-o", "json", "vm", "list")
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"disk", "create", "--name", "d1", "--size", "16M"}, "already exists"},
		{[]string{"disk", "create", "--name", "x", "--size", "0"}, "size"},
		{[]string{"disk", "create", "--name", "x", "--size", "1000000"}, "size"},
		{[]string{"disk", "create", "--name", "x", "--size", "16M", "--logical-sector-size", "1000"}, "sector"},
		{[]string{"disk", "create", "--name", "x", "--size", "lots"}, "size"},
		{[]string{"vm", "start", "--name", "vm1"}, "already running"},
		{[]string{"vm", "delete", "--name", "vm1"}, "running"},
		{[]string{"disk", "delete", "--name", "d1"}, "attached"},
		{[]string{"vm", "disk", "attach", "--vm-name", "vm1", "--name", "d1"}, "already attached"},
		{[]string{"vm", "disk", "attach", "--vm-name", "vm1", "--name", "d2", "--lun", "0"}, "LUN 0"},
		{[]string{"vm", "show", "--name", "nope"}, "does not exist"},
		{[]string{"disk", "show", "--name", "nope"}, "does not exist"},
		{[]string{"disk", "update", "--name", "d2", "--size", "8M"}, "shrinking"},
		{[]string{"disk", "list", "stray"}, "stray"},
	} {
		out, errOut, code := h.run(c.args...)
		require.NotEqual(t, 0, code, "%v succeeded: %s", c.args, out)
		require.Contains(t, errOut, c.msg, "%v", c.args)
	}
	after := h.ok("-o", "json", "disk", "list") + h.ok("-o", "json", "vm", "list")
	require.Equal(t, before, after)
}

// TestHostIntegrityAlarm flips one bit of a stored block under a running VM:
// reading it fails with EIO, and disk show and vm show count the failure.
func TestHostIntegrityAlarm(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "d1", "--size", "16M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M", "--data-disks", "d1")
	img := h.img("vm1", "data-0.img")
	sh(t, "dd if=/dev/urandom of="+img+" bs=64k count=4 oflag=direct conv=notrunc,fsync status=none")
	var d diskJSON
	h.json(&d, "disk", "show", "--name", "d1")
	chunk := filepath.Join(h.storage, d.StoragePrefix, "chunks", "00000000")
	// Format 3, one layer, 4 MiB chunks: the ciphertext pages start at
	// 94208, slot A of block 2 at 94208 + 2*4096; flip a bit inside it.
	f, err := os.OpenFile(chunk, os.O_RDWR, 0)
	require.NoError(t, err)
	b := make([]byte, 1)
	off := int64(94208 + 2*4096 + 100)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 0x20
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	_, errOut, code := runCmd("dd", "if="+img, "of=/dev/null", "bs=4k", "skip=2", "count=1", "iflag=direct", "status=none")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "Input/output error")
	// The neighbours still read.
	sh(t, "dd if="+img+" of=/dev/null bs=4k skip=3 count=1 iflag=direct status=none")
	h.json(&d, "disk", "show", "--name", "d1")
	require.GreaterOrEqual(t, d.IntegrityErrors, uint64(1))
	var vm struct {
		IntegrityErrors uint64 `json:"integrityErrors"`
	}
	h.json(&vm, "vm", "show", "--name", "vm1")
	require.GreaterOrEqual(t, vm.IntegrityErrors, uint64(1))
	require.Contains(t, h.logs.String(), "integrity alarm")
}

// TestHostHolesAndRefusals: fallocate punch hole discards through the engine
// (reads zeros, storage shrinks), SEEK_DATA/SEEK_HOLE see the written
// extents, and namespace changes in the mount are refused with EPERM.
func TestHostHolesAndRefusals(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("disk", "create", "--name", "d1", "--size", "64M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M", "--data-disks", "d1")
	img := h.img("vm1", "data-0.img")
	sh(t, "dd if=/dev/urandom of="+img+" bs=1M count=8 seek=16 oflag=direct conv=notrunc,fsync status=none")
	var d diskJSON
	h.json(&d, "disk", "show", "--name", "d1")
	usage := func() int64 {
		out := sh(t, "du -s --block-size=1 "+filepath.Join(h.storage, d.StoragePrefix)+" | cut -f1")
		n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		require.NoError(t, err)
		return n
	}
	before := usage()
	out := sh(t, fmt.Sprintf(`python3 -c '
import os
fd = os.open("%s", os.O_RDONLY)
print(os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 16<<20, os.SEEK_HOLE))'`, img))
	require.Equal(t, fmt.Sprintf("%d %d\n", 16<<20, 24<<20), out)

	sh(t, "fallocate --punch-hole --offset $((18<<20)) --length $((4<<20)) "+img)
	sh(t, "sync")
	require.Less(t, usage(), before-(3<<20), "punching 4 MiB gave back no storage")
	zeros := sh(t, "dd if="+img+" bs=1M skip=18 count=4 iflag=direct status=none | tr -d '\\0' | wc -c")
	require.Equal(t, "0", strings.TrimSpace(zeros))
	kept := sh(t, "dd if="+img+" bs=1M skip=16 count=2 iflag=direct status=none | tr -d '\\0' | wc -c")
	require.NotEqual(t, "0", strings.TrimSpace(kept))

	for _, c := range []string{
		"touch " + filepath.Join(h.mount, "vm1", "new.img"),
		"rm " + img,
		"mv " + img + " " + filepath.Join(h.mount, "vm1", "x.img"),
		"chmod 644 " + img,
	} {
		_, errOut, code := runCmd("bash", "-c", c)
		require.NotEqual(t, 0, code, c)
		require.Contains(t, strings.ToLower(errOut), "not permitted", c)
	}
	_, err := os.Stat(img)
	require.NoError(t, err)
}

// TestHostCacheModes: ReadOnly and ReadWrite host caches under the engine.
// What an fsync acknowledged on a ReadWrite disk survives kill -9 (it may
// have reached only the cache), and the cache holds no plaintext.
func TestHostCacheModes(t *testing.T) {
	h := newHost(t, startKeystore(t), slowStorage...)
	h.ok("disk", "create", "--name", "ro", "--size", "32M")
	h.ok("disk", "create", "--name", "rw", "--size", "32M")
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "16M", "--data-disks", "ro:ReadOnly,rw:ReadWrite")
	pattern := make([]byte, 1<<20)
	rand.Read(pattern)
	pfile := filepath.Join(t.TempDir(), "pattern")
	require.NoError(t, os.WriteFile(pfile, pattern, 0o600))
	for _, img := range []string{"data-0.img", "data-1.img"} {
		// Random I/O, which the caches take in (with fsync); the read warms them.
		scatteredIO(t, h.img("vm1", img), pattern, 7*64<<10, true)
		scatteredIO(t, h.img("vm1", img), pattern, 7*64<<10, false)
	}
	used := sh(t, "du -s --block-size=1 "+filepath.Join(h.hostDir, "cache")+" | cut -f1")
	n, err := strconv.ParseInt(strings.TrimSpace(used), 10, 64)
	require.NoError(t, err)
	require.Greater(t, n, int64(1<<20), "the host caches hold the data")
	for _, dir := range []string{h.storage, h.hostDir} {
		hits, err := leakscan.Scan(dir, pattern, 16)
		require.NoError(t, err)
		require.Empty(t, hits, "plaintext under %s", dir)
	}
	sum := sh(t, "sha256sum < "+pfile)
	h.stop(syscall.SIGKILL)
	h.start()
	for _, img := range []string{"data-0.img", "data-1.img"} {
		require.Equal(t, sum, sh(t, "dd if="+h.img("vm1", img)+" bs=64k skip=7 count=16 iflag=direct status=none | sha256sum"), img)
	}
}
