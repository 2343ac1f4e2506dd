package imgfile

import (
	"context"
	"errors"
	"fmt"
	"io"

	"hostcrypt/internal/zeros"
)

// copyBuf is how much is read at once: large enough for sequential speed,
// small enough that progress moves often.
const copyBuf = 1 << 20

// Progress is how far a copy is: Done bytes of Total are behind it (holes
// count as done), of which Data bytes held data and were written.
type Progress struct {
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
	Data  int64 `json:"data"`
}

// NextDataFunc returns the first range [start, end) at or after off that
// may hold data; start >= size when none does.
type NextDataFunc func(off int64) (start, end int64, err error)

// Copy copies the first size bytes of src into dst, sparsely: only the
// ranges next reports are read, and within them only blocks that are not
// all zero are written, so dst must read as zeros wherever it is not
// written (a new sparse file, a new disk). Ranges are widened to whole
// 4 KiB blocks. progress, if not nil, is called as the copy advances.
func Copy(ctx context.Context, dst io.WriterAt, src io.ReaderAt, size int64, next NextDataFunc, progress func(Progress)) error {
	buf := make([]byte, copyBuf)
	p := Progress{Total: size}
	report := func(done int64) {
		p.Done = done
		if progress != nil {
			progress(p)
		}
	}
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		start, end, err := next(off)
		if err != nil {
			return fmt.Errorf("finding data at offset %d: %w", off, err)
		}
		if start >= size {
			break
		}
		if start < off || end <= start {
			return fmt.Errorf("finding data at offset %d: bad range [%d, %d)", off, start, end)
		}
		start = start / BlockSize * BlockSize
		end = min((end+BlockSize-1)/BlockSize*BlockSize, size)
		report(start)
		for pos := start; pos < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int(min(int64(len(buf)), end-pos))
			if m, err := src.ReadAt(buf[:n], pos); m < n {
				if err == nil || errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("reading at offset %d: %w", pos, err)
			}
			if err := writeNonZero(dst, buf[:n], pos, &p.Data); err != nil {
				return err
			}
			pos += int64(n)
			report(pos)
		}
		off = end
	}
	report(size)
	return nil
}

// writeNonZero writes the runs of b that are not all-zero blocks at off.
func writeNonZero(dst io.WriterAt, b []byte, off int64, written *int64) error {
	for i := 0; i < len(b); {
		j := min(i+BlockSize, len(b))
		if zeros.Is(b[i:j]) {
			i = j
			continue
		}
		for j < len(b) {
			k := min(j+BlockSize, len(b))
			if zeros.Is(b[j:k]) {
				break
			}
			j = k
		}
		if _, err := dst.WriteAt(b[i:j], off+int64(i)); err != nil {
			return fmt.Errorf("writing at offset %d: %w", off+int64(i), err)
		}
		*written += int64(j - i)
		i = j
	}
	return nil
}
