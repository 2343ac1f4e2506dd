package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// ErrUnmounted is returned by changes to a Tree after Unmount.
var ErrUnmounted = errors.New("fs: tree is unmounted")

// Tree is a mounted tree of VM directories holding image files.
// Its methods are safe for concurrent use.
type Tree struct {
	opts   Options
	dir    string
	root   *dirNode
	server *fuse.Server
	done   chan struct{} // closed when the server has stopped

	// ctl serialises changes to the tree, including the kernel
	// notifications and the wait for in-flight I/O that go with them.
	// FUSE request handlers never take it.
	ctl sync.Mutex
	// mu guards the fields below and is never held across a blocking call.
	mu        sync.Mutex
	vms       map[string]*vmDir
	unmounted bool
}

type vmDir struct {
	node   *dirNode
	images map[string]*imageNode
}

// Mount mounts an empty tree on dir, which must be an existing, empty
// directory that is not a mount point already. A dead mount left behind by
// a killed daemon is reported as such; CleanStaleMount removes it.
func Mount(dir string, opts Options) (*Tree, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("fs: mount point %q: %w", dir, err)
	}
	if err := checkMountDir(abs); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	t := &Tree{
		opts: opts,
		dir:  abs,
		vms:  make(map[string]*vmDir),
		done: make(chan struct{}),
	}
	t.root = &dirNode{tree: t, created: time.Now()}
	server, err := startServer(abs, t.root, opts.nodeOptions())
	if err != nil {
		return nil, fmt.Errorf("fs: mount %s: %w", abs, err)
	}
	t.server = server
	go func() {
		server.Wait()
		close(t.done)
	}()
	return t, nil
}

// Dir is the absolute path the tree is mounted on.
func (t *Tree) Dir() string { return t.dir }

// AddImage serves img as vm/name, creating the VM directory if needed. The
// file is visible to every process when AddImage returns (the kernel's
// cached negative entries are invalidated).
func (t *Tree) AddImage(vm, name string, img Image) error {
	if img == nil {
		return fmt.Errorf("fs: add %s/%s: nil image", vm, name)
	}
	if err := checkName(vm); err != nil {
		return fmt.Errorf("fs: add %s/%s: VM name: %w", vm, name, err)
	}
	if err := checkName(name); err != nil {
		return fmt.Errorf("fs: add %s/%s: image name: %w", vm, name, err)
	}
	t.ctl.Lock()
	defer t.ctl.Unlock()

	ctx := context.Background()
	t.mu.Lock()
	if t.unmounted || !t.live() { // by Unmount, or from outside
		t.mu.Unlock()
		return fmt.Errorf("fs: add %s/%s: %w", vm, name, ErrUnmounted)
	}
	d := t.vms[vm]
	if d != nil && d.images[name] != nil {
		t.mu.Unlock()
		return fmt.Errorf("fs: add %s/%s: %w", vm, name, iofs.ErrExist)
	}
	newDir := d == nil
	if newDir {
		node := &dirNode{tree: t, created: time.Now()}
		t.root.NewPersistentInode(ctx, node, gofs.StableAttr{Mode: fuse.S_IFDIR})
		t.root.AddChild(vm, node.EmbeddedInode(), false)
		d = &vmDir{node: node, images: make(map[string]*imageNode)}
		t.vms[vm] = d
	}
	n := newImageNode(t, img)
	d.node.NewPersistentInode(ctx, n, gofs.StableAttr{Mode: fuse.S_IFREG})
	d.node.AddChild(name, n.EmbeddedInode(), false)
	d.images[name] = n
	t.mu.Unlock()

	// Notifications go out with no lock that a FUSE request could need:
	// the kernel may be waiting on one of our replies while it handles them.
	if newDir {
		t.notifyEntry(t.root.EmbeddedInode(), vm)
	}
	t.notifyEntry(d.node.EmbeddedInode(), name)
	return nil
}

// RemoveImage takes vm/name out of the tree. When it returns, the name is
// gone from the kernel's caches, the calls into the Image that were in
// flight have finished, and the Image will not be called again: file
// descriptors still open on it get EIO. The VM directory stays.
func (t *Tree) RemoveImage(vm, name string) error {
	t.ctl.Lock()
	defer t.ctl.Unlock()

	t.mu.Lock()
	d := t.vms[vm]
	var n *imageNode
	if d != nil {
		n = d.images[name]
	}
	if n == nil {
		t.mu.Unlock()
		return fmt.Errorf("fs: remove %s/%s: %w", vm, name, iofs.ErrNotExist)
	}
	delete(d.images, name)
	d.node.RmChild(name)
	t.mu.Unlock()

	t.dropImage(d.node.EmbeddedInode(), name, n)
	return nil
}

// dropImage finishes removing an image that is no longer in the tree.
func (t *Tree) dropImage(parent *gofs.Inode, name string, n *imageNode) {
	t.notifyDelete(parent, name, n.EmbeddedInode())
	n.detach()
	// Attributes too: an fstat on a descriptor still open sees nlink 0.
	t.notifyInode(n.EmbeddedInode(), 0)
	n.ForgetPersistent()
}

