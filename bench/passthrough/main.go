// Command passthrough mounts an unencrypted go-fuse loopback of a directory.
// It is the reference the fio harness compares every encrypted target with:
// the fastest a Go FUSE daemon that sees every byte can be on this machine.
//
// Kernel FUSE passthrough is always off. With it on, reads and writes go from
// the kernel straight to the backing file and the daemon never sees them; an
// encrypting daemon cannot do that, so it would not be a fair ceiling.
//
//	passthrough --backing DIR --mount DIR [--options tuned|stock|hostcrypt]
//	            [--sync-interval D] [--seal none|aes|double] [--ready-file F]
//
// --sync-interval gives it the durability of a hostcrypt disk: every D it
// fdatasyncs each open file, as hostcryptd flushes a disk every flush
// interval, so that written data reaches the device within D. Without it
// (0) written data stays in the page cache until the kernel writes it back.
//
// --seal makes it pay, for every 4 KiB block it writes or reads, the cipher
// work of an encrypting daemon (AES-256-GCM; "double" adds
// XChaCha20-Poly1305 over it), and throws the result away: the files stay
// plaintext. Next to the plain passthrough it shows what the cipher alone
// costs a FUSE daemon on the machine (seal.go).
//
// "hostcrypt" is tuned plus what hostcryptd's mount adds: the kernel checks
// file modes (default_permissions), failed lookups are cached for as long
// as entries, and root mounts with mount(2) directly.
//
// It prints "ready" on stdout (and creates --ready-file, if given) once the
// mount is up, and unmounts on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// config is what the flags select.
type config struct {
	backing   string
	mount     string
	tuned     bool
	hostcrypt bool // tuned, with hostcryptd's extra mount options
	readyFile string
	debug     bool
	// syncEvery, when positive, fdatasyncs every open file this often.
	syncEvery time.Duration
	// seal is the cipher work done per block: none, aes or double.
	seal string
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("passthrough: ")
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		log.Fatal(err)
	}
	if err := run(cfg); err != nil {
		log.Fatal(err)
	}
}

func parseFlags(args []string) (config, error) {
	var cfg config
	var options string
	fl := flag.NewFlagSet("passthrough", flag.ContinueOnError)
	fl.StringVar(&cfg.backing, "backing", "", "directory to serve (required)")
	fl.StringVar(&cfg.mount, "mount", "", "empty directory to mount on (required)")
	fl.StringVar(&options, "options", "tuned", "FUSE options: tuned, stock or hostcrypt")
	fl.StringVar(&cfg.readyFile, "ready-file", "", "file to create once mounted")
	fl.DurationVar(&cfg.syncEvery, "sync-interval", 0, "fdatasync every open file this often (0: never)")
	fl.StringVar(&cfg.seal, "seal", "none", "cipher work per 4 KiB block read or written, thrown away: none, aes or double")
	fl.BoolVar(&cfg.debug, "debug", false, "log every FUSE request")
	if err := fl.Parse(args); err != nil {
		return cfg, err
	}
	if fl.NArg() != 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fl.Arg(0))
	}
	if cfg.backing == "" || cfg.mount == "" {
		return cfg, errors.New("--backing and --mount are required")
	}
	if cfg.syncEvery < 0 {
		return cfg, fmt.Errorf("--sync-interval %v is negative", cfg.syncEvery)
	}
	if err := checkSeal(cfg.seal); err != nil {
		return cfg, err
	}
	switch options {
	case "tuned":
		cfg.tuned = true
	case "hostcrypt":
		cfg.tuned, cfg.hostcrypt = true, true
	case "stock":
	default:
		return cfg, fmt.Errorf("--options %q: want tuned, stock or hostcrypt", options)
	}
	return cfg, nil
}

