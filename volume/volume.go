// Package volume is one running disk's stack, from what the guest sees down
// to storage, and the order it opens and closes in:
//
//	image cache (plaintext, above the engine: host caching without encryption at host)
//	disk engine (encryption, the data key lease)
//	freeze     (copy-before-write, for snapshots of the disk in use)
//	host cache (sealed, under the engine: host caching with encryption at host)
//	storage
//
// At most one of the two caches holds data: with encryption at host the
// cache sits under the engine and holds only what the engine sealed with
// the disk's own key; without, it sits above and holds plaintext, and only
// storage is encrypted. A cache directory of the other kind left by a crash
// is written back when the volume opens, so switching encryption at host
// never loses an acknowledged write.
//
// A Volume's counters (Stats) are read without any lock of its owner's:
// the control plane, a metrics scrape or a web page read them while a long
// operation runs. Work that reads the volume while it is open (a snapshot
// copy) registers with Use, so that Close first cancels it and waits for
// it, then closes.
package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"hostcrypt/cache"
	"hostcrypt/disk"
	hfs "hostcrypt/fs"
	"hostcrypt/storage"
	"hostcrypt/storage/freeze"
)

// ErrClosing is returned by Use once the volume has begun to close.
var ErrClosing = errors.New("the disk is being closed (its VM stops or the disk is detached)")

// Config is what a disk's volume is opened with.
type Config struct {
	// Name names the disk in errors and logs.
	Name string
	// VM is the VM the disk is attached to, for the observer.
	VM      string
	Storage storage.Backend
	Prefix  string
	Keys    disk.KeyUnwrapper
	// Caching is the attachment's host caching mode.
	Caching cache.Mode
	// EncryptionAtHost puts the host cache under the engine (sealed)
	// rather than above it (plaintext).
	EncryptionAtHost bool
	// CacheDir is the disk's host cache directory; the plaintext cache
	// uses CacheDir + ".plain". Empty turns host caching off whatever
	// Caching says.
	CacheDir   string
	CacheBytes int64
	// SequentialCutoff and SlowStorage tune what goes around the host cache
	// (see cache.Options); zero takes the cache's defaults.
	SequentialCutoff int64
	SlowStorage      time.Duration
	// SharedStorage says Storage is shared with other hosts (a RADOS pool),
	// one of which takes the disk over if this host dies: a guest's flush
	// on a ReadWrite-cached disk then returns only once its writes are in
	// Storage, not when they are durable in the host cache (see
	// cache.Options.SharedStorage).
	SharedStorage bool
	// OpenOptions are the engine's (disk.CustomerManaged, ...).
	OpenOptions []disk.OpenOption
	// FlushInterval is how often the engine syncs by itself when the guest
	// does not (0: the engine's default).
	FlushInterval time.Duration
	Log           *slog.Logger
	// Observer, if set, is told of the volume's opening and closing and of
	// every I/O of its image (metrics).
	Observer Observer
}

// SealedDir and PlainDir are where the disk's host cache lives with and
// without encryption at host.
func (c Config) SealedDir() string { return c.CacheDir }

// PlainDir is the plaintext cache's directory.
func (c Config) PlainDir() string {
	if c.CacheDir == "" {
		return ""
	}
	return c.CacheDir + ".plain"
}

func (c Config) cacheOptions(mode cache.Mode, dir string) cache.Options {
	return cache.Options{Mode: mode, Dir: dir, MaxBytes: c.CacheBytes, Logger: c.Log,
		SequentialCutoff: c.SequentialCutoff, SlowStorage: c.SlowStorage, SharedStorage: c.SharedStorage}
}

// Volume is one open disk.
type Volume struct {
	name string
	vm   string
	// dirs are the host cache directories, removed by a clean close that
	// left them empty.
	dirs   []string
	img    hfs.Image // what the tree serves: raw, or raw observed
	raw    hfs.Image // the top of the stack
	io     IO        // the observer's, or nil
	d      *disk.Disk
	cache  *cache.Cache      // under the engine, sealed
	icache *cache.ImageCache // above the engine, plaintext
	fr     *freeze.Backend
	plain  storage.Chunk // a plaintext temp disk; d is nil then

	mu      sync.Mutex
	closing bool
	cancel  context.CancelFunc // of users' contexts
	uctx    context.Context
	users   sync.WaitGroup
	closeE  error
	closed  bool
	wasOpen struct{ integrity uint64 }
}

