// Package local is a storage.Backend over a local directory: one file per
// object, with the key's segments as the path below the directory.
//
// Chunks are plain sparse files used through the page cache (opened
// without O_DIRECT: the backing file under a FUSE disk is read and written
// in blocks the kernel can merge and cache, and measurements showed
// O_DIRECT here costs more than it saves). Metadata objects are replaced
// by writing a hidden temporary file beside them and renaming it over.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"hostcrypt/storage"
)

const (
	dirPerm  = 0o700
	filePerm = 0o600
	// tempPrefix starts every temporary file name. Keys have no segment
	// starting with '.', so no temporary file can be taken for an object.
	tempPrefix = ".tmp-"
	// mkdirRetries bounds retries of a create racing a Delete that prunes
	// the directory being created into.
	mkdirRetries = 16
)

// Backend is a storage.Backend over a directory. It holds no open files
// of its own, so it is cheap to open several over one directory.
type Backend struct {
	dir    string
	closed atomic.Bool
	// noPunch is set once the filesystem refuses to punch holes, so that
	// later calls go straight to writing zeros.
	noPunch atomic.Bool
}

var _ storage.Backend = (*Backend)(nil)

// Open returns a Backend storing its objects under dir, creating dir
// (mode 0700) if it is missing. Directories it creates are 0700 and files
// 0600: the contents are encrypted, but names and sizes are still worth
// hiding from other users.
func Open(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("storage directory %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, dirPerm); err != nil {
		return nil, fmt.Errorf("storage directory: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("storage directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("storage directory %s: not a directory", abs)
	}
	return &Backend{dir: abs}, nil
}

// Dir returns the absolute path of the directory holding the objects.
func (b *Backend) Dir() string { return b.dir }

// Close marks the backend closed. It closes nothing the caller still
// holds: chunks opened before stay usable until their own Close, since
// each owns its file descriptor.
func (b *Backend) Close() error {
	b.closed.Store(true)
	return nil
}

// check is the common entry of every method: a closed backend, a
// cancelled context and an invalid key are refused before touching disk.
func (b *Backend) check(ctx context.Context, key string, prefix bool) error {
	if b.closed.Load() {
		return storage.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if prefix {
		return storage.ValidPrefix(key)
	}
	return storage.ValidKey(key)
}

func (b *Backend) path(key string) string {
	if key == "" {
		return b.dir
	}
	return filepath.Join(b.dir, filepath.FromSlash(key))
}

// notFound tells whether err from a path operation means that no object
// is there: the name is missing, a leading part is a file, or the name is
// a directory (a prefix, not an object).
func notFound(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EISDIR)
}

func notFoundErr(key string) error {
	return fmt.Errorf("%w: %s", storage.ErrNotFound, key)
}

// OpenChunk opens the file of key read-write, creating it and its
// directories when create is set.
func (b *Backend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	if err := b.check(ctx, key, false); err != nil {
		return nil, err
	}
	p := b.path(key)
	// Opening first, rather than always passing O_CREATE, keeps the
	// common case (the chunk exists) to one syscall and tells us whether
	// a name was made that Sync must make durable.
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	switch {
	case err == nil:
		return &chunk{b: b, f: f}, nil
	case !notFound(err):
		return nil, fmt.Errorf("open chunk %s: %w", key, err)
	case !create:
		return nil, notFoundErr(key)
	}
	c := &chunk{b: b}
	err = b.withDirs(key, func() error {
		var err error
		c.f, err = os.OpenFile(p, os.O_RDWR|os.O_CREATE, filePerm)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create chunk %s: %w", key, err)
	}
	// The new name is durable only once its directories are synced; leave
	// that to Sync, which the caller needs for the data anyway.
	c.newName.Store(true)
	return c, nil
}

// withDirs runs create, which makes a name in the directory of key, after
// creating the missing directories. Delete prunes empty directories, so a
// directory may vanish before create has filled it; both steps are
// retried then, a bounded number of times.
func (b *Backend) withDirs(key string, create func() error) error {
	dir := filepath.Dir(b.path(key))
	var err error
	for range mkdirRetries {
		// MkdirAll itself fails when a directory it made or found is
		// pruned before it is done: with ENOENT making a child, or with
		// EEXIST when the name vanished between its mkdir and its stat.
		// (A file in the way gives ENOTDIR, which is not retried.)
		err = os.MkdirAll(dir, dirPerm)
		if err == nil {
			err = create()
		} else if errors.Is(err, fs.ErrExist) {
			continue
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return err
}

// syncDirs fsyncs the directory of key and every directory above it up to
// the root, making new names along the path durable. It is only used
// after creating names, which is rare next to data I/O.
func (b *Backend) syncDirs(key string) error {
	return b.syncUp(filepath.Dir(b.path(key)), true)
}

// syncUp fsyncs dir, then its parents up to the root if all is set. A
// directory that a concurrent Delete has pruned is skipped: its removal is
// made durable by syncing its parent, which comes next. Without all, the
// first directory still there is the last one synced.
func (b *Backend) syncUp(dir string, all bool) error {
	for d := dir; ; d = filepath.Dir(d) {
		err := syncDir(d)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err == nil && !all || len(d) <= len(b.dir) {
			return nil
		}
	}
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// ReadMeta reads the file of key.
func (b *Backend) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	if err := b.check(ctx, key, false); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(b.path(key))
	if notFound(err) {
		return nil, notFoundErr(key)
	}
	if err != nil {
		return nil, fmt.Errorf("read metadata %s: %w", key, err)
	}
	return data, nil
}

// WriteMeta writes data to a hidden temporary file in the directory of
// key, syncs it, renames it over the old file and syncs the directory. A
// crash leaves the old value or the new one, and perhaps a temporary file
// that List, ReadMeta and Usage never see.
func (b *Backend) WriteMeta(ctx context.Context, key string, data []byte) error {
	if err := b.check(ctx, key, false); err != nil {
		return err
	}
	if err := b.writeMeta(key, data); err != nil {
		return fmt.Errorf("write metadata %s: %w", key, err)
	}
	return nil
}

func (b *Backend) writeMeta(key string, data []byte) (err error) {
	p := b.path(key)
	var tmp *os.File
	err = b.withDirs(key, func() error {
		var err error
		// CreateTemp makes the file 0600 and picks a unique name, so
		// concurrent writers of one key never share a temporary file. The
		// name does not repeat the key's: a segment may already be as long
		// as a file name can be.
		tmp, err = os.CreateTemp(filepath.Dir(p), tempPrefix+"*")
		return err
	})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), p); err != nil {
		return err
	}
	// The rename is durable once the directory is synced. Directories
	// above it matter only if they are new, but telling that apart is not
	// worth it for the few small writes metadata gets.
	return b.syncDirs(key)
}

// Delete removes the file of key, syncs its directory, and prunes the
// directories left empty.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.check(ctx, key, false); err != nil {
		return err
	}
	p := b.path(key)
	// unlink, unlike os.Remove, never removes a directory: a directory is
	// a prefix, not an object, so it is "not found" here.
	if err := ignoringEINTR(func() error { return unix.Unlink(p) }); err != nil {
		if notFound(err) || errors.Is(err, syscall.EPERM) && isDir(p) {
			return notFoundErr(key)
		}
		return fmt.Errorf("delete %s: %w", key, &fs.PathError{Op: "unlink", Path: p, Err: err})
	}
	if err := b.syncUp(filepath.Dir(p), false); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	b.prune(filepath.Dir(p))
	return nil
}

func isDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}

// prune removes dir and its parents below the root while they are empty,
// so deleted disks leave no trail of directories. It is best effort: rmdir
// fails harmlessly on a directory that is not empty, or that a concurrent
// create has just filled.
func (b *Backend) prune(dir string) {
	for len(dir) > len(b.dir) && strings.HasPrefix(dir, b.dir+string(filepath.Separator)) {
		if os.Remove(dir) != nil {
			return
		}
		dir = filepath.Dir(dir)
	}
}

// List walks the directory of prefix.
func (b *Backend) List(ctx context.Context, prefix string) ([]string, error) {
	if err := b.check(ctx, prefix, true); err != nil {
		return nil, err
	}
	keys := []string{}
	err := b.walk(ctx, prefix, func(key string, _ fs.DirEntry) error {
		keys = append(keys, key)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	// Walk order is per directory; "a-b" sorts before "a/b" as a string.
	slices.Sort(keys)
	return keys, nil
}

// Usage sums st_blocks*512 of the object files under prefix: the space
// really allocated, so holes cost nothing. Directories and temporary
// files are not objects and are not counted.
func (b *Backend) Usage(ctx context.Context, prefix string) (int64, error) {
	if err := b.check(ctx, prefix, true); err != nil {
		return 0, err
	}
	var total int64
	err := b.walk(ctx, prefix, func(_ string, d fs.DirEntry) error {
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("usage %q: %w", prefix, err)
	}
	return total, nil
}

// walk calls fn for every object under prefix. Dot names (temporary
// files) and anything else that is not a regular file with a valid key is
// skipped, and names vanishing under a concurrent Delete are not errors.
func (b *Backend) walk(ctx context.Context, prefix string, fn func(key string, d fs.DirEntry) error) error {
	root := b.path(prefix)
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if notFound(err) {
				return nil
			}
			return err
		}
		if p == root {
			if !d.IsDir() {
				// The prefix itself is an object: nothing is under it.
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return ctx.Err()
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(b.dir, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if storage.ValidKey(key) != nil {
			return nil
		}
		err = fn(key, d)
		if notFound(err) {
			return nil
		}
		return err
	})
}

// chunk is one open file. Its methods map to pread, pwrite and fallocate
// on the descriptor, which the kernel makes safe to call concurrently, so
// there is no lock here.
type chunk struct {
	b *Backend
	f *os.File
	// newName is set while the chunk's file was created and its
	// directory entries not yet synced.
	newName atomic.Bool
}

var _ storage.Chunk = (*chunk)(nil)

func (c *chunk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read chunk %s: negative offset %d", c.f.Name(), off)
	}
	n, err := c.f.ReadAt(p, off)
	if err == io.EOF {
		// A short read at the end of the file: the rest is past the end,
		// which reads as zeros.
		clear(p[n:])
		return len(p), nil
	}
	return n, err
}

func (c *chunk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("write chunk %s: negative offset %d", c.f.Name(), off)
	}
	return c.f.WriteAt(p, off)
}

// zeros is the source for writing zeros where holes cannot be punched.
var zeros = make([]byte, 1<<20)

func (c *chunk) PunchHole(off, n int64) error {
	if off < 0 || n < 0 {
		return fmt.Errorf("punch hole in chunk %s: negative range %d+%d", c.f.Name(), off, n)
	}
	if n == 0 {
		return nil
	}
	if !c.b.noPunch.Load() {
		err := c.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if !errors.Is(err, unix.EOPNOTSUPP) {
			if err != nil {
				return fmt.Errorf("punch hole in chunk %s: %w", c.f.Name(), err)
			}
			return nil
		}
		c.b.noPunch.Store(true)
	}
	return c.writeZeros(off, n)
}

func (c *chunk) fallocate(mode uint32, off, n int64) error {
	// SyscallConn keeps the descriptor alive against a concurrent Close,
	// which Fd would not.
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = ignoringEINTR(func() error { return unix.Fallocate(int(fd), mode, off, n) })
	}); err != nil {
		return err
	}
	return ferr
}

