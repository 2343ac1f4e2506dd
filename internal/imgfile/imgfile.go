// Package imgfile reads disk image files for import and copies sparse data
// between images: it detects the format of a file (raw or qcow2), reports
// which ranges of it may hold data, and copies only those ranges, leaving
// all-zero 4 KiB blocks out.
//
// A raw file is read directly, its holes found with SEEK_DATA/SEEK_HOLE so
// that they are never read. A qcow2 file is read through qemu's own code:
// `qemu-img map` tells which guest ranges hold data and `qemu-nbd` serves
// the guest view read-only on a private unix socket, so compressed clusters,
// subclusters and the rest are handled by qemu and no plaintext copy is
// written anywhere. See docs/IMPORT-EXPORT.md.
package imgfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Errors a caller can tell apart (errors.Is); the wrapped message says what
// was found and what to do.
var (
	// ErrNotImage: the path is not a regular, non-empty file, or claims a
	// format it does not hold.
	ErrNotImage = errors.New("not a disk image")
	// ErrUnsupportedFormat: a known image format other than raw and qcow2,
	// or a qcow2 feature that an import cannot honour (backing files,
	// external data files, encryption).
	ErrUnsupportedFormat = errors.New("unsupported image format")
)

// Formats an import reads.
const (
	Raw   = "raw"
	QCOW2 = "qcow2"
)

// BlockSize is the unit of sparseness: an all-zero block of this size is
// never written.
const BlockSize = 4096

// Source is an image opened for reading its guest view.
type Source interface {
	io.ReaderAt
	// Format is Raw or QCOW2.
	Format() string
	// Size is the virtual size in bytes.
	Size() int64
	// NextData returns the first range [start, end) at or after off that
	// may hold data; start is Size() when no data follows off.
	NextData(off int64) (start, end int64, err error)
	Close() error
}

// magics of formats that are not read, so that they are refused by name
// instead of being imported as raw bytes.
var magics = []struct {
	at    int
	magic string
	name  string
}{
	{0, "KDMV", "VMDK"},
	{0, "# Disk DescriptorFile", "VMDK (descriptor)"},
	{0, "vhdxfile", "VHDX"},
	{0, "conectix", "VHD"},
	{0x40, "\x7f\x10\xda\xbe", "VDI"},
	{0, "QED\x00", "QED"},
	{0, "\x1f\x8b", "gzip-compressed"},
	{0, "\xfd7zXZ\x00", "xz-compressed"},
	{0, "\x28\xb5\x2f\xfd", "zstd-compressed"},
	{0, "BZh", "bzip2-compressed"},
}

const qcow2Magic = "QFI\xfb"

// Detect reads the start of f and names its format: Raw, QCOW2, or an error
// matching ErrUnsupportedFormat for a format that is recognised but not read.
func Detect(f *os.File) (string, error) {
	head := make([]byte, 512)
	n, err := f.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return "", err
	}
	head = head[:n]
	if bytes.HasPrefix(head, []byte(qcow2Magic)) {
		return QCOW2, nil
	}
	for _, m := range magics {
		if len(head) >= m.at+len(m.magic) && string(head[m.at:m.at+len(m.magic)]) == m.magic {
			return "", fmt.Errorf("%s is a %s file: %w; convert it first (qemu-img convert -O qcow2 %s OUT.qcow2, or decompress it)", f.Name(), m.name, ErrUnsupportedFormat, f.Name())
		}
	}
	return Raw, nil
}

// Open opens the image at path, detecting its format.
func Open(ctx context.Context, path string) (Source, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("image file %s: %w; give the absolute path of a raw or qcow2 image on the host", path, os.ErrNotExist)
		}
		return nil, fmt.Errorf("image file %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file: %w; give a raw or qcow2 image file", path, ErrNotImage)
	}
	if st.Size() == 0 {
		f.Close()
		return nil, fmt.Errorf("%s is empty: %w", path, ErrNotImage)
	}
	format, err := Detect(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if format == QCOW2 {
		f.Close()
		return openQCOW2(ctx, path)
	}
	return &rawFile{f: f, size: st.Size()}, nil
}

// rawFile is a raw image: its bytes are the guest's.
type rawFile struct {
	f    *os.File
	size int64
}

func (r *rawFile) Format() string                          { return Raw }
func (r *rawFile) Size() int64                             { return r.size }
func (r *rawFile) ReadAt(p []byte, off int64) (int, error) { return r.f.ReadAt(p, off) }
func (r *rawFile) Close() error                            { return r.f.Close() }

func (r *rawFile) NextData(off int64) (int64, int64, error) {
	return SeekExtent(int(r.f.Fd()), off, r.size)
}

// SeekExtent finds the data range at or after off in the open file fd of
// the given size with SEEK_DATA and SEEK_HOLE. A file system without them
// reports the whole rest of the file as data.
func SeekExtent(fd int, off, size int64) (int64, int64, error) {
	if off >= size {
		return size, size, nil
	}
	start, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if errors.Is(err, syscall.ENXIO) {
		return size, size, nil
	}
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) {
		return off, size, nil
	}
	if err != nil {
		return 0, 0, err
	}
	end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, err
	}
	return start, min(end, size), nil
}