func run(cfg config) error {
	backing, err := filepath.Abs(cfg.backing)
	if err != nil {
		return err
	}
	inner, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		return fmt.Errorf("backing directory: %w", err)
	}
	ln := inner.(*fs.LoopbackNode)
	sl, err := newSealer(cfg.seal)
	if err != nil {
		return err
	}
	root := &node{LoopbackNode: ln, tuned: cfg.tuned, open: &openFiles{files: map[*file]struct{}{}}, sealer: sl}
	// The loopback code finds the root through RootNode; point it at the
	// wrapper so that every node, the root included, is one of ours.
	ln.RootData.RootNode = root

	opts := mountOptions(cfg.tuned)
	if cfg.hostcrypt {
		withHostcryptOptions(opts)
	}
	opts.Debug = cfg.debug
	server, err := fs.Mount(cfg.mount, root, opts)
	if err != nil {
		return fmt.Errorf("mount %s: %w", cfg.mount, err)
	}

	if cfg.readyFile != "" {
		if err := os.WriteFile(cfg.readyFile, []byte("ready\n"), 0o644); err != nil {
			_ = server.Unmount()
			return err
		}
	}
	fmt.Println("ready")
	if cfg.syncEvery > 0 {
		stop := make(chan struct{})
		defer close(stop)
		go root.open.syncEvery(cfg.syncEvery, stop)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		server.Wait()
		close(done)
	}()
	select {
	case <-sigs:
		return unmount(server, done)
	case <-done:
		// Unmounted from outside (fusermount3 -u).
		return nil
	}
}