// keepOpen hides Close from a cache: the storage backend is shared by every
// disk, and a cache closes what it wraps.
type keepOpen struct{ storage.Backend }

func (keepOpen) Close() error { return nil }

func newVolume(name string) *Volume {
	v := &Volume{name: name}
	v.uctx, v.cancel = context.WithCancel(context.Background())
	return v
}

// Open opens a disk's stack. On failure nothing stays open.
func Open(ctx context.Context, c Config) (_ *Volume, err error) {
	mode := cache.None
	if c.Caching != "" && c.Caching != cache.None && c.CacheDir != "" {
		if mode, err = cache.ParseMode(string(c.Caching)); err != nil {
			return nil, err
		}
	}
	v := newVolume(c.Name)
	v.vm = c.VM
	defer func() {
		if err != nil {
			v.closeStack()
		}
	}()
	v.dirs = []string{c.SealedDir(), c.PlainDir()}
	under := cache.Options{Mode: cache.None, Dir: c.SealedDir(), Logger: c.Log}
	if c.EncryptionAtHost {
		under = c.cacheOptions(mode, c.SealedDir())
	}
	v.cache, err = cache.New(ctx, keepOpen{c.Storage}, under)
	if err != nil {
		return nil, fmt.Errorf("host cache of disk %q: %w", c.Name, err)
	}
	v.fr = freeze.New(v.cache)
	v.d, err = disk.Open(ctx, v.fr, c.Prefix, c.Keys, c.OpenOptions...)
	if err != nil {
		return nil, fmt.Errorf("opening disk %q: %w", c.Name, err)
	}
	if c.FlushInterval > 0 {
		v.d.SetFlushInterval(c.FlushInterval)
	}
	v.img = v.d
	above := cache.Options{Mode: cache.None, Dir: c.PlainDir(), Logger: c.Log}
	if !c.EncryptionAtHost {
		above = c.cacheOptions(mode, c.PlainDir())
	}
	if above.Mode != cache.None || dirExists(above.Dir) {
		v.icache, err = cache.NewImage(ctx, v.d, above)
		if err != nil {
			return nil, fmt.Errorf("host cache of disk %q: %w", c.Name, err)
		}
		if above.Mode != cache.None {
			v.img = v.icache
		} else if err = v.icache.Close(); err != nil {
			return nil, fmt.Errorf("host cache of disk %q: %w", c.Name, err)
		} else {
			v.icache = nil
		}
	}
	if v.cache.Mode() == cache.None {
		// Nothing cached under the engine: a None cache only passes calls
		// through to storage, holds nothing to write back at close, and
		// has no counters to show.
		v.cache = nil
	}
	v.raw = v.img
	if c.Observer != nil {
		v.observe(c.Observer)
	}
	return v, nil
}

// FromDisk makes a volume of an engine opened by the caller (a temp disk,
// which lives on the host and has no cache). The volume owns d from now on.
func FromDisk(name string, d *disk.Disk, flushInterval time.Duration) *Volume {
	if flushInterval > 0 {
		d.SetFlushInterval(flushInterval)
	}
	v := newVolume(name)
	v.d, v.img, v.raw = d, d, d
	return v
}

// Plain makes a volume of a plaintext sparse file of size bytes: the temp
// disk of a VM without encryption at host. The volume owns ch.
func Plain(name string, ch storage.Chunk, size int64) *Volume {
	v := newVolume(name)
	v.plain, v.img = ch, &plainImage{Chunk: ch, size: size}
	v.raw = v.img
	return v
}

// plainImage is a plaintext temp disk: a sparse file of the host.
type plainImage struct {
	storage.Chunk
	size int64
}

func (p *plainImage) Size() int64 { return p.size }

func (p *plainImage) Discard(off, n int64) error { return p.PunchHole(off, n) }

func dirExists(dir string) bool {
	if dir == "" {
		return false
	}
	fi, err := os.Stat(dir)
	return err == nil && fi.IsDir()
}

// Image is what the guest sees: the engine, or the plaintext cache over it,
// or the plaintext temp disk.
func (v *Volume) Image() hfs.Image { return v.img }

// Encrypted tells whether the volume is an encrypted disk (not a plaintext
// temp disk).
func (v *Volume) Encrypted() bool { return v.d != nil }

