package fs

import (
	"errors"
	"syscall"
)

// Image is one disk as the tree serves it. The disk engine implements it.
//
// All methods must be safe for concurrent use: the tree calls ReadAt and
// WriteAt from many goroutines at once for the same image and holds no lock
// that would serialise them. Neither ReadAt nor WriteAt may keep p after
// returning (the buffers belong to the FUSE server and are reused).
//
// Size is called on every request and must be cheap.
//
// Errors that wrap a syscall.Errno are passed to the caller as that errno;
// an integrity failure or a revoked key should wrap syscall.EIO. Any other
// error becomes EIO.
type Image interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Discard punches a hole: the range reads as zeros afterwards.
	Discard(off, n int64) error
	Sync() error
	Size() int64
}

// Seeker is implemented by images that know where their data is. It answers
// lseek(2) SEEK_DATA and SEEK_HOLE; without it the whole image is data.
// The tree only calls it with 0 <= off < Size(). SeekData returns an error
// wrapping syscall.ENXIO when there is no data at or after off.
type Seeker interface {
	SeekData(off int64) (int64, error)
	SeekHole(off int64) (int64, error)
}

// Lender is implemented by images that sometimes hold the data of a read in
// a buffer of their own already (the disk engine's read-ahead). ReadLent
// reads like ReadAt into p, or answers with that buffer: then release is not
// nil, and the tree replies with data and calls release once the reply is
// sent. Otherwise data is the part of p that was read. The errors are those
// of ReadAt. release is the one call into an image that may come after the
// image was removed from the tree (and closed): it must be safe then.
type Lender interface {
	ReadLent(p []byte, off int64) (data []byte, release func(), err error)
}

// Zeroer is implemented by images that can zero a range more cheaply, or
// differently, than Discard (fallocate FALLOC_FL_ZERO_RANGE). Without it the
// tree uses Discard, which reads back as zeros as well.
type Zeroer interface {
	ZeroRange(off, n int64) error
}

// toErrno maps an engine error to the errno the caller sees.
func toErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) && errno != 0 {
		return errno
	}
	return syscall.EIO
}
