package disk

import (
	"context"
	"fmt"
)

// ChunkCount is how many chunks the disk's size spans.
func (d *Disk) ChunkCount() int64 { return d.chunkCount(d.size.Load()) }

// CopyChunks copies the plaintext of chunks [from, ChunkCount) of src into
// dst, which must have the same size and geometry. Chunks never written are
// skipped, so a sparse disk stays sparse. After each chunk dst is synced and
// done is called with the index of the next chunk to copy, so a caller can
// record progress durably and resume an interrupted copy from there.
func CopyChunks(ctx context.Context, src, dst *Disk, from int64, done func(next int64) error) error {
	if src.Size() != dst.Size() || src.cbytes != dst.cbytes {
		return fmt.Errorf("copy from disk %s to %s: sizes or chunk sizes differ", src.prefix, dst.prefix)
	}
	n := src.ChunkCount()
	bp := src.getBuf(int(src.cbytes))
	defer src.putBuf(bp)
	buf := *bp
	for i := from; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		st, err := src.stateAt(i, i*int64(src.lay.chunkBlocks))
		if err != nil {
			return src.ioErr(i*int64(src.lay.chunkBlocks), err)
		}
		if st != nil {
			off := i * src.cbytes
			m := int(min(src.cbytes, src.Size()-off))
			if _, err := src.ReadAt(buf[:m], off); err != nil {
				return err
			}
			if _, err := dst.WriteAt(buf[:m], off); err != nil {
				return err
			}
			if err := dst.Sync(); err != nil {
				return err
			}
		}
		if err := done(i + 1); err != nil {
			return err
		}
	}
	return nil
}