// RemoveVM removes every image of vm, as RemoveImage does, and then its
// directory.
func (t *Tree) RemoveVM(vm string) error {
	t.ctl.Lock()
	defer t.ctl.Unlock()

	t.mu.Lock()
	d := t.vms[vm]
	if d == nil {
		t.mu.Unlock()
		return fmt.Errorf("fs: remove VM %s: %w", vm, iofs.ErrNotExist)
	}
	delete(t.vms, vm)
	names := slices.Sorted(maps.Keys(d.images))
	for _, name := range names {
		d.node.RmChild(name)
	}
	t.root.RmChild(vm)
	t.mu.Unlock()

	for _, name := range names {
		t.dropImage(d.node.EmbeddedInode(), name, d.images[name])
	}
	t.notifyDelete(t.root.EmbeddedInode(), vm, d.node.EmbeddedInode())
	d.node.ForgetPersistent()
	return nil
}

// Images lists the image names of vm, sorted: nil if there is no such VM,
// empty if its directory holds no image.
func (t *Tree) Images(vm string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.vms[vm]
	if d == nil {
		return nil
	}
	return append([]string{}, slices.Sorted(maps.Keys(d.images))...)
}

// VMs lists the VM directories, sorted.
func (t *Tree) VMs() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Sorted(maps.Keys(t.vms))
}

// Resized tells the kernel that the size of vm/name changed (a disk grown
// while served). The next stat or lseek(SEEK_END) asks the Image again.
// Unknown names are ignored.
func (t *Tree) Resized(vm, name string) {
	t.mu.Lock()
	var n *imageNode
	if d := t.vms[vm]; d != nil {
		n = d.images[name]
	}
	t.mu.Unlock()
	if n != nil {
		t.notifyInode(n.EmbeddedInode(), -1)
	}
}

// Unmount unmounts the tree and waits until the server has stopped. It
// fails, leaving the tree mounted, while the mount is busy (an image open,
// a loop device attached); as root the error wraps syscall.EBUSY.
// Unmounting twice is not an error. If the mount was already detached from
// outside (umount -l) while files in it are open, Unmount waits until they
// are closed.
func (t *Tree) Unmount() error {
	t.ctl.Lock()
	defer t.ctl.Unlock()
	t.mu.Lock()
	if t.unmounted {
		t.mu.Unlock()
		return nil
	}
	t.mu.Unlock()

	if err := t.unmount(); err != nil {
		select {
		case <-t.done: // unmounted from outside already
		default:
			return fmt.Errorf("fs: unmount %s: %w", t.dir, err)
		}
	}
	<-t.done
	t.mu.Lock()
	t.unmounted = true
	t.mu.Unlock()
	return nil
}

// unmount detaches the mount; the server stops once the kernel has let go.
// As root it calls umount(2) itself, so that a busy mount is reported as
// EBUSY rather than as the text of a failed helper; others need fusermount.
func (t *Tree) unmount() error {
	if os.Geteuid() != 0 {
		return t.server.Unmount()
	}
	var err error
	// Like go-fuse, retry briefly: a file closed just now may still be
	// held by the kernel for a moment.
	delay := time.Duration(0)
	for range 5 {
		if err = unix.Unmount(t.dir, 0); err == nil || errors.Is(err, unix.EINVAL) {
			// EINVAL: not a mount point (any more).
			return nil
		}
		delay = 2*delay + 5*time.Millisecond
		time.Sleep(delay)
	}
	return err
}

// Wait blocks until the server stops: after Unmount, or when the mount is
// taken away from outside (umount, fusermount -u).
func (t *Tree) Wait() { <-t.done }

func (t *Tree) statfs(out *fuse.StatfsOut) {
	t.mu.Lock()
	var nodes []*imageNode
	for _, d := range t.vms {
		for _, n := range d.images {
			nodes = append(nodes, n)
		}
	}
	dirs := len(t.vms) + 1
	t.mu.Unlock()

	var total uint64
	for _, n := range nodes {
		size, _ := n.size()
		total += uint64(size)
	}
	// A tree of fixed-size images: all of it is in use, nothing is free.
	*out = fuse.StatfsOut{
		Blocks:  (total + blockSize - 1) / blockSize,
		Files:   uint64(len(nodes) + dirs),
		Bsize:   blockSize,
		Frsize:  blockSize,
		NameLen: 255,
	}
}

func (t *Tree) live() bool {
	select {
	case <-t.done:
		return false
	default:
		return true
	}
}

// notifyEntry drops the kernel's cached entry (positive or negative) for
// name in parent. ENOENT means the kernel had nothing cached.
func (t *Tree) notifyEntry(parent *gofs.Inode, name string) {
	if !t.live() {
		return
	}
	if errno := parent.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
		t.opts.Logger.Debug("fs: entry invalidation failed", "name", name, "err", errno)
	}
}

// notifyDelete tells the kernel that child is gone from parent, which also
// wakes inotify watchers and detaches the dentry from processes using it.
func (t *Tree) notifyDelete(parent *gofs.Inode, name string, child *gofs.Inode) {
	if !t.live() {
		return
	}
	if errno := parent.NotifyDelete(name, child); errno != 0 {
		// The kernel did not know the child under that name (never
		// looked up, or already forgotten): drop the name anyway.
		t.notifyEntry(parent, name)
	}
}

// notifyInode drops the kernel's cached attributes of n, and with off >= 0
// its cached pages from off on as well.
func (t *Tree) notifyInode(n *gofs.Inode, off int64) {
	if !t.live() {
		return
	}
	if errno := n.NotifyContent(off, 0); errno != 0 && errno != syscall.ENOENT {
		t.opts.Logger.Debug("fs: inode invalidation failed", "err", errno)
	}
}

// checkName accepts a single path component.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case name == "." || name == "..":
		return fmt.Errorf("%q is not allowed", name)
	case len(name) > 255:
		return errors.New("name longer than 255 bytes")
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("%q contains '/' or NUL", name)
	}
	return nil
}
