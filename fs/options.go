package fs

import (
	"log/slog"
	"os"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Defaults for Options. They come from fio runs against go-fuse v2.12.1:
// 1 MiB requests, a deep background queue and async direct I/O more than
// doubled sequential and random throughput over the stock settings. The
// queue matters most when the engine is slow: with 1 ms per request
// (BenchmarkFio, HOSTCRYPT_BENCH_LATENCY=1ms), 4 KiB random writes at
// iodepth 32 went from 6.6k IOPS with MaxBackground 12 to 17.9k with 64.
const (
	DefaultMaxWrite      = 1 << 20
	DefaultMaxBackground = 64
	DefaultTimeout       = time.Second
)

// Name is the file system name shown by mount(8) and df -T ("fuse.hostcrypt").
const Name = "hostcrypt"

// Options tune a mount. The zero value gives the tuned defaults.
type Options struct {
	// Debug logs every FUSE request and reply (go-fuse's own format).
	Debug bool
	// AllowOther lets users other than the one that mounted reach the tree
	// (the kernel still enforces the file modes: the mount always uses
	// default_permissions). Non-root mounts need user_allow_other in
	// /etc/fuse.conf.
	AllowOther bool
	// UID and GID own the image files (0, root, by default), for handing an
	// image to a hypervisor that runs under its own user.
	UID, GID uint32
	// MaxBackground is how many asynchronous requests (async direct I/O,
	// io_submit) the kernel keeps in flight; it caps the useful iodepth.
	// Default 64.
	MaxBackground int
	// MaxWrite is the largest READ/WRITE request, in bytes (default and
	// maximum 1 MiB).
	MaxWrite int
	// EntryTimeout and AttrTimeout are how long the kernel may trust a
	// looked-up name or a file's attributes (default 1 s). Changes made
	// through the Tree are pushed to the kernel at once regardless.
	EntryTimeout, AttrTimeout time.Duration
	// Logger receives diagnostics that have no caller to return them to
	// (failed kernel notifications). Default: slog.Default().
	Logger *slog.Logger

	// helperOnly mounts through fusermount even as root (tests).
	helperOnly bool
}

func (o Options) withDefaults() Options {
	if o.MaxBackground <= 0 {
		o.MaxBackground = DefaultMaxBackground
	}
	if o.MaxWrite <= 0 || o.MaxWrite > DefaultMaxWrite {
		o.MaxWrite = DefaultMaxWrite
	}
	if o.EntryTimeout <= 0 {
		o.EntryTimeout = DefaultTimeout
	}
	if o.AttrTimeout <= 0 {
		o.AttrTimeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// nodeOptions turns Options into go-fuse's. Each setting names the reason.
func (o Options) nodeOptions() *gofs.Options {
	entry, attr := o.EntryTimeout, o.AttrTimeout
	// Failed lookups are cached too: AddImage invalidates the negative
	// entry, so a new image still appears at once.
	negative := o.EntryTimeout
	// go-fuse reports through the standard log package; send it to slog.
	// The request trace of Debug comes at Info so that it shows when asked
	// for; go-fuse's own complaints (a panic in a handler) are warnings.
	traceLevel := slog.LevelWarn
	if o.Debug {
		traceLevel = slog.LevelInfo
	}
	return &gofs.Options{
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &negative,
		Logger:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
		// st_ino 0 reads as "no inode" to some tools.
		RootStableAttr: &gofs.StableAttr{Ino: 1},
		MountOptions: fuse.MountOptions{
			FsName:     Name,
			Name:       Name,
			Debug:      o.Debug,
			Logger:     slog.NewLogLogger(o.Logger.Handler(), traceLevel),
			AllowOther: o.AllowOther,
			// Let the kernel check modes; without it any user allowed
			// into the mount could open a 0600 image.
			Options:       []string{"default_permissions"},
			MaxWrite:      o.MaxWrite,
			MaxBackground: o.MaxBackground,
			// Without CAP_ASYNC_DIO an iodepth of 32 behaves like 1.
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			// Kernel passthrough would hand the kernel a backing file
			// to read directly; an encrypting daemon has none.
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
			// Each write would otherwise cost a GETXATTR round trip.
			DisableXAttrs: true,
			// mount(2) directly when we may, fusermount otherwise.
			DirectMount: os.Geteuid() == 0 && !o.helperOnly,
		},
	}
}
