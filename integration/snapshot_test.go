package integration

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type snapJSON struct {
	Name         string `json:"name"`
	KeyID        string `json:"keyId"`
	UsedBytes    int64  `json:"usedBytes"`
	ChunksCopied int64  `json:"chunksCopied"`
	ChunksShared int64  `json:"chunksShared"`
	PauseMicros  int64  `json:"freezePauseMicroseconds"`
}

// TestHostSnapshotExt4 is the snapshot round trip: ext4 on a customer-key
// disk, files written, a snapshot taken while the VM runs and fio writes
// into the file system, more files written; a disk made from the snapshot
// and attached to a second VM shows exactly the files as of the snapshot
// (and e2fsck finds it clean), the original shows the later ones. A key
// rotation then reaches the snapshot and an image made from it.
func TestHostSnapshotExt4(t *testing.T) {
	h := newHost(t, startKeystore(t))
	kid, _ := cmkVM(t, h)
	h.ok("disk", "create", "--name", "data", "--size", "256M", "--disk-encryption-set", "des1")
	h.ok("vm", "disk", "attach", "--vm-name", "vm1", "--name", "data")
	img := h.img("vm1", "data-1.img")

	mnt := t.TempDir()
	loop := attachLoop(t, img, "--direct-io=on")
	sh(t, "mkfs.ext4 -q -F "+loop)
	sh(t, "mount "+loop+" "+mnt)
	defer exec.Command("umount", mnt).Run()
	sh(t, fmt.Sprintf(`cd %s && mkdir -p before && for i in $(seq 1 30); do head -c $((i*7000)) /dev/urandom > before/f$i; done && sync`, mnt))
	list := func(dir string) string {
		// Every file but fio's, whose content depends on when it ran.
		return sh(t, "cd "+dir+" && find . -type f ! -path './lost+found/*' ! -name 'busy.*' -print0 | sort -z | xargs -0 -r sha256sum")
	}
	atSnapshot := list(mnt)

	// fio writes into the file system while the snapshot is taken.
	fio := exec.Command("fio", "--name=busy", "--directory="+mnt, "--size=32M", "--rw=randwrite", "--bs=4k",
		"--ioengine=libaio", "--iodepth=16", "--direct=1", "--time_based", "--runtime=6", "--output=/dev/null")
	require.NoError(t, fio.Start())
	time.Sleep(1500 * time.Millisecond)
	var s snapJSON
	h.json(&s, "snapshot", "create", "--name", "snap1", "--source", "data")
	require.NoError(t, fio.Wait(), "fio failed during the snapshot")
	require.Positive(t, s.ChunksCopied)
	t.Logf("snapshot of a disk under fio load: writes held for %d µs, %d chunks copied", s.PauseMicros, s.ChunksCopied)
	require.Less(t, s.PauseMicros, int64(500_000), "writes held back for more than a brief moment")

	sh(t, fmt.Sprintf(`cd %s && mkdir -p after && for i in $(seq 1 10); do head -c 9000 /dev/urandom > after/g$i; done && sync`, mnt))
	later := list(mnt)
	require.NotEqual(t, atSnapshot, later)

	// A disk from the snapshot, on a second VM.
	h.ok("disk", "create", "--name", "restored", "--source", "snap1")
	h.ok("vm", "create", "--name", "vm2", "--os-disk-size", "8M", "--data-disks", "restored")
	mnt2 := t.TempDir()
	loop2 := attachLoop(t, h.img("vm2", "data-0.img"))
	sh(t, "mount "+loop2+" "+mnt2)           // replays the journal of a crash-consistent copy
	defer exec.Command("umount", mnt2).Run() // only if a check below fails first
	require.Equal(t, atSnapshot, list(mnt2), "the restored disk is not the file system as of the snapshot")
	sh(t, "umount "+mnt2)
	sh(t, "e2fsck -f -n "+loop2)
	sh(t, "losetup -d "+loop2)
	require.Equal(t, later, list(mnt), "the original lost its later files")

	// Rotation reaches snapshots and images.
	h.ok("image", "create", "--name", "img1", "--source", "snap1", "--disk-encryption-set", "des1")
	var im struct {
		KeyID string `json:"keyId"`
	}
	h.json(&im, "image", "show", "--name", "img1")
	require.Equal(t, kid, im.KeyID)
	rotatedKid := h.kid("rotate", "--vault-name", "vault1", "--name", "k1")
	h.ok("des", "update", "--name", "des1", "--key-url", rotatedKid)
	h.json(&s, "snapshot", "show", "--name", "snap1")
	require.Equal(t, rotatedKid, s.KeyID)
	h.json(&im, "image", "show", "--name", "img1")
	require.Equal(t, rotatedKid, im.KeyID)

	// A disk from the image, after the rotation, still has the files.
	h.ok("disk", "create", "--name", "fromimage", "--source", "img1")
	h.ok("vm", "disk", "attach", "--vm-name", "vm2", "--name", "fromimage")
	loop3 := attachLoop(t, h.img("vm2", "data-1.img"))
	sh(t, "mount "+loop3+" "+mnt2)
	require.Equal(t, atSnapshot, list(mnt2))
	sh(t, "umount "+mnt2)
	sh(t, "losetup -d "+loop3)

	// Deleting them destroys their keys and data; the disks stay.
	h.ok("image", "delete", "--name", "img1")
	h.ok("snapshot", "delete", "--name", "snap1")
	_, errOut, code := h.run("snapshot", "show", "--name", "snap1")
	require.NotEqual(t, 0, code)
	require.Contains(t, errOut, "does not exist")
	out := sh(t, "(find "+h.storage+"/snapshots "+h.storage+"/images -type f 2>/dev/null || true) | wc -l")
	require.Equal(t, "0", strings.TrimSpace(out))
}
