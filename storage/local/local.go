// Package local is a storage.Backend over a local directory: one file per
// object, with the key's segments as the path below the directory.
//
// Chunks are plain sparse files used through the page cache (opened
// without O_DIRECT: the backing file under a FUSE disk is read and written
// in blocks the kernel can merge and cache, and measurements showed
// O_DIRECT here costs more than it saves). Metadata objects are replaced
// by writing a hidden temporary file beside them and renaming it over.
//
// Every name is resolved from a descriptor of the directory, never
// following a symbolic link (see beneath.go): whoever can write into the
// directory cannot make the backend, which runs as root, create, write or
// read anything outside it, or block on a FIFO or a device.
package local

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

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

// Backend is a storage.Backend over a directory. It holds one descriptor,
// of the directory, from Open to Close; every chunk owns its own.
type Backend struct {
	dir string
	// mu is held shared by every method while it uses root, and
	// exclusively by Close, which closes root.
	mu     sync.RWMutex
	root   int
	closed bool
	// walkOnly resolves names one segment at a time, for kernels without
	// openat2 (and for tests of that path).
	walkOnly bool
	// noPunch is set once the filesystem refuses to punch holes, so that
	// later calls go straight to writing zeros.
	noPunch atomic.Bool
}

var _ storage.Backend = (*Backend)(nil)

// Open returns a Backend storing its objects under dir, creating dir
// (mode 0700) if it is missing. Directories it creates are 0700 and files
// 0600: the contents are encrypted, but names and sizes are still worth
// hiding from other users. dir itself is the operator's choice and may be
// reached through symbolic links; nothing below it is.
func Open(dir string) (*Backend, error) {
	return open(dir, false)
}

func open(dir string, walkOnly bool) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("storage directory %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, dirPerm); err != nil {
		return nil, fmt.Errorf("storage directory: %w", err)
	}
	fd, err := unix.Open(abs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOTDIR {
			return nil, fmt.Errorf("storage directory %s: not a directory", abs)
		}
		return nil, fmt.Errorf("storage directory %s: %w", abs, err)
	}
	return &Backend{dir: abs, root: fd, walkOnly: walkOnly || !openat2Available(fd)}, nil
}

// Dir returns the absolute path of the directory holding the objects.
func (b *Backend) Dir() string { return b.dir }

// Close marks the backend closed and closes its directory. It closes
// nothing the caller still holds: chunks opened before stay usable until
// their own Close, since each owns its file descriptor.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	return unix.Close(b.root)
}

// enter is the common entry of every method: a closed backend, a cancelled
// context and an invalid key are refused before touching disk. On nil, the
// caller holds b.mu shared and releases it with leave.
func (b *Backend) enter(ctx context.Context, key string, prefix bool) error {
	err := ctx.Err()
	if err == nil && prefix {
		err = storage.ValidPrefix(key)
	} else if err == nil {
		err = storage.ValidKey(key)
	}
	if err != nil {
		return err
	}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return storage.ErrClosed
	}
	return nil
}

func (b *Backend) leave() { b.mu.RUnlock() }

func (b *Backend) path(key string) string { return filepath.Join(b.dir, filepath.FromSlash(key)) }

func notFoundErr(key string) error {
	return fmt.Errorf("%w: %s", storage.ErrNotFound, key)
}

// openObject opens the regular file of key with flags (O_RDONLY or
// O_RDWR). A missing name, or a directory, is errNoObject.
func (b *Backend) openObject(key string, flags int) (*os.File, error) {
	fd, err := b.openBeneath(b.root, key, flags|objFlags, 0)
	if err != nil {
		return nil, lookupErr(b.root, key, false, err)
	}
	return b.file(fd, key)
}

// file makes the *os.File of fd, just opened with objFlags for key,
// after checking that it is a regular file.
func (b *Backend) file(fd int, key string) (*os.File, error) {
	if err := regularFD(fd, key); err != nil {
		return nil, err
	}
	if err := blocking(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), b.path(key)), nil
}

