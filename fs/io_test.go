package fs

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const mib = 1 << 20

func randomBytes(t testing.TB, n int) []byte {
	p := make([]byte, n)
	_, err := rand.Read(p)
	require.NoError(t, err)
	return p
}

func TestDirectReadWriteRoundTrip(t *testing.T) {
	tree := mountTree(t, Options{})
	fake := newFake(t, 8*mib)
	require.NoError(t, tree.AddImage("vm", "os.img", fake))
	img := imgPath(tree, "vm", "os.img")

	// Written through the mount with O_DIRECT, checked in the image.
	pattern := randomBytes(t, 4*mib)
	src := filepath.Join(t.TempDir(), "pattern")
	require.NoError(t, os.WriteFile(src, pattern, 0o600))
	mustRun(t, "dd", "if="+src, "of="+img, "bs=1M", "seek=1", "oflag=direct", "conv=notrunc,fsync", "status=none")
	require.True(t, bytes.Equal(pattern, fake.bytes(mib, 4*mib)), "image content differs from what was written")
	require.Positive(t, fake.syncs.Load(), "fsync did not reach Image.Sync")
	require.Equal(t, make([]byte, mib), fake.bytes(0, mib), "bytes before the write changed")

	// Put in the image, read through the mount with O_DIRECT.
	other := randomBytes(t, 2*mib+512)
	fake.fill(5*mib, other)
	dst := filepath.Join(t.TempDir(), "out")
	mustRun(t, "dd", "if="+img, "of="+dst, "bs=512", "skip=10240", "count=4097", "iflag=direct", "status=none")
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(other, got), "read back differs")

	// A buffered reader (no O_DIRECT) sees the same bytes: nothing stale is
	// kept in the page cache.
	fake.fill(5*mib, pattern[:mib])
	mustRun(t, "dd", "if="+img, "of="+dst, "bs=1M", "skip=5", "count=1", "status=none")
	got, err = os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(pattern[:mib], got), "buffered read served stale data")
}

func TestEndOfImage(t *testing.T) {
	tree := mountTree(t, Options{})
	fake := newFake(t, mib)
	require.NoError(t, tree.AddImage("vm", "os.img", fake))
	out := python(t, `
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
size = int(sys.argv[2])
def t(name, f):
    try:
        print(name, f())
    except OSError as e:
        print(name, errno.errorcode[e.errno])
t("write-crossing", lambda: os.pwrite(fd, b"x" * 8192, size - 4096))
t("write-at-end", lambda: os.pwrite(fd, b"x" * 4096, size))
t("write-past-end", lambda: os.pwrite(fd, b"x", size + 10**6))
t("read-crossing", lambda: len(os.pread(fd, 8192, size - 4096)))
t("read-at-end", lambda: len(os.pread(fd, 4096, size)))
t("read-past-end", lambda: len(os.pread(fd, 4096, size * 2)))
t("seek-end", lambda: os.lseek(fd, 0, os.SEEK_END))
`, imgPath(tree, "vm", "os.img"), strconv.Itoa(mib))
	assert.Equal(t, `write-crossing 4096
write-at-end ENOSPC
write-past-end ENOSPC
read-crossing 4096
read-at-end 0
read-past-end 0
seek-end 1048576
`, out)
	assert.Equal(t, bytes.Repeat([]byte("x"), 4096), fake.bytes(mib-4096, 4096))
}

func TestResized(t *testing.T) {
	tree := mountTree(t, Options{})
	fake := newFake(t, mib)
	require.NoError(t, tree.AddImage("vm", "data-0.img", fake))
	img := imgPath(tree, "vm", "data-0.img")
	require.Equal(t, "1048576 0o100600 0\n", python(t, statScript, img))
	fake.resize(3 * mib)
	tree.Resized("vm", "data-0.img")
	require.Equal(t, "3145728 0o100600 0\n", python(t, statScript, img))
	tree.Resized("vm", "nope") // ignored
}

func TestStatfs(t *testing.T) {
	tree := mountTree(t, Options{})
	require.NoError(t, tree.AddImage("vm", "os.img", newFake(t, 4*mib)))
	require.NoError(t, tree.AddImage("vm", "temp.img", newFake(t, 2*mib)))
	out := python(t, `
import os, sys
s = os.statvfs(sys.argv[1])
print(s.f_frsize * s.f_blocks, s.f_bfree, s.f_namemax)
`, imgPath(tree, "vm", "os.img"))
	assert.Equal(t, "6291456 0 255\n", out)
	assert.Contains(t, mustRun(t, "df", "-T", tree.Dir()), "fuse.hostcrypt")
}

