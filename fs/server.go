package fs

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// startServer mounts root on abs and serves it.
//
// go-fuse v2.12.1 opens /dev/fuse without close-on-exec when it mounts with
// mount(2) itself (DirectMount), and never sets the flag afterwards. Every
// process the daemon starts later would inherit the descriptor: it could
// read and answer the mount's requests, and it keeps the connection alive
// after the daemon dies, so the mount hangs instead of failing with
// ENOTCONN. The direct mount is therefore made with fork and exec held off
// (syscall.ForkLock, as the standard library does for descriptors it cannot
// create close-on-exec), and the flag is set before they resume. The
// fusermount path sets the flag itself.
func startServer(abs string, root gofs.InodeEmbedder, o *gofs.Options) (*fuse.Server, error) {
	raw := gofs.NewNodeFS(root, o)
	var server *fuse.Server
	if o.DirectMount {
		direct := o.MountOptions
		// No fallback inside go-fuse: fusermount would exec while we hold
		// ForkLock.
		direct.DirectMount, direct.DirectMountStrict = false, true
		var err error
		syscall.ForkLock.RLock()
		server, err = fuse.NewServer(raw, abs, &direct)
		if err == nil {
			if cerr := closeOnExecDevFUSE(); cerr != nil {
				// Without /proc we cannot find the descriptor; the
				// mount works, children may inherit it.
				o.Logger.Printf("warning: %s: %v", abs, cerr)
			}
		}
		syscall.ForkLock.RUnlock()
		if err != nil {
			o.Logger.Printf("direct mount of %s failed, trying fusermount: %v", abs, err)
			server = nil
		}
	}
	if server == nil {
		helper := o.MountOptions
		helper.DirectMount, helper.DirectMountStrict = false, false
		var err error
		if server, err = fuse.NewServer(raw, abs, &helper); err != nil {
			return nil, err
		}
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		_ = server.Unmount()
		return nil, err
	}
	return server, nil
}

// closeOnExecDevFUSE sets close-on-exec on every descriptor of this process
// that is open on /dev/fuse.
func closeOnExecDevFUSE() error {
	const fdDir = "/proc/self/fd"
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		return fmt.Errorf("listing open descriptors: %w", err)
	}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil || target != "/dev/fuse" {
			continue // closed meanwhile, or something else
		}
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err == nil {
			syscall.CloseOnExec(fd)
		}
	}
	return nil
}