// OpenChunk opens the file of key read-write, creating it and its
// directories when create is set.
func (b *Backend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	if err := b.enter(ctx, key, false); err != nil {
		return nil, err
	}
	defer b.leave()
	// Opening first, rather than always creating, keeps the common case
	// (the chunk exists) to one lookup and tells us whether a name was
	// made that Sync must make durable.
	f, err := b.openObject(key, unix.O_RDWR)
	switch {
	case err == nil:
		return &chunk{b: b, f: f, key: key, root: -1}, nil
	case err != errNoObject:
		return nil, fmt.Errorf("open chunk %s: %w", key, err)
	case !create:
		return nil, notFoundErr(key)
	}
	err = b.inDir(key, func(dirfd int, name string) error {
		fd, err := openat(dirfd, name, unix.O_RDWR|unix.O_CREAT|objFlags, filePerm)
		if err != nil {
			return err
		}
		f, err = b.file(fd, key)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create chunk %s: %w", key, err)
	}
	// The new name is durable only once its directories are synced; leave
	// that to Sync, which the caller needs for the data anyway. Sync may
	// come after the backend's Close, so the chunk keeps a root of its own
	// until then.
	root, err := unix.FcntlInt(uintptr(b.root), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("create chunk %s: %w", key, err)
	}
	c := &chunk{b: b, f: f, key: key, root: root}
	c.newName.Store(true)
	return c, nil
}

// inDir runs create, which makes the name of key's last segment in the
// directory dirfd, after opening or creating the directories of key below
// the root. Delete prunes empty directories, so a directory may vanish
// before create has filled it (create then fails with ENOENT); both steps
// are retried then, a bounded number of times.
func (b *Backend) inDir(key string, create func(dirfd int, name string) error) error {
	dir, name := splitKey(key)
	var err error
	for range mkdirRetries {
		var dirfd int
		dirfd, err = b.mkdirs(dir)
		if err != nil {
			if err == unix.ENOENT {
				continue
			}
			return err
		}
		err = create(dirfd, name)
		unix.Close(dirfd)
		if err == unix.ENOENT {
			continue
		}
		if inTheWay(err) {
			if err := misplaced(b.root, key, false, err); err != errNoObject {
				return err
			}
		}
		return err
	}
	return err
}

// mkdirs opens dir ("" for the root) below the root, creating what is
// missing of it, and returns its descriptor. ENOENT means that a
// concurrent Delete pruned a directory on the way; the caller retries.
func (b *Backend) mkdirs(dir string) (int, error) {
	if dir == "" {
		return b.openBeneath(b.root, ".", dirFlags, 0)
	}
	fd, err := b.openBeneath(b.root, dir, dirFlags, 0)
	if err == nil {
		return fd, nil
	}
	if err != unix.ENOENT {
		return -1, b.dirErr(dir, err)
	}
	cur := b.root
	for _, seg := range strings.Split(dir, "/") {
		fd, err = openat(cur, seg, dirFlags, 0)
		if err == unix.ENOENT {
			if err = unix.Mkdirat(cur, seg, dirPerm); err == nil || err == unix.EEXIST {
				fd, err = openat(cur, seg, dirFlags, 0)
			}
		}
		if cur != b.root {
			unix.Close(cur)
		}
		if err != nil {
			if err == unix.ENOENT {
				return -1, err
			}
			return -1, b.dirErr(dir, err)
		}
		cur = fd
	}
	return cur, nil
}

// dirErr explains why dir, below the root, could not be opened as a
// directory to create in.
func (b *Backend) dirErr(dir string, err error) error {
	if err := lookupErr(b.root, dir, true, err); err != errNoObject {
		return err
	}
	// A regular file on the way: a key cannot be both an object and the
	// prefix of another.
	return fmt.Errorf("%s: an object is in the way of this directory", dir)
}

// syncDirs fsyncs the root and each directory of key below it (from
// rootfd, the root or a copy of it), making new names along the path
// durable. A directory that a concurrent Delete has pruned ends the walk:
// everything below it is gone, and its removal is that Delete's to make
// durable. It is only used after creating names, which is rare next to
// data I/O.
func (b *Backend) syncDirs(rootfd int, key string) error {
	if err := fsync(rootfd); err != nil {
		return err
	}
	dir := path.Dir(key)
	if dir == "." {
		return nil
	}
	cur := rootfd
	defer func() {
		if cur != rootfd {
			unix.Close(cur)
		}
	}()
	for _, seg := range strings.Split(dir, "/") {
		fd, err := openat(cur, seg, dirFlags, 0)
		if err == unix.ENOENT {
			return nil
		}
		if err != nil {
			return lookupErr(rootfd, dir, true, err)
		}
		if cur != rootfd {
			unix.Close(cur)
		}
		cur = fd
		if err := fsync(cur); err != nil {
			return err
		}
	}
	return nil
}

func fsync(fd int) error {
	for {
		if err := unix.Fsync(fd); err != unix.EINTR {
			return err
		}
	}
}

// ReadMeta reads the file of key.
func (b *Backend) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	if err := b.enter(ctx, key, false); err != nil {
		return nil, err
	}
	defer b.leave()
	f, err := b.openObject(key, unix.O_RDONLY)
	if err == errNoObject {
		return nil, notFoundErr(key)
	}
	if err != nil {
		return nil, fmt.Errorf("read metadata %s: %w", key, err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read metadata %s: %w", key, err)
	}
	return data, nil
}

// WriteMeta writes data to a hidden temporary file in the directory of
// key, syncs it, renames it over the old file and syncs the directories. A
// crash leaves the old value or the new one, and perhaps a temporary file
// that List, ReadMeta and Usage never see.
func (b *Backend) WriteMeta(ctx context.Context, key string, data []byte) error {
	if err := b.enter(ctx, key, false); err != nil {
		return err
	}
	defer b.leave()
	write := func(dirfd int, name string) error {
		return lockedDir(dirfd, func() error { return writeMeta(dirfd, name, key, data) })
	}
	if err := b.inDir(key, write); err != nil {
		return fmt.Errorf("write metadata %s: %w", key, err)
	}
	// The rename is durable once the directory is synced. Directories
	// above it matter only if they are new, but telling that apart is not
	// worth it for the few small writes metadata gets.
	if err := b.syncDirs(b.root, key); err != nil {
		return fmt.Errorf("write metadata %s: %w", key, err)
	}
	return nil
}

func writeMeta(dirfd int, name, key string, data []byte) (err error) {
	// A unique name, so concurrent writers of one key never share a
	// temporary file. It does not repeat the key's: a segment may already
	// be as long as a file name can be.
	var tmp string
	var fd int
	for {
		tmp = tempName()
		fd, err = openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, filePerm)
		if err != unix.EEXIST {
			break
		}
	}
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), tmp)
	defer func() {
		if err != nil {
			f.Close()
			unix.Unlinkat(dirfd, tmp, 0)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	// rename replaces whatever has the name, without following it; but a
	// name that is not a regular file was not put there by this backend,
	// and replacing it would hide that.
	var st unix.Stat_t
	switch serr := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case serr == unix.ENOENT:
	case serr != nil:
		err = serr
		return err
	case st.Mode&unix.S_IFMT != unix.S_IFREG && st.Mode&unix.S_IFMT != unix.S_IFDIR:
		err = notRegular(key, st.Mode, false)
		return err
	}
	err = unix.Renameat(dirfd, tmp, dirfd, name)
	return err
}