func TestDiscardAndZero(t *testing.T) {
	requireTool(t, "fallocate")
	tree := mountTree(t, Options{})
	plain := newFake(t, mib)
	sparse := &sparseFake{fakeImage: newFake(t, mib)}
	require.NoError(t, tree.AddImage("vm", "plain.img", plain))
	require.NoError(t, tree.AddImage("vm", "sparse.img", sparse))
	ones := bytes.Repeat([]byte{1}, mib)
	plain.fill(0, ones)
	sparse.fill(0, ones)
	p, s := imgPath(tree, "vm", "plain.img"), imgPath(tree, "vm", "sparse.img")

	// Punch hole: Discard, and the range reads as zeros through the mount.
	mustRun(t, "fallocate", "--punch-hole", "--offset", "4096", "--length", "8192", p)
	require.Equal(t, [][2]int64{{4096, 8192}}, plain.discarded())
	out := python(t, `
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.pread(fd, 4096, 0).count(0), os.pread(fd, 8192, 4096).count(0), os.pread(fd, 4096, 12288).count(0))
`, p)
	require.Equal(t, "0 8192 0\n", out)

	// A hole reaching past the end is clamped.
	mustRun(t, "fallocate", "--punch-hole", "--offset", strconv.Itoa(mib-4096), "--length", strconv.Itoa(mib), p)
	require.Equal(t, [2]int64{mib - 4096, 4096}, plain.discarded()[1])

	// Zero range: ZeroRange when the image has it, Discard otherwise.
	mustRun(t, "fallocate", "--zero-range", "--keep-size", "--offset", "0", "--length", "4096", s)
	require.EqualValues(t, 1, sparse.zeroes.Load())
	require.Empty(t, sparse.discarded())
	require.Equal(t, make([]byte, 4096), sparse.bytes(0, 4096))
	mustRun(t, "fallocate", "--zero-range", "--offset", "16384", "--length", "4096", p)
	require.Equal(t, [2]int64{16384, 4096}, plain.discarded()[2])

	// Plain allocation inside the image does nothing; growing is refused.
	mustRun(t, "fallocate", "--offset", "0", "--length", strconv.Itoa(mib), p)
	require.Len(t, plain.discarded(), 3)
	_, err := run(t, "fallocate", "--offset", "0", "--length", strconv.Itoa(2*mib), p)
	require.ErrorContains(t, err, "too large")
	require.Equal(t, ones[:4096], plain.bytes(mib/2, 4096), "allocation changed data")
}

const seekScript = `
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for off in map(int, sys.argv[2:]):
    r = []
    for how in (os.SEEK_DATA, os.SEEK_HOLE):
        try:
            r.append(str(os.lseek(fd, off, how)))
        except OSError as e:
            r.append(errno.errorcode[e.errno])
    print(off, *r)
`

func TestSeekDataHole(t *testing.T) {
	tree := mountTree(t, Options{})
	sparse := &sparseFake{fakeImage: newFake(t, 64*1024)}
	sparse.fill(16384, []byte{1})                     // data in block 4
	sparse.fill(40960, make([]byte, 1))               // still a hole
	sparse.fill(57344, bytes.Repeat([]byte{2}, 8192)) // blocks 14-15, up to the end
	require.NoError(t, tree.AddImage("vm", "sparse.img", sparse))
	require.NoError(t, tree.AddImage("vm", "plain.img", newFake(t, 64*1024)))

	out := python(t, seekScript, imgPath(tree, "vm", "sparse.img"), "0", "16384", "17000", "20480", "60000", "65536", "100000")
	assert.Equal(t, `0 16384 0
16384 16384 20480
17000 17000 20480
20480 57344 20480
60000 60000 65536
65536 ENXIO ENXIO
100000 ENXIO ENXIO
`, out)

	// Without a Seeker the whole image is data.
	out = python(t, seekScript, imgPath(tree, "vm", "plain.img"), "0", "4096", "65536")
	assert.Equal(t, "0 0 65536\n4096 4096 65536\n65536 ENXIO ENXIO\n", out)
}

