package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// WriterConfig is one writer process's work.
type WriterConfig struct {
	Path          string // the image, opened O_RDWR; it must exist
	Writer        uint32
	First, Blocks int64  // the region, in blocks
	StartSeq      uint64 // Model.NextSeq
	Seed          uint64 // chooses the blocks; a run can be repeated
	MaxBatch      int    // writes per fdatasync: 1 to MaxBatch, drawn per batch
	// Direct opens the image O_DIRECT; otherwise writes are buffered and
	// only fdatasync makes them durable.
	Direct bool
	// KeepGoing goes on after a failed write or fdatasync (the storage
	// faults come and go); otherwise the first failure ends Write.
	KeepGoing bool
}

// ErrIO is wrapped by the error of a Write that a failed write or
// fdatasync ended.
var ErrIO = errors.New("soak writer: I/O failed")

// WriterStats is what Write did.
type WriterStats struct {
	Batches, Acked, Failed int
}

// Write writes batches of stamped blocks, each followed by fdatasync, and
// logs them to log (see Model) until ctx ends, then returns nil; or until a
// write or fdatasync fails, unless KeepGoing, and returns that error. A
// batch started is finished (written and synced) before ctx is looked at.
func Write(ctx context.Context, cfg WriterConfig, log io.Writer) (WriterStats, error) {
	var st WriterStats
	if cfg.Blocks <= 0 || cfg.First < 0 || cfg.MaxBatch <= 0 || cfg.StartSeq == 0 {
		return st, fmt.Errorf("soak writer: bad config %+v", cfg)
	}
	flags := os.O_RDWR
	if cfg.Direct {
		flags |= unix.O_DIRECT
	}
	f, err := os.OpenFile(cfg.Path, flags, 0)
	if err != nil {
		return st, err
	}
	defer f.Close()
	// O_DIRECT wants an aligned buffer: an anonymous mapping is page-aligned.
	mem, err := unix.Mmap(-1, 0, cfg.MaxBatch*BlockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return st, err
	}
	defer unix.Munmap(mem)
	rnd := rand.New(rand.NewPCG(cfg.Seed, cfg.StartSeq))
	seq := cfg.StartSeq
	var rec []byte
	for ctx.Err() == nil {
		n := 1 + rnd.IntN(cfg.MaxBatch)
		blocks := make([]int64, n)
		rec = rec[:0]
		for i := range blocks {
			blocks[i] = cfg.First + rnd.Int64N(cfg.Blocks)
			rec = fmt.Appendf(rec, "I %d %d\n", seq+uint64(i), blocks[i])
		}
		last := seq + uint64(n) - 1
		if _, err := log.Write(rec); err != nil {
			return st, fmt.Errorf("soak writer log: %w", err)
		}
		st.Batches++
		werr := writeBatch(f, mem, cfg.Writer, blocks, seq)
		seq = last + 1
		if werr != nil {
			st.Failed += n
			if _, err := fmt.Fprintf(log, "F %d %s\n", last, oneLine(werr)); err != nil {
				return st, fmt.Errorf("soak writer log: %w", err)
			}
			if !cfg.KeepGoing {
				return st, fmt.Errorf("%w: %w", ErrIO, werr)
			}
			// A fault rarely lasts less than this; do not spin on it.
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		if _, err := log.Write([]byte("A " + strconv.FormatUint(last, 10) + "\n")); err != nil {
			return st, fmt.Errorf("soak writer log: %w", err)
		}
		st.Acked += n
	}
	return st, nil
}

func writeBatch(f *os.File, mem []byte, writer uint32, blocks []int64, seq uint64) error {
	for i, b := range blocks {
		buf := mem[i*BlockSize : (i+1)*BlockSize]
		Encode(buf, Stamp{Writer: writer, Block: b, Seq: seq + uint64(i)})
		if _, err := f.WriteAt(buf, b*BlockSize); err != nil {
			return fmt.Errorf("pwrite of block %d: %w", b, err)
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("fdatasync: %w", err)
	}
	return nil
}

func oneLine(err error) string {
	b := []byte(err.Error())
	for i, c := range b {
		if c == '\n' || c == '\r' {
			b[i] = ' '
		}
	}
	return string(b)
}

// ReadRegion reads blocks [first, first+blocks) of path with O_DIRECT,
// 1 MiB at a time, and a failed read again block by block, and streams
// each block, or its read error, to w for Model.CheckStream. Only a
// failure to open the file or to write w is an error of its own.
func ReadRegion(path string, first, blocks int64, w io.Writer) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) {
		// A file system without O_DIRECT (tmpfs): the page cache is
		// the file then.
		f, err = os.Open(path)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	const span = 256 // blocks per read: 1 MiB
	mem, err := unix.Mmap(-1, 0, span*BlockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	bw := bufio.NewWriterSize(w, 1<<20)
	for b := first; b < first+blocks; b += span {
		n := min(span, first+blocks-b)
		buf := mem[:n*BlockSize]
		if _, err := f.ReadAt(buf, b*BlockSize); err == nil {
			for i := range n {
				if err := writeRecord(bw, buf[i*BlockSize:(i+1)*BlockSize], nil); err != nil {
					return err
				}
			}
			continue
		}
		for i := range n {
			one := mem[:BlockSize]
			_, rerr := f.ReadAt(one, (b+i)*BlockSize)
			if errors.Is(rerr, io.EOF) {
				rerr = fmt.Errorf("block %d is past the end of the image", b+i)
			} else if rerr != nil {
				rerr = fmt.Errorf("pread of block %d: %w", b+i, rerr)
			}
			if err := writeRecord(bw, one, rerr); err != nil {
				return err
			}
		}
	}
	return bw.Flush()
}
