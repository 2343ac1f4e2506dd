package soak

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit statuses of Main.
const (
	ExitStopped = 0 // write: stopped by SIGTERM or SIGINT; read: done
	ExitUsage   = 2
	ExitIOError = 3 // write: a write or fdatasync failed (without -keep-going)
	ExitFailed  = 4 // anything else: the log could not be written, the image opened ...
)

// Main runs a writer or a reader as its own process: the suite's test
// binary starts itself again with these arguments, so that I/O on a mount
// never comes from the process serving it.
//
//	write -path IMG -writer N -first B -blocks N -seq S -seed X -batch K -log FILE [-direct] [-keep-going]
//	read  -path IMG -first B -blocks N      (the blocks to standard output)
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "soak helper: write or read?")
		return ExitUsage
	}
	fs := flag.NewFlagSet("soak "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("path", "", "image")
	first := fs.Int64("first", 0, "first block of the region")
	blocks := fs.Int64("blocks", 0, "blocks in the region")
	switch args[0] {
	case "write":
		var cfg WriterConfig
		writer := fs.Uint("writer", 0, "writer id")
		fs.Uint64Var(&cfg.StartSeq, "seq", 1, "first sequence number")
		fs.Uint64Var(&cfg.Seed, "seed", 1, "seed of the block choice")
		fs.IntVar(&cfg.MaxBatch, "batch", 8, "most writes per fdatasync")
		fs.BoolVar(&cfg.Direct, "direct", false, "open the image O_DIRECT")
		fs.BoolVar(&cfg.KeepGoing, "keep-going", false, "go on after a failed write or fdatasync")
		logPath := fs.String("log", "", "the log to append to")
		if err := fs.Parse(args[1:]); err != nil {
			return ExitUsage
		}
		cfg.Path, cfg.Writer, cfg.First, cfg.Blocks = *path, uint32(*writer), *first, *blocks
		log, err := os.OpenFile(*logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return ExitFailed
		}
		defer log.Close()
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		st, err := Write(ctx, cfg, log)
		fmt.Fprintf(stdout, "batches %d acked %d failed %d\n", st.Batches, st.Acked, st.Failed)
		if err != nil {
			fmt.Fprintln(stderr, err)
			if errors.Is(err, ErrIO) {
				return ExitIOError
			}
			return ExitFailed
		}
		return ExitStopped
	case "read":
		if err := fs.Parse(args[1:]); err != nil {
			return ExitUsage
		}
		if err := ReadRegion(*path, *first, *blocks, stdout); err != nil {
			fmt.Fprintln(stderr, err)
			return ExitFailed
		}
		return ExitStopped
	}
	fmt.Fprintf(stderr, "soak helper: unknown command %q\n", args[0])
	return ExitUsage
}