func TestRefusedOperations(t *testing.T) {
	tree := mountTree(t, Options{})
	require.NoError(t, tree.AddImage("vm", "os.img", newFake(t, mib)))
	out := python(t, `
import errno, os, stat, sys
root, size = sys.argv[1], int(sys.argv[2])
d, img = root + "/vm", root + "/vm/os.img"
def t(name, f):
    try:
        f()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
t("create", lambda: os.open(d + "/new.img", os.O_CREAT | os.O_WRONLY, 0o600))
t("mkdir", lambda: os.mkdir(root + "/vm2"))
t("mknod", lambda: os.mknod(d + "/fifo", 0o600 | stat.S_IFIFO))
t("unlink", lambda: os.unlink(img))
t("rmdir", lambda: os.rmdir(d))
t("rename", lambda: os.rename(img, d + "/other.img"))
t("link", lambda: os.link(img, d + "/hard.img"))
t("symlink", lambda: os.symlink("os.img", d + "/sym.img"))
t("chmod", lambda: os.chmod(img, 0o644))
t("chmod-dir", lambda: os.chmod(d, 0o700))
t("chown", lambda: os.chown(img, 1, 1))
t("utime", lambda: os.utime(img, (0, 0)))
t("truncate", lambda: os.truncate(img, 4096))
t("truncate-same", lambda: os.truncate(img, size))
t("open-trunc", lambda: os.open(img, os.O_WRONLY | os.O_TRUNC))
t("setxattr", lambda: os.setxattr(img, "user.x", b"1"))
t("open-rdwr", lambda: os.close(os.open(img, os.O_RDWR | os.O_DIRECT)))
`, tree.Dir(), strconv.Itoa(mib))
	assert.Equal(t, `create EPERM
mkdir EPERM
mknod EPERM
unlink EPERM
rmdir EPERM
rename EPERM
link EPERM
symlink EPERM
chmod EPERM
chmod-dir EPERM
chown EPERM
utime EPERM
truncate EPERM
truncate-same ok
open-trunc EPERM
setxattr ENOTSUP
open-rdwr ok
`, out)
	assert.Equal(t, []string{"os.img"}, tree.Images("vm"))
}

func TestImageErrorsReachTheReader(t *testing.T) {
	tree := mountTree(t, Options{})
	fake := newFake(t, mib)
	require.NoError(t, tree.AddImage("vm", "os.img", fake))
	img := imgPath(tree, "vm", "os.img")
	fake.failReads.Store(true)
	out := python(t, `
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    os.pread(fd, 4096, 0)
    print("read ok")
except OSError as e:
    print("read", errno.errorcode[e.errno])
`, img)
	assert.Equal(t, "read EIO\n", out)
	_, err := run(t, "dd", "if="+img, "of=/dev/null", "bs=4k", "count=1", "iflag=direct")
	assert.ErrorContains(t, err, "Input/output error")
	fake.failReads.Store(false)
	mustRun(t, "dd", "if="+img, "of=/dev/null", "bs=4k", "count=1", "iflag=direct", "status=none")
}

// TestRemoveWhileOpen removes an image under a process that holds it open:
// the descriptor then fails with EIO, and the Image is never called again.
func TestRemoveWhileOpen(t *testing.T) {
	requireTool(t, "python3")
	tree := mountTree(t, Options{})
	fake := newFake(t, mib)
	require.NoError(t, tree.AddImage("vm", "os.img", fake))

	cmd := exec.Command(pythonPath(), "-c", `
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
print("open", len(os.pread(fd, 4096, 0)), flush=True)
sys.stdin.readline()
def t(name, f):
    try:
        print(name, f())
    except OSError as e:
        print(name, errno.errorcode[e.errno])
t("read", lambda: len(os.pread(fd, 4096, 0)))
t("write", lambda: os.pwrite(fd, b"x" * 4096, 0))
t("fsync", lambda: os.fsync(fd))
t("nlink", lambda: os.fstat(fd).st_nlink)
t("close", lambda: os.close(fd))
t("reopen", lambda: os.open(sys.argv[1], os.O_RDONLY))
`, imgPath(tree, "vm", "os.img"))
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	lines := bufio.NewScanner(stdout)
	require.True(t, lines.Scan())
	require.Equal(t, "open 4096", lines.Text())

	require.NoError(t, tree.RemoveImage("vm", "os.img"))
	fake.offLimits.Store(true)
	_, err = stdin.Write([]byte("\n"))
	require.NoError(t, err)
	var got []string
	for lines.Scan() {
		got = append(got, lines.Text())
	}
	require.NoError(t, cmd.Wait())
	assert.Equal(t, []string{"read EIO", "write EIO", "fsync EIO", "nlink 0", "close None", "reopen ENOENT"}, got)
	assert.Equal(t, []string{}, tree.Images("vm"))
	require.ErrorIs(t, tree.RemoveImage("vm", "os.img"), os.ErrNotExist)
}

