package imgfile

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/internal/zeros"
)

// pattern writes a recognisable, never-zero block for each offset.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i/BlockSize) ^ seed | 1
	}
	return b
}

// sampleRaw makes a 6 MiB + 512 B raw image with data at 0, a zero block
// written as data, a hole, data at 3 MiB and a partial block at the end.
func sampleRaw(t *testing.T) (string, []byte) {
	path := filepath.Join(t.TempDir(), "src.raw")
	size := 6<<20 + 512
	want := make([]byte, size)
	copy(want, pattern(64<<10, 1))
	copy(want[3<<20:], pattern(128<<10, 2))
	copy(want[size-512:], pattern(512, 3))
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(int64(size)))
	_, err = f.WriteAt(want[:64<<10], 0)
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, 8192), 64<<10) // zeros written as data
	require.NoError(t, err)
	_, err = f.WriteAt(want[3<<20:3<<20+128<<10], 3<<20)
	require.NoError(t, err)
	_, err = f.WriteAt(want[size-512:], int64(size-512))
	require.NoError(t, err)
	require.NoError(t, f.Close())
	return path, want
}

// recorder is a WriterAt that keeps what was written and where.
type recorder struct {
	buf    []byte
	writes [][2]int64
}

func (r *recorder) WriteAt(p []byte, off int64) (int, error) {
	copy(r.buf[off:], p)
	r.writes = append(r.writes, [2]int64{off, int64(len(p))})
	return len(p), nil
}

func checkCopy(t *testing.T, src Source, want []byte) {
	t.Helper()
	rec := &recorder{buf: make([]byte, src.Size())}
	var last Progress
	err := Copy(context.Background(), rec, src, src.Size(), src.NextData, func(p Progress) {
		require.GreaterOrEqual(t, p.Done, last.Done)
		last = p
	})
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, rec.buf[:len(want)]), "the copy differs from the source")
	require.Equal(t, src.Size(), last.Done)
	// Only the non-zero blocks were written: 64 KiB + 128 KiB + the tail.
	require.EqualValues(t, 64<<10+128<<10+512, last.Data)
	for _, w := range rec.writes {
		require.False(t, zeros.Is(want[w[0]:w[0]+w[1]]))
	}
}

func TestCopyRawIsSparse(t *testing.T) {
	path, want := sampleRaw(t)
	src, err := Open(context.Background(), path)
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, Raw, src.Format())
	require.EqualValues(t, len(want), src.Size())
	checkCopy(t, src, want)
}

// holeReader fails when asked for bytes of a hole: SEEK_HOLE ranges must
// not be read.
type holeReader struct {
	Source
	t *testing.T
}

func (h holeReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= 1<<20 && off+int64(len(p)) <= 3<<20 {
		h.t.Fatalf("read of %d bytes at %d inside a hole", len(p), off)
	}
	return h.Source.ReadAt(p, off)
}

func TestCopySkipsHoles(t *testing.T) {
	path, want := sampleRaw(t)
	src, err := Open(context.Background(), path)
	require.NoError(t, err)
	defer src.Close()
	checkCopy(t, holeReader{src, t}, want)
}

func TestCopyQCOW2(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-utils not installed")
	}
	path, want := sampleRaw(t)
	q := filepath.Join(t.TempDir(), "src.qcow2")
	out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", path, q).CombinedOutput()
	require.NoError(t, err, "%s", out)
	src, err := Open(context.Background(), q)
	require.NoError(t, err)
	require.Equal(t, QCOW2, src.Format())
	require.EqualValues(t, len(want), src.Size())
	checkCopy(t, src, want)
	require.NoError(t, src.Close())

	// Compressed clusters are read through qemu as well.
	c := filepath.Join(t.TempDir(), "src-c.qcow2")
	out, err = exec.Command("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", path, c).CombinedOutput()
	require.NoError(t, err, "%s", out)
	src, err = Open(context.Background(), c)
	require.NoError(t, err)
	checkCopy(t, src, want)
	require.NoError(t, src.Close())

	// An overlay needs its backing file: refused.
	o := filepath.Join(t.TempDir(), "overlay.qcow2")
	out, err = exec.Command("qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", q, o).CombinedOutput()
	require.NoError(t, err, "%s", out)
	_, err = Open(context.Background(), o)
	require.ErrorIs(t, err, ErrUnsupportedFormat)
}

func TestOpenRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o600))
		return p
	}
	ctx := context.Background()
	_, err := Open(ctx, filepath.Join(dir, "missing"))
	require.ErrorContains(t, err, "does not exist")
	_, err = Open(ctx, dir)
	require.ErrorIs(t, err, ErrNotImage)
	_, err = Open(ctx, write("empty", nil))
	require.ErrorIs(t, err, ErrNotImage)
	_, err = Open(ctx, write("disk.vmdk", append([]byte("KDMV"), make([]byte, 1020)...)))
	require.ErrorIs(t, err, ErrUnsupportedFormat)
	_, err = Open(ctx, write("disk.raw.gz", []byte{0x1f, 0x8b, 8, 0, 0, 0}))
	require.ErrorIs(t, err, ErrUnsupportedFormat)
	if _, lerr := exec.LookPath("qemu-img"); lerr == nil {
		_, err = Open(ctx, write("bad.qcow2", append([]byte("QFI\xfb"), make([]byte, 1020)...)))
		require.ErrorIs(t, err, ErrNotImage)
	}
}

func TestSeekExtentEnd(t *testing.T) {
	path, _ := sampleRaw(t)
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	st, _ := f.Stat()
	s, e, err := SeekExtent(int(f.Fd()), st.Size(), st.Size())
	require.NoError(t, err)
	require.Equal(t, st.Size(), s)
	require.Equal(t, st.Size(), e)
	require.False(t, errors.Is(err, syscall.ENXIO))
}