// writeZeros is PunchHole for filesystems that cannot punch: it frees no
// space, and like a punch it never grows the file, since past the end
// already reads as zeros.
func (c *chunk) writeZeros(off, n int64) error {
	fi, err := c.f.Stat()
	if err != nil {
		return err
	}
	end := min(off+n, fi.Size())
	for off < end {
		m := min(end-off, int64(len(zeros)))
		if _, err := c.f.WriteAt(zeros[:m], off); err != nil {
			return fmt.Errorf("punch hole in chunk %s: %w", c.f.Name(), err)
		}
		off += m
	}
	return nil
}

// Sync makes the chunk's data durable with fdatasync: the data and what
// is needed to read it back (size, block allocation), not the timestamps.
// A full fsync would commit the file system's journal for every changed
// mtime, and each commit stalls every writer of the file system meanwhile.
func (c *chunk) Sync() error {
	if err := c.datasync(); err != nil {
		return fmt.Errorf("sync chunk %s: %w", c.f.Name(), err)
	}
	if c.newName.Load() {
		rel, err := filepath.Rel(c.b.dir, c.f.Name())
		if err != nil {
			return err
		}
		if err := c.b.syncDirs(filepath.ToSlash(rel)); err != nil {
			return fmt.Errorf("sync chunk %s: %w", c.f.Name(), err)
		}
		c.newName.Store(false)
	}
	return nil
}

func (c *chunk) Close() error { return c.f.Close() }

func (c *chunk) datasync() error {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = ignoringEINTR(func() error { return unix.Fdatasync(int(fd)) })
	}); err != nil {
		return err
	}
	return serr
}

func ignoringEINTR(f func() error) error {
	for {
		if err := f(); !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}