// fioRun runs fio with args and returns its JSON report of the one job.
func fioRun(t testing.TB, args ...string) fioJob {
	t.Helper()
	requireTool(t, "fio")
	// No verify state files left in the working directory.
	out := mustRun(t, "fio", append([]string{"--output-format=json", "--verify_state_save=0"}, args...)...)
	var rep struct {
		Jobs []fioJob `json:"jobs"`
	}
	// fio may print notices before the JSON.
	i := strings.IndexByte(out, '{')
	require.GreaterOrEqual(t, i, 0, "no JSON in fio output: %s", out)
	require.NoError(t, json.Unmarshal([]byte(out[i:]), &rep), out)
	require.NotEmpty(t, rep.Jobs)
	job := rep.Jobs[0]
	for _, j := range rep.Jobs[1:] {
		job.Error = max(job.Error, j.Error)
		job.Read.add(j.Read)
		job.Write.add(j.Write)
	}
	require.Zero(t, job.Error, "fio job failed")
	return job
}

type fioJob struct {
	Error int    `json:"error"`
	Read  fioDir `json:"read"`
	Write fioDir `json:"write"`
}

type fioDir struct {
	BW   float64 `json:"bw_bytes"`
	IOPS float64 `json:"iops"`
}

func (d *fioDir) add(o fioDir) { d.BW += o.BW; d.IOPS += o.IOPS }

func (d fioDir) String() string {
	return fmt.Sprintf("%.0f MiB/s %.0f IOPS", d.BW/mib, d.IOPS)
}

func TestFioVerify(t *testing.T) {
	tree := mountTree(t, Options{})
	fake := newFake(t, 64*mib)
	// Long enough for requests to pile up if the tree let them through in
	// parallel.
	fake.delay = 200 * time.Microsecond
	require.NoError(t, tree.AddImage("vm", "data-0.img", fake))
	img := imgPath(tree, "vm", "data-0.img")

	t.Run("libaio-iodepth32", func(t *testing.T) {
		fioRun(t, "--name=libaio", "--filename="+img, "--size=64M", "--direct=1",
			"--ioengine=libaio", "--iodepth=32", "--rw=randwrite", "--bs=4k",
			"--verify=crc32c", "--verify_fatal=1")
		// A disk engine must see the queue depth, not one request at a time.
		assert.Greater(t, fake.maxWrites.Load(), int64(1), "WriteAt never ran concurrently")
		t.Logf("most concurrent WriteAt calls: %d", fake.maxWrites.Load())
	})
	t.Run("psync-1M", func(t *testing.T) {
		fioRun(t, "--name=psync", "--filename="+img, "--size=64M", "--direct=1",
			"--ioengine=psync", "--rw=write", "--bs=1M",
			"--verify=crc32c", "--verify_fatal=1")
	})
	t.Run("buffered-512", func(t *testing.T) {
		fioRun(t, "--name=buffered", "--filename="+img, "--size=1M", "--direct=0",
			"--ioengine=psync", "--rw=randwrite", "--bs=512",
			"--verify=crc32c", "--verify_fatal=1")
	})
}

// TestRemoveUnderLoad removes an image while a deep queue of writes is in
// flight: RemoveImage must wait for the calls in progress, and nothing may
// reach the Image after it returns.
func TestRemoveUnderLoad(t *testing.T) {
	requireTool(t, "fio")
	tree := mountTree(t, Options{})
	fake := newFake(t, 64*mib)
	fake.delay = 500 * time.Microsecond
	require.NoError(t, tree.AddImage("vm", "os.img", fake))

	cmd := exec.Command("fio", "--name=load", "--filename="+imgPath(tree, "vm", "os.img"),
		"--size=64M", "--direct=1", "--ioengine=libaio", "--iodepth=32", "--rw=randwrite",
		"--bs=4k", "--time_based", "--runtime=30")
	require.NoError(t, cmd.Start())
	deadline := time.Now().Add(20 * time.Second)
	for fake.writes.Load() < 200 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	require.NoError(t, tree.RemoveImage("vm", "os.img"))
	fake.offLimits.Store(true)
	inflight := fake.inflight.Load()
	err := cmd.Wait()
	require.Error(t, err, "fio kept writing to a removed image")
	assert.Zero(t, inflight, "WriteAt still running after RemoveImage returned")
}