// unmount retries for a while: fio may still hold the image open for a
// moment after it was killed.
func unmount(server *fuse.Server, done <-chan struct{}) error {
	var err error
	for range 50 {
		if err = server.Unmount(); err == nil {
			<-done
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("unmount: %w", err)
}

// mountOptions returns the options of the tuned or of the stock reference.
//
// Tuned is exactly the best configuration measured for go-fuse v2.12.1 on
// this kind of machine (see docs/PERFORMANCE.md): each option below was worth
// a measurable step there.
func mountOptions(tuned bool) *fs.Options {
	if !tuned {
		// What a first go-fuse program passes: no timeouts, so the kernel
		// revalidates with GETATTR, and the library's mount defaults.
		return &fs.Options{}
	}
	second := time.Second
	return &fs.Options{
		EntryTimeout: &second,
		AttrTimeout:  &second,
		MountOptions: fuse.MountOptions{
			FsName: "passthrough",
			Name:   "passthrough",
			// Without async direct I/O a libaio queue of 32 behaves
			// like a queue of one.
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			// The default of 12 background requests caps the queue.
			MaxBackground: 64,
			MaxWrite:      fuse.MAX_KERNEL_WRITE,
			// The kernel asks GETXATTR (security.capability) before
			// every write unless it hears ENOSYS once.
			DisableXAttrs: true,
		},
	}
}

// withHostcryptOptions adds to the tuned options what hostcryptd's mount
// (fs/options.go) sets beyond them.
func withHostcryptOptions(o *fs.Options) {
	negative := *o.EntryTimeout
	o.NegativeTimeout = &negative
	o.MountOptions.Options = append(o.MountOptions.Options, "default_permissions")
	o.MountOptions.DirectMount = os.Geteuid() == 0
	o.MountOptions.FsName, o.MountOptions.Name = "passthrough-hc", "passthrough-hc"
}

// node is a loopback node whose files never use kernel passthrough and, when
// tuned, are opened for parallel direct I/O.
type node struct {
	*fs.LoopbackNode
	tuned  bool
	open   *openFiles
	sealer *sealer // nil: no cipher work
}

// openFiles are the files open now, for the periodic fdatasync.
type openFiles struct {
	mu    sync.Mutex
	files map[*file]struct{}
	syncs atomic.Int64 // fdatasyncs done
}

// syncEvery fdatasyncs every open file each interval until stop.
func (o *openFiles) syncEvery(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		o.mu.Lock()
		files := make([]*file, 0, len(o.files))
		for f := range o.files {
			files = append(files, f)
		}
		o.mu.Unlock()
		for _, f := range files {
			if err := f.datasync(); err != nil {
				log.Printf("fdatasync: %v", err)
			}
		}
	}
}

var (
	_ = (fs.NodeWrapChilder)((*node)(nil))
	_ = (fs.NodeOpener)((*node)(nil))
	_ = (fs.NodeCreater)((*node)(nil))
)

// WrapChild makes every node the loopback creates one of ours.
func (n *node) WrapChild(_ context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	if ln, ok := ops.(*fs.LoopbackNode); ok {
		return &node{LoopbackNode: ln, tuned: n.tuned, open: n.open, sealer: n.sealer}
	}
	return ops
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fuseFlags, errno := n.LoopbackNode.Open(ctx, n.backingFlags(flags))
	if errno != 0 {
		return nil, 0, errno
	}
	return n.wrap(fh, fuseFlags)
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	ch, fh, fuseFlags, errno := n.LoopbackNode.Create(ctx, name, n.backingFlags(flags), mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	fh, fuseFlags, errno = n.wrap(fh, fuseFlags)
	return ch, fh, fuseFlags, errno
}

// backingFlags drops O_DIRECT from the backing file when tuned: the page
// cache of the backing file system is part of what the tuned reference
// measures, as it is for gocryptfs, which never opens with O_DIRECT.
func (n *node) backingFlags(flags uint32) uint32 {
	if n.tuned {
		flags &^= syscall.O_DIRECT
	}
	return flags
}

func (n *node) wrap(fh fs.FileHandle, fuseFlags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	lf, ok := fh.(*fs.LoopbackFile)
	if !ok {
		// Not a file we know how to keep off kernel passthrough.
		if fh != nil {
			if r, ok := fh.(fs.FileReleaser); ok {
				r.Release(context.Background())
			}
		}
		return nil, 0, syscall.EIO
	}
	if n.tuned {
		fuseFlags |= fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
	}
	f := &file{LoopbackFile: lf, copyReads: n.tuned || n.sealer != nil, open: n.open, sealer: n.sealer}
	n.open.mu.Lock()
	n.open.files[f] = struct{}{}
	n.open.mu.Unlock()
	return f, fuseFlags, 0
}

// file is a loopback file that refuses to hand its descriptor to the kernel
// for passthrough; every read and write therefore goes through the daemon.
type file struct {
	*fs.LoopbackFile
	copyReads bool
	open      *openFiles
	sealer    *sealer
	// mu orders the periodic fdatasync before the descriptor's close.
	mu       sync.Mutex
	released bool
}

var (
	_ = (fs.FilePassthroughFder)((*file)(nil))
	_ = (fs.FileReader)((*file)(nil))
	_ = (fs.FileWriter)((*file)(nil))
	_ = (fs.FileReleaser)((*file)(nil))
)

// datasync fdatasyncs the backing file unless it was released.
func (f *file) datasync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.released {
		return nil
	}
	fd, ok := f.LoopbackFile.PassthroughFd()
	if !ok {
		return nil
	}
	if err := syscall.Fdatasync(fd); err != nil {
		return err
	}
	f.open.syncs.Add(1)
	return nil
}

// Release forgets the file for the periodic fdatasync, then closes it.
func (f *file) Release(ctx context.Context) syscall.Errno {
	f.open.mu.Lock()
	delete(f.open.files, f)
	f.open.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = true
	return f.LoopbackFile.Release(ctx)
}

// Read, when tuned, reads into the request's own buffer and hands it back
// as a vector, which go-fuse writes to the kernel with one writev. That is
// the path an encrypting daemon takes (its plaintext exists only in its
// memory, there is no file to splice from), and it avoids go-fuse's splice
// of a 1 MiB reply: header and data do not fit the 1 MiB pipe, so every
// such read would fail, log, and fall back to a copy anyway.
func (f *file) Read(ctx context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if !f.copyReads {
		return f.LoopbackFile.Read(ctx, buf, off)
	}
	fd, ok := f.LoopbackFile.PassthroughFd()
	if !ok {
		return nil, syscall.EBADF
	}
	n, err := syscall.Pread(fd, buf, off)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	if f.sealer != nil {
		f.sealer.read(n)
	}
	return fuse.ReadResultVector([][]byte{buf[:n]}), 0
}

// Write does the cipher work of --seal, then writes the plaintext.
func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if f.sealer != nil {
		f.sealer.write(data)
	}
	return f.LoopbackFile.Write(ctx, data, off)
}

// PassthroughFd reports that no backing descriptor is available.
func (f *file) PassthroughFd() (int, bool) { return -1, false }
