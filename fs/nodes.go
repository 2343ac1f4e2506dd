package fs

import (
	"context"
	"errors"
	"io"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

const (
	dirMode   = 0o755
	imageMode = 0o600
	// blockSize is reported as st_blksize: the engine's encryption unit,
	// so tools that size their I/O from it avoid read-modify-write.
	blockSize = 4096
)

// dirNode is the root or a VM directory. Its children are persistent inodes
// managed by Tree; go-fuse answers LOOKUP and READDIR from them.
type dirNode struct {
	gofs.Inode
	tree    *Tree
	created time.Time
}

func (d *dirNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFDIR | dirMode
	out.Nlink = 2
	out.Size = blockSize
	out.Blksize = blockSize
	out.Blocks = blockSize / 512
	out.SetTimes(&d.created, &d.created, &d.created)
	return 0
}

func (d *dirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	d.tree.statfs(out)
	return 0
}

// The layout belongs to the daemon: every namespace or attribute change is
// refused.

func (d *dirNode) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

func (d *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}

func (d *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (d *dirNode) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (d *dirNode) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (d *dirNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (d *dirNode) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (d *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (d *dirNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EPERM
}

// imageNode is one image file. The node form of every operation is used, so
// open files carry no state of their own: Open returns no handle.
//
// mu is held for reading across each call into the Image and for writing
// only by detach, so I/O to one image runs fully in parallel and RemoveImage
// can wait for the calls in flight before it returns.
type imageNode struct {
	gofs.Inode
	tree    *Tree
	created time.Time

	mu       sync.RWMutex
	img      Image // nil once detached
	lastSize int64 // Size() at detach, for fstat on a removed image
}

func newImageNode(t *Tree, img Image) *imageNode {
	return &imageNode{tree: t, img: img, created: time.Now()}
}

// acquire returns the image for one call, or nil once it was removed. A
// non-nil result must be handed back with release.
func (n *imageNode) acquire() Image {
	n.mu.RLock()
	if n.img == nil {
		n.mu.RUnlock()
		return nil
	}
	return n.img
}

func (n *imageNode) release() { n.mu.RUnlock() }

// detach waits for the calls in flight and makes every later one fail with
// EIO. The Image is not touched after detach returns.
func (n *imageNode) detach() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.img != nil {
		n.lastSize = n.img.Size()
		n.img = nil
	}
}

// size is the current size, or the last one for a removed image.
func (n *imageNode) size() (int64, bool) {
	img := n.acquire()
	if img == nil {
		n.mu.RLock()
		defer n.mu.RUnlock()
		return n.lastSize, false
	}
	defer n.release()
	return img.Size(), true
}

func (n *imageNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fillAttr(&out.Attr)
	return 0
}

func (n *imageNode) fillAttr(a *fuse.Attr) {
	size, live := n.size()
	a.Mode = fuse.S_IFREG | imageMode
	a.Nlink = 1
	if !live {
		a.Nlink = 0
	}
	a.Uid, a.Gid = n.tree.opts.UID, n.tree.opts.GID
	a.Size = uint64(size)
	a.Blksize = blockSize
	// The engine does not say how much is allocated; report the whole
	// image, which is what it may come to occupy.
	a.Blocks = (uint64(size) + 511) / 512
	a.SetTimes(&n.created, &n.created, &n.created)
}

// Setattr refuses every change except truncating to the current size.
func (n *imageNode) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	const harmless = fuse.FATTR_FH | fuse.FATTR_LOCKOWNER | fuse.FATTR_KILL_SUIDGID
	valid := in.Valid &^ harmless
	if valid&^fuse.FATTR_SIZE != 0 {
		return syscall.EPERM
	}
	if valid&fuse.FATTR_SIZE != 0 {
		size, live := n.size()
		if !live {
			return syscall.EIO
		}
		if in.Size != uint64(size) {
			return syscall.EPERM
		}
	}
	n.fillAttr(&out.Attr)
	return 0
}

func (n *imageNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	n.tree.statfs(out)
	return 0
}

// Open bypasses the kernel page cache for every open (see the package
// comment) and lets the kernel send writes to the same file in parallel.
func (n *imageNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if n.acquire() == nil {
		return nil, 0, syscall.ENOENT
	}
	n.release()
	return nil, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

// Read fills go-fuse's own request buffer and hands it back as a vector
// result. A vector is written to /dev/fuse with writev; a plain data result
// would first be tried through a splice pipe, which cannot grow to hold a
// 1 MiB reply and logs an error on every large read before falling back.
func (n *imageNode) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	img := n.acquire()
	if img == nil {
		return nil, syscall.EIO
	}
	defer n.release()
	want := readSpan(off, len(dest), img.Size())
	if want == 0 {
		return fuse.ReadResultVector(nil), 0
	}
	var (
		data    []byte
		release func() // set when data is a buffer the image lent
		err     error
	)
	if l, ok := img.(Lender); ok {
		data, release, err = l.ReadLent(dest[:want], off)
	} else {
		var got int
		got, err = img.ReadAt(dest[:want], off)
		data = dest[:got]
	}
	if release != nil && (len(data) == 0 || err != nil && !errors.Is(err, io.EOF)) {
		release() // go-fuse calls Done for neither an error nor an empty reply
		release = nil
	}
	if err != nil && !errors.Is(err, io.EOF) {
		// No partial data with an error: for an authenticated disk a
		// partial answer could hide an integrity failure.
		return nil, toErrno(err)
	}
	if release != nil {
		return &lentResult{data: data, release: release}, 0
	}
	return fuse.ReadResultVector([][]byte{data}), 0
}

// lentResult replies with a buffer an image lent (Lender) and gives it back
// once go-fuse has written the reply. Like a vector result it is written
// with writev (Slices), without a copy into go-fuse's own buffer.
type lentResult struct {
	data    []byte
	release func()
}

func (r *lentResult) Slices() ([][]byte, fuse.Status) { return [][]byte{r.data}, fuse.OK }

func (r *lentResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	return append(buf[:0], r.data...), fuse.OK
}

func (r *lentResult) Size() int { return len(r.data) }

func (r *lentResult) Done() {
	if r.release != nil {
		r.release()
		r.release = nil
	}
}

// Write passes the kernel's buffer straight to the engine; WriteAt must not
// keep it.
func (n *imageNode) Write(ctx context.Context, f gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	img := n.acquire()
	if img == nil {
		return 0, syscall.EIO
	}
	defer n.release()
	want, errno := writeSpan(off, len(data), img.Size())
	if errno != 0 || want == 0 {
		return 0, errno
	}
	got, err := img.WriteAt(data[:want], off)
	if err != nil {
		return 0, toErrno(err)
	}
	return uint32(got), 0
}

// Fsync (fsync and fdatasync alike) makes the image durable.
func (n *imageNode) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno {
	img := n.acquire()
	if img == nil {
		return syscall.EIO
	}
	defer n.release()
	return toErrno(img.Sync())
}

// Flush runs on every close(2). It promises nothing about durability, and
// syncing here would make each close as slow as an fsync. It succeeds even
// on a removed image, so that closing a descriptor never fails.
func (n *imageNode) Flush(ctx context.Context, f gofs.FileHandle) syscall.Errno {
	return 0
}

func (n *imageNode) Allocate(ctx context.Context, f gofs.FileHandle, off, length uint64, mode uint32) syscall.Errno {
	img := n.acquire()
	if img == nil {
		return syscall.EIO
	}
	defer n.release()
	action, start, count, errno := planAllocate(mode, off, length, img.Size())
	if errno != 0 {
		return errno
	}
	switch action {
	case allocDiscard:
		return toErrno(img.Discard(start, count))
	case allocZero:
		if z, ok := img.(Zeroer); ok {
			return toErrno(z.ZeroRange(start, count))
		}
		return toErrno(img.Discard(start, count))
	}
	return 0
}

// Lseek answers SEEK_DATA and SEEK_HOLE; the kernel handles the other
// whence values itself.
func (n *imageNode) Lseek(ctx context.Context, f gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	img := n.acquire()
	if img == nil {
		return 0, syscall.EIO
	}
	defer n.release()
	size := img.Size()
	if whence != unix.SEEK_DATA && whence != unix.SEEK_HOLE {
		return 0, syscall.EINVAL
	}
	if off >= uint64(size) {
		return 0, syscall.ENXIO
	}
	s, ok := img.(Seeker)
	if !ok {
		pos, errno := seekWhole(whence, int64(off), size)
		return uint64(pos), errno
	}
	var pos int64
	var err error
	if whence == unix.SEEK_DATA {
		pos, err = s.SeekData(int64(off))
	} else {
		pos, err = s.SeekHole(int64(off))
	}
	if err != nil {
		return 0, toErrno(err)
	}
	return uint64(min(pos, size)), 0
}