// Stats are a volume's counters, read without any lock of the caller's.
type Stats struct {
	// IntegrityErrors counts the blocks that failed authentication since
	// the volume opened.
	IntegrityErrors uint64
	// Fenced says why the disk refuses writes and flushes (a failed sync),
	// or is empty.
	Fenced string
	// Cache holds the host cache's counters; HasCache is false without a
	// host cache.
	Cache    cache.Stats
	HasCache bool
	// Size is the disk's size now.
	Size int64
}

// Stats returns the volume's counters.
func (v *Volume) Stats() Stats {
	var s Stats
	s.Size = v.raw.Size()
	if v.d != nil {
		s.IntegrityErrors = v.d.Stats().IntegrityErrors
		if err := v.d.Fenced(); err != nil {
			s.Fenced = err.Error()
		}
	}
	switch {
	case v.cache != nil:
		s.Cache, s.HasCache = v.cache.Stats(), true
	case v.icache != nil:
		s.Cache, s.HasCache = v.icache.Stats(), true
	}
	return s
}

// SetLease lets the disk serve I/O until t (customer-key disks; the key
// monitor renews it).
func (v *Volume) SetLease(t time.Time) {
	if v.d != nil {
		v.d.SetLease(t)
	}
}

// Resize grows the disk.
func (v *Volume) Resize(ctx context.Context, size int64) error {
	if v.d == nil {
		return errors.New("a plaintext temp disk cannot be resized")
	}
	return v.d.Resize(ctx, size)
}

// Use registers work that reads the open volume (a snapshot copy). It
// returns ctx, which is also cancelled when the volume begins to close, and
// release, which the work calls when it is done with the volume. Close
// waits for every release.
func (v *Volume) Use(ctx context.Context) (context.Context, func(), error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closing {
		return nil, nil, fmt.Errorf("disk %q: %w", v.name, ErrClosing)
	}
	v.users.Add(1)
	uctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(v.uctx, cancel)
	var once sync.Once
	return uctx, func() {
		once.Do(func() {
			stop()
			cancel()
			v.users.Done()
		})
	}, nil
}

// Snapshot prepares a copy of the disk as it is now: everything written
// before, acknowledged or not, reaches storage (a plaintext cache is
// written back into the engine, the engine syncs), and it returns the
// freeze decorator under the engine, through which the copy is taken
// while the guest writes on, and the length of a chunk object. Call it
// between Use and release.
func (v *Volume) Snapshot(ctx context.Context) (*freeze.Backend, int64, error) {
	if v.d == nil || v.fr == nil {
		return nil, 0, errors.New("only a storage disk can be copied while in use")
	}
	if v.icache != nil {
		if err := v.icache.Flush(ctx); err != nil {
			return nil, 0, err
		}
	}
	if err := v.d.Sync(); err != nil {
		return nil, 0, err
	}
	return v.fr, v.d.ObjectBytes(), nil
}

// Close cancels and waits for the work registered with Use, then writes a
// plaintext cache back into the engine, flushes and closes the engine
// (wiping its keys), writes the host cache back to storage and closes it.
// It returns the integrity errors counted while the volume was open, for
// the disk's record. Later calls return the first call's result.
func (v *Volume) Close() (integrityErrors uint64, err error) {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return v.wasOpen.integrity, v.closeE
	}
	v.closing = true
	v.mu.Unlock()
	v.cancel()
	v.users.Wait()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.d != nil {
		v.wasOpen.integrity = v.d.Stats().IntegrityErrors
	}
	v.closeE = v.closeStack()
	v.closed = true
	if v.io != nil {
		v.io.Closed()
	}
	return v.wasOpen.integrity, v.closeE
}

// closeStack closes from the top down.
func (v *Volume) closeStack() error {
	var err error
	if v.icache != nil {
		err = v.icache.Close()
	}
	if v.d != nil {
		err = errors.Join(err, v.d.Close())
	}
	if v.cache != nil {
		err = errors.Join(err, v.cache.Close())
	}
	if v.plain != nil {
		err = errors.Join(err, v.plain.Sync(), v.plain.Close())
	}
	if err == nil {
		// A cache removes its files once everything is written back, not
		// its directory; one still holding dirty pages is not empty and
		// stays for the next open to write back.
		for _, dir := range v.dirs {
			if dir != "" {
				_ = os.Remove(dir)
			}
		}
	}
	return err
}