func tempName() string {
	var r [8]byte
	_, _ = rand.Read(r[:])
	return tempPrefix + hex.EncodeToString(r[:])
}

// Delete removes the file of key, syncs its directory, and prunes the
// directories left empty.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.enter(ctx, key, false); err != nil {
		return err
	}
	defer b.leave()
	dir, name := splitKey(key)
	rel := relDir(dir)
	dirfd, err := b.openBeneath(b.root, rel, dirFlags, 0)
	if err != nil {
		if err := lookupErr(b.root, rel, true, err); err != errNoObject {
			return fmt.Errorf("delete %s: %w", key, err)
		}
		return notFoundErr(key)
	}
	defer unix.Close(dirfd)
	// Under the directory's lock, as a compare-and-swap is (cas.go): an
	// unlink between its compare and its rename would be undone.
	err = lockedDir(dirfd, func() error {
		// Only a regular file is an object: a directory is a prefix, and
		// anything else was not put there by this backend.
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				return notFoundErr(key)
			}
			return fmt.Errorf("delete %s: %w", key, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
		case unix.S_IFDIR:
			return notFoundErr(key)
		default:
			return fmt.Errorf("delete %s: %w", key, notRegular(key, st.Mode, false))
		}
		if err := unix.Unlinkat(dirfd, name, 0); err != nil {
			if err == unix.ENOENT {
				return notFoundErr(key)
			}
			return fmt.Errorf("delete %s: unlink: %w", key, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The unlink is durable once its directory is synced, even if a
	// concurrent Delete prunes that directory meanwhile.
	if err := fsync(dirfd); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	b.prune(dir)
	return nil
}

// prune removes dir and its parents below the root while they are empty,
// so deleted disks leave no trail of directories. It is best effort: rmdir
// fails harmlessly on a directory that is not empty, or that a concurrent
// create has just filled.
func (b *Backend) prune(dir string) {
	for dir != "" {
		parent, name := splitKey(dir)
		pfd, err := b.openBeneath(b.root, relDir(parent), dirFlags, 0)
		if err != nil {
			return
		}
		err = unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR)
		unix.Close(pfd)
		if err != nil {
			return
		}
		dir = parent
	}
}

// List walks the directory of prefix.
func (b *Backend) List(ctx context.Context, prefix string) ([]string, error) {
	if err := b.enter(ctx, prefix, true); err != nil {
		return nil, err
	}
	defer b.leave()
	keys := []string{}
	err := b.walk(ctx, prefix, func(key string, _ int, _ string) error {
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
	if err := b.enter(ctx, prefix, true); err != nil {
		return 0, err
	}
	defer b.leave()
	var total int64
	err := b.walk(ctx, prefix, func(key string, dirfd int, name string) error {
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				return nil // deleted meanwhile
			}
			return fmt.Errorf("%s: %w", key, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return notRegular(key, st.Mode, false)
		}
		total += st.Blocks * 512
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("usage %q: %w", prefix, err)
	}
	return total, nil
}

// walk calls fn for every object under prefix, with the descriptor of its
// directory and its name there. Dot names (temporary files and anything
// else hidden) and names that make no valid key are skipped; names
// vanishing under a concurrent Delete are not errors. Anything else that
// is not a regular file or a directory is an error: it is not an object,
// and hiding it would hide tampering.
func (b *Backend) walk(ctx context.Context, prefix string, fn func(key string, dirfd int, name string) error) error {
	rel := relDir(prefix)
	fd, err := b.openBeneath(b.root, rel, dirFlags, 0)
	if err != nil {
		if err := lookupErr(b.root, rel, true, err); err != errNoObject {
			return err
		}
		// Nothing there, or the prefix is itself an object: nothing is
		// under it.
		return nil
	}
	return walkDir(ctx, fd, prefix, fn)
}

// walkDir walks the directory fd, whose objects have keys starting with
// prefix + "/" (or nothing, for the root), and closes fd.
func walkDir(ctx context.Context, fd int, prefix string, fn func(key string, dirfd int, name string) error) error {
	defer unix.Close(fd)
	if err := ctx.Err(); err != nil {
		return err
	}
	ents, err := readDir(fd)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.name, ".") {
			continue
		}
		key := e.name
		if prefix != "" {
			key = prefix + "/" + e.name
		}
		if storage.ValidKey(key) != nil {
			// Not a key, nor a prefix of one (a longer key only adds
			// segments).
			continue
		}
		typ := e.typ
		if typ == unix.DT_UNKNOWN {
			var st unix.Stat_t
			if err := unix.Fstatat(fd, e.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if err == unix.ENOENT {
					continue
				}
				return fmt.Errorf("%s: %w", key, err)
			}
			typ = dtype(st.Mode)
		}
		switch typ {
		case unix.DT_DIR:
			sub, err := openat(fd, e.name, dirFlags, 0)
			if err == unix.ENOENT {
				continue // deleted meanwhile
			}
			if err != nil {
				// Replaced since the directory was read.
				var st unix.Stat_t
				switch serr := unix.Fstatat(fd, e.name, &st, unix.AT_SYMLINK_NOFOLLOW); {
				case serr == unix.ENOENT:
					continue
				case serr == nil && dtype(st.Mode) == unix.DT_REG:
					if err := fn(key, fd, e.name); err != nil {
						return err
					}
					continue
				case serr == nil && dtype(st.Mode) != unix.DT_DIR:
					return notRegular(key, st.Mode, false)
				}
				return fmt.Errorf("%s: %w", key, err)
			}
			if err := walkDir(ctx, sub, key, fn); err != nil {
				return err
			}
		case unix.DT_REG:
			if err := fn(key, fd, e.name); err != nil {
				return err
			}
		default:
			return notRegular(key, typeMode(typ), false)
		}
	}
	return nil
}

type dirent struct {
	name string
	typ  uint8
}

// readDir reads the entries of the directory fd, with the types the file
// system gives (DT_UNKNOWN where it gives none).
func readDir(fd int) ([]dirent, error) {
	var ents []dirent
	buf := make([]byte, 16<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return ents, nil
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8,
		// then the name, NUL-terminated and padded.
		for off := 0; off+19 <= n; {
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			if reclen < 19 || off+reclen > n {
				return nil, errors.New("malformed directory entry")
			}
			name := buf[off+19 : off+reclen]
			if i := slices.Index(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s != "." && s != ".." {
				ents = append(ents, dirent{name: s, typ: buf[off+18]})
			}
			off += reclen
		}
	}
}

func dtype(mode uint32) uint8 {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return unix.DT_DIR
	case unix.S_IFREG:
		return unix.DT_REG
	case unix.S_IFLNK:
		return unix.DT_LNK
	case unix.S_IFIFO:
		return unix.DT_FIFO
	case unix.S_IFSOCK:
		return unix.DT_SOCK
	case unix.S_IFCHR:
		return unix.DT_CHR
	case unix.S_IFBLK:
		return unix.DT_BLK
	}
	return unix.DT_UNKNOWN
}

func typeMode(typ uint8) uint32 {
	switch typ {
	case unix.DT_LNK:
		return unix.S_IFLNK
	case unix.DT_FIFO:
		return unix.S_IFIFO
	case unix.DT_SOCK:
		return unix.S_IFSOCK
	case unix.DT_CHR:
		return unix.S_IFCHR
	case unix.DT_BLK:
		return unix.S_IFBLK
	}
	return 0
}

// chunk is one open file. Its methods map to pread, pwrite and fallocate
// on the descriptor, which the kernel makes safe to call concurrently, so
// there is no lock here.
type chunk struct {
	b   *Backend
	f   *os.File
	key string
	// newName is set while the chunk's file was created and its
	// directory entries not yet synced. Until then root holds a copy of
	// the backend's root descriptor to sync them from, under nameMu.
	newName atomic.Bool
	nameMu  sync.Mutex
	root    int
}

var (
	_ storage.Chunk      = (*chunk)(nil)
	_ storage.Prefetcher = (*chunk)(nil)
)

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

// Prefetch asks the kernel to read [off, off+n) of the chunk's file into
// the page cache in the background (POSIX_FADV_WILLNEED): pages already
// there are left as they are, and the call does not wait for the device.
func (c *chunk) Prefetch(off, n int64) bool {
	if off >= 0 && n > 0 {
		_ = unix.Fadvise(int(c.f.Fd()), off, n, unix.FADV_WILLNEED)
	}
	return true
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

// Allocated tells whether every byte of [off, off+n) has backing space,
// so that writing there needs no new space: the range holds no hole, as
// lseek(SEEK_HOLE) finds them, and ends before the end of the file. The
// fault decorator's full mode asks it (storage/fault).
func (c *chunk) Allocated(off, n int64) (bool, error) {
	if off < 0 || n < 0 {
		return false, fmt.Errorf("chunk %s: negative range %d+%d", c.f.Name(), off, n)
	}
	if n == 0 {
		return true, nil
	}
	rc, err := c.f.SyscallConn()
	if err != nil {
		return false, err
	}
	var hole int64
	var serr error
	if err := rc.Control(func(fd uintptr) {
		// The file offset it moves is never used: I/O is pread and pwrite.
		hole, serr = unix.Seek(int(fd), off, unix.SEEK_HOLE)
	}); err != nil {
		return false, err
	}
	if serr == unix.ENXIO {
		return false, nil // at or past the end
	}
	if serr != nil {
		return false, fmt.Errorf("chunk %s: %w", c.f.Name(), serr)
	}
	return hole >= off+n, nil
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
		c.nameMu.Lock()
		defer c.nameMu.Unlock()
		if c.root >= 0 {
			if err := c.b.syncDirs(c.root, c.key); err != nil {
				return fmt.Errorf("sync chunk %s: %w", c.f.Name(), err)
			}
			unix.Close(c.root)
			c.root = -1
			c.newName.Store(false)
		}
	}
	return nil
}

func (c *chunk) Close() error {
	if c.newName.Load() {
		c.nameMu.Lock()
		if c.root >= 0 {
			unix.Close(c.root)
			c.root = -1
		}
		c.nameMu.Unlock()
	}
	return c.f.Close()
}

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
		if err := f(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// splitKey splits a key (or a directory of keys) into its directory,
// without a trailing slash ("" at the root), and its last segment.
func splitKey(key string) (dir, name string) {
	dir, name = path.Split(key)
	return strings.TrimSuffix(dir, "/"), name
}

// relDir is dir as a path relative to the root: "." for the root itself.
func relDir(dir string) string {
	if dir == "" {
		return "."
	}
	return dir
}
