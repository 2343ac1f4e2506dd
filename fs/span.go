package fs

import (
	"math"
	"syscall"

	"golang.org/x/sys/unix"
)

// readSpan returns how many of the n bytes asked for at off lie inside an
// image of the given size. Reads at or past the end return 0 (EOF).
func readSpan(off int64, n int, size int64) int {
	if off < 0 || off >= size || n <= 0 {
		return 0
	}
	return int(min(int64(n), size-off))
}

// writeSpan returns how many of the n bytes written at off fit in an image of
// the given size. Like a block device, an image cannot grow by writing: a
// write that starts at or past the end fails with ENOSPC, one that crosses it
// is cut short.
func writeSpan(off int64, n int, size int64) (int, syscall.Errno) {
	switch {
	case off < 0:
		return 0, syscall.EINVAL
	case n <= 0:
		return 0, 0
	case off >= size:
		return 0, syscall.ENOSPC
	}
	return int(min(int64(n), size-off)), 0
}

// allocAction is what a fallocate request turns into.
type allocAction int

const (
	allocNone    allocAction = iota // succeed without touching the image
	allocDiscard                    // Image.Discard
	allocZero                       // Zeroer.ZeroRange, else Image.Discard
)

// planAllocate decides what fallocate(mode, off, length) does on an image of
// the given size, and clamps the range to the image. See the package comment
// for the reasoning behind each answer.
func planAllocate(mode uint32, off, length uint64, size int64) (allocAction, int64, int64, syscall.Errno) {
	if off > math.MaxInt64 || length > math.MaxInt64-off {
		return allocNone, 0, 0, syscall.EFBIG
	}
	start, end := int64(off), int64(off+length)
	keepSize := mode&unix.FALLOC_FL_KEEP_SIZE != 0

	var action allocAction
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case unix.FALLOC_FL_ALLOCATE_RANGE:
		action = allocNone
	case unix.FALLOC_FL_PUNCH_HOLE:
		if !keepSize { // the kernel refuses this too
			return allocNone, 0, 0, syscall.EOPNOTSUPP
		}
		action = allocDiscard
	case unix.FALLOC_FL_ZERO_RANGE:
		action = allocZero
	default:
		return allocNone, 0, 0, syscall.EOPNOTSUPP
	}
	if end > size {
		if !keepSize {
			return allocNone, 0, 0, syscall.EFBIG
		}
		end = size
	}
	if action == allocNone || start >= end {
		return allocNone, 0, 0, 0
	}
	return action, start, end - start, 0
}

// seekWhole answers SEEK_DATA/SEEK_HOLE for an image without a Seeker: all of
// it is data, and its only hole is the implicit one at the end.
func seekWhole(whence uint32, off, size int64) (int64, syscall.Errno) {
	if off < 0 || off >= size {
		return 0, syscall.ENXIO
	}
	switch whence {
	case unix.SEEK_DATA:
		return off, 0
	case unix.SEEK_HOLE:
		return size, 0
	}
	return 0, syscall.EINVAL
}
