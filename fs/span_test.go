package fs

import (
	"errors"
	"fmt"
	"io"
	"math"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"golang.org/x/sys/unix"
)

func TestReadSpan(t *testing.T) {
	for _, c := range []struct {
		off  int64
		n    int
		size int64
		want int
	}{
		{0, 4096, 8192, 4096},
		{4096, 8192, 8192, 4096}, // crosses the end: short
		{8192, 4096, 8192, 0},    // at the end: EOF
		{9000, 4096, 8192, 0},
		{-1, 4096, 8192, 0},
		{0, 0, 8192, 0},
	} {
		assert.Equal(t, c.want, readSpan(c.off, c.n, c.size), "%+v", c)
	}
}

func TestWriteSpan(t *testing.T) {
	for _, c := range []struct {
		off   int64
		n     int
		size  int64
		want  int
		errno syscall.Errno
	}{
		{0, 4096, 8192, 4096, 0},
		{4096, 8192, 8192, 4096, 0}, // crosses the end: short, like a block device
		{8192, 1, 8192, 0, syscall.ENOSPC},
		{1 << 40, 1, 8192, 0, syscall.ENOSPC},
		{8192, 0, 8192, 0, 0},
		{-1, 1, 8192, 0, syscall.EINVAL},
	} {
		n, errno := writeSpan(c.off, c.n, c.size)
		assert.Equal(t, c.want, n, "%+v", c)
		assert.Equal(t, c.errno, errno, "%+v", c)
	}
}

func TestPlanAllocate(t *testing.T) {
	const (
		keep  = unix.FALLOC_FL_KEEP_SIZE
		punch = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		zero  = unix.FALLOC_FL_ZERO_RANGE
		size  = 1 << 20
	)
	for _, c := range []struct {
		name      string
		mode      uint32
		off, n    uint64
		action    allocAction
		start, nn int64
		errno     syscall.Errno
	}{
		{"allocate inside", 0, 0, size, allocNone, 0, 0, 0},
		{"allocate past the end", 0, 4096, size, allocNone, 0, 0, syscall.EFBIG},
		{"allocate past the end, keep size", keep, 4096, size, allocNone, 0, 0, 0},
		{"punch", punch, 4096, 8192, allocDiscard, 4096, 8192, 0},
		{"punch clamped", punch, size - 4096, 1 << 30, allocDiscard, size - 4096, 4096, 0},
		{"punch past the end", punch, size, 4096, allocNone, 0, 0, 0},
		{"punch without keep size", unix.FALLOC_FL_PUNCH_HOLE, 0, 4096, allocNone, 0, 0, syscall.EOPNOTSUPP},
		{"zero", zero, 512, 1024, allocZero, 512, 1024, 0},
		{"zero keep size", zero | keep, 0, 4096, allocZero, 0, 4096, 0},
		{"zero growing", zero, size - 4096, 8192, allocNone, 0, 0, syscall.EFBIG},
		{"zero clamped", zero | keep, size - 4096, 8192, allocZero, size - 4096, 4096, 0},
		{"collapse", unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4096, allocNone, 0, 0, syscall.EOPNOTSUPP},
		{"insert", unix.FALLOC_FL_INSERT_RANGE, 0, 4096, allocNone, 0, 0, syscall.EOPNOTSUPP},
		{"overflow", punch, math.MaxUint64 - 10, 100, allocNone, 0, 0, syscall.EFBIG},
	} {
		t.Run(c.name, func(t *testing.T) {
			action, start, n, errno := planAllocate(c.mode, c.off, c.n, size)
			assert.Equal(t, c.errno, errno)
			assert.Equal(t, c.action, action)
			assert.Equal(t, c.start, start)
			assert.Equal(t, c.nn, n)
		})
	}
}

func TestSeekWhole(t *testing.T) {
	for _, c := range []struct {
		whence    uint32
		off, size int64
		want      int64
		errno     syscall.Errno
	}{
		{unix.SEEK_DATA, 0, 8192, 0, 0},
		{unix.SEEK_DATA, 100, 8192, 100, 0},
		{unix.SEEK_HOLE, 100, 8192, 8192, 0},
		{unix.SEEK_DATA, 8192, 8192, 0, syscall.ENXIO},
		{unix.SEEK_HOLE, 8192, 8192, 0, syscall.ENXIO},
		{unix.SEEK_SET, 0, 8192, 0, syscall.EINVAL},
	} {
		got, errno := seekWhole(c.whence, c.off, c.size)
		assert.Equal(t, c.want, got, "%+v", c)
		assert.Equal(t, c.errno, errno, "%+v", c)
	}
}

func TestToErrno(t *testing.T) {
	assert.Equal(t, syscall.Errno(0), toErrno(nil))
	assert.Equal(t, syscall.EIO, toErrno(errors.New("boom")))
	assert.Equal(t, syscall.EIO, toErrno(io.ErrUnexpectedEOF))
	assert.Equal(t, syscall.EIO, toErrno(fmt.Errorf("block 7: %w", syscall.EIO)))
	assert.Equal(t, syscall.ENOSPC, toErrno(fmt.Errorf("cache full: %w", syscall.ENOSPC)))
	assert.Equal(t, syscall.EACCES, toErrno(fmt.Errorf("key: %w", fmt.Errorf("revoked: %w", syscall.EACCES))))
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"os.img", "data-0.img", "vm-1", "a b"} {
		assert.NoError(t, checkName(ok), ok)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a\x00b", string(make([]byte, 256))} {
		assert.Error(t, checkName(bad), "%q", bad)
	}
}

func TestParseMountinfo(t *testing.T) {
	point, typ, ok := parseMountinfo(`36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue`)
	assert.True(t, ok)
	assert.Equal(t, "/mnt/parent", point)
	assert.Equal(t, "ext3", typ)

	point, typ, ok = parseMountinfo(`99 1 0:52 / /tmp/with\040space\134x rw,nosuid,nodev - fuse.hostcrypt hostcrypt rw,user_id=0`)
	assert.True(t, ok)
	assert.Equal(t, `/tmp/with space\x`, point)
	assert.Equal(t, "fuse.hostcrypt", typ)

	_, _, ok = parseMountinfo("garbage")
	assert.False(t, ok)
}