func TestLoopDeviceExt4(t *testing.T) {
	requireRoot(t)
	for _, tool := range []string{"losetup", "mkfs.ext4", "e2fsck", "mount", "umount"} {
		requireTool(t, tool)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil && os.Getenv("CI") == "" {
		t.Skip("no loop devices")
	}
	tree := mountTree(t, Options{})
	fake := newFake(t, 64*mib)
	require.NoError(t, tree.AddImage("vm", "data-0.img", fake))

	dev := strings.TrimSpace(mustRun(t, "losetup", "--find", "--show", imgPath(tree, "vm", "data-0.img")))
	detached := false
	t.Cleanup(func() {
		if !detached {
			_, _ = run(t, "losetup", "-d", dev)
		}
	})
	mustRun(t, "mkfs.ext4", "-q", "-F", dev)
	mnt := t.TempDir()
	mustRun(t, "mount", dev, mnt)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			_, _ = run(t, "umount", mnt)
		}
	})
	payload := randomBytes(t, 3*mib)
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "payload"), payload, 0o600))
	mustRun(t, "umount", mnt)
	mounted = false
	mustRun(t, "e2fsck", "-f", "-n", dev)
	mustRun(t, "mount", "-o", "ro", dev, mnt)
	mounted = true
	out := python(t, `
import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())
`, filepath.Join(mnt, "payload"))
	mustRun(t, "umount", mnt)
	mounted = false
	mustRun(t, "losetup", "-d", dev)
	detached = true

	want := python(t, `
import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())
`, writeTemp(t, payload))
	require.Equal(t, want, out)
	// The ext4 superblock magic is in the image itself.
	require.Equal(t, []byte{0x53, 0xef}, fake.bytes(1024+56, 2))
}

func writeTemp(t testing.TB, p []byte) string {
	f := filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.WriteFile(f, p, 0o600))
	return f
}

// lendingFake lends a buffer of its own for every read of at least 64 KiB,
// as the disk engine does for a read-ahead, and counts what comes back.
type lendingFake struct {
	*fakeImage
	lent, released atomic.Int64
	failLent       atomic.Bool // fail a lending read after taking the buffer
}

func (l *lendingFake) ReadLent(p []byte, off int64) ([]byte, func(), error) {
	if len(p) < 64<<10 {
		n, err := l.ReadAt(p, off)
		return p[:n], nil, err
	}
	buf := make([]byte, len(p))
	n, err := l.ReadAt(buf, off)
	l.lent.Add(1)
	release := func() {
		l.released.Add(1)
		clear(buf) // as if the buffer went back to a pool and was reused
	}
	if l.failLent.Load() {
		return nil, release, fmt.Errorf("fake: block %d: authentication failed: %w", off/4096, syscall.EIO)
	}
	return buf[:n], release, err
}

// TestLentReadBuffers reads through the mount from an image that lends its
// buffers: the reply carries the lent data, and every buffer is given back
// once, also when the read fails.
func TestLentReadBuffers(t *testing.T) {
	tree := mountTree(t, Options{})
	fake := &lendingFake{fakeImage: newFake(t, 8*mib)}
	require.NoError(t, tree.AddImage("vm", "os.img", fake))
	img := imgPath(tree, "vm", "os.img")
	pattern := randomBytes(t, 8*mib)
	fake.fill(0, pattern)

	dst := filepath.Join(t.TempDir(), "out")
	mustRun(t, "dd", "if="+img, "of="+dst, "bs=1M", "iflag=direct", "status=none")
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(pattern, got), "read through lent buffers differs")
	require.Positive(t, fake.lent.Load(), "no read was answered with a lent buffer")
	require.Eventually(t, func() bool { return fake.released.Load() == fake.lent.Load() },
		5*time.Second, 10*time.Millisecond, "lent %d, given back %d", fake.lent.Load(), fake.released.Load())

	fake.failLent.Store(true)
	_, err = run(t, "dd", "if="+img, "of=/dev/null", "bs=1M", "count=1", "iflag=direct")
	assert.ErrorContains(t, err, "Input/output error")
	require.Eventually(t, func() bool { return fake.released.Load() == fake.lent.Load() },
		5*time.Second, 10*time.Millisecond, "a failed read kept its lent buffer")
}
