package local

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"hostcrypt/internal/dirfd"
	"hostcrypt/storage"
)

// Every name the backend touches is resolved from the descriptor of its
// root directory, one of two ways:
//
//   - openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS: the kernel
//     refuses any symbolic link on the way, and anything that would lead
//     out of the root, in one system call;
//   - on a kernel without openat2 (before Linux 5.6, or a sandbox refusing
//     it), one openat per segment with O_NOFOLLOW, which refuses a
//     symbolic link at each step. Keys have no "." or ".." segment, so a
//     walk that follows no link cannot leave the root either.
//
// Whatever is found where an object or one of its directories should be
// and is neither a regular file nor a directory (a symbolic link, a device,
// a FIFO, a socket) is an error wrapping storage.ErrNotRegular. It is
// never opened through, written, or read, and no message holds anything
// but the key's own bytes: not a link's target, not a byte of a file.

const (
	resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS
	// dirFlags opens a directory to walk, create in, or fsync.
	dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	// objFlags is added to every open of an object that may exist: a FIFO
	// opened without O_NONBLOCK waits for a writer, a terminal would
	// become the controlling one without O_NOCTTY.
	objFlags = unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	// retries bounds retries of EINTR and of EAGAIN, which openat2 may
	// return when a rename races the lookup.
	retries = 64
)

// openat2Available tells whether the kernel lets this process use openat2,
// probing it on dirfd.
func openat2Available(dirfd int) bool {
	fd, err := unix.Openat2(dirfd, ".", &unix.OpenHow{Flags: dirFlags, Resolve: resolve})
	if err == nil {
		unix.Close(fd)
		return true
	}
	// ENOSYS: an old kernel. EPERM: a seccomp filter that refuses system
	// calls it does not know; "." itself cannot be refused otherwise.
	return !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM)
}

// openBeneath opens rel, a key or the directory part of one ("." for the
// root), below dirfd with flags, following no symbolic link.
func (b *Backend) openBeneath(dirfd int, rel string, flags int, mode uint32) (int, error) {
	if b.walkOnly {
		return openWalking(dirfd, rel, flags, mode)
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: resolve}
	var err error
	for range retries {
		var fd int
		fd, err = unix.Openat2(dirfd, rel, &how)
		if err == nil {
			return fd, nil
		}
		if err != unix.EINTR && err != unix.EAGAIN {
			return -1, err
		}
	}
	return -1, err
}

// openWalking is openBeneath one segment at a time.
func openWalking(dirfd int, rel string, flags int, mode uint32) (int, error) {
	segs := strings.Split(rel, "/")
	cur := dirfd
	defer func() {
		if cur != dirfd {
			unix.Close(cur)
		}
	}()
	for _, seg := range segs[:len(segs)-1] {
		fd, err := openat(cur, seg, dirFlags, 0)
		if err != nil {
			return -1, err
		}
		if cur != dirfd {
			unix.Close(cur)
		}
		cur = fd
	}
	return openat(cur, segs[len(segs)-1], flags|unix.O_NOFOLLOW, mode)
}

func openat(dirfd int, name string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags|unix.O_CLOEXEC, mode)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// misplaced reports what is in the way of rel, after a lookup below dirfd
// failed with err. It walks rel again without following anything and
// returns an error wrapping storage.ErrNotRegular for the first segment
// that is neither a directory nor (for the last one, unless isDir says rel
// names a directory) a regular file; errNoObject when the path just does
// not lead to what was looked up (a missing name, a regular file as a
// leading part, or a directory for an object and the other way round);
// and err when neither holds.
func misplaced(dirfd int, rel string, isDir bool, err error) error {
	segs := strings.Split(rel, "/")
	cur := dirfd
	defer func() {
		if cur != dirfd {
			unix.Close(cur)
		}
	}()
	for i, seg := range segs {
		var st unix.Stat_t
		if serr := unix.Fstatat(cur, seg, &st, unix.AT_SYMLINK_NOFOLLOW); serr != nil {
			if serr == unix.ENOENT || serr == unix.ENOTDIR {
				return errNoObject
			}
			return err
		}
		last := i == len(segs)-1
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if last {
				if isDir {
					return err
				}
				return errNoObject
			}
			fd, oerr := openat(cur, seg, dirFlags, 0)
			if oerr != nil {
				if oerr == unix.ENOENT {
					return errNoObject
				}
				return err
			}
			if cur != dirfd {
				unix.Close(cur)
			}
			cur = fd
		case unix.S_IFREG:
			// A regular file as a leading part: an object, so nothing
			// lies below it. As the last part: no problem here, unless a
			// directory was looked up.
			if last && !isDir {
				return err
			}
			return errNoObject
		default:
			return notRegular(path.Join(segs[:i+1]...), st.Mode, isDir || !last)
		}
	}
	return err
}

// errNoObject is misplaced's "nothing there"; callers turn it into
// storage.ErrNotFound, or an error of their own when creating.
var errNoObject = errors.New("no such object")

// notRegular is the error for an entry of type mode at rel, a key or one
// of its leading parts (dir set).
func notRegular(rel string, mode uint32, dir bool) error {
	want := "an object"
	if dir {
		want = "a directory"
	}
	return fmt.Errorf("%w: %s is a %s where %s should be; the store never follows or uses one: remove it, and find out who put it there",
		storage.ErrNotRegular, rel, dirfd.Kind(mode), want)
}

// lookupErr turns the error of a failed lookup of rel (an object, or a
// directory if isDir) below dirfd into what callers return: errNoObject
// for a name that is not there or not of the kind looked up (a directory
// is a prefix, not an object; an object has nothing below it), a
// storage.ErrNotRegular error for something in the way, or err itself.
func lookupErr(dirfd int, rel string, isDir bool, err error) error {
	switch {
	case err == unix.ENOENT || err == unix.EISDIR:
		return errNoObject
	case inTheWay(err):
		return misplaced(dirfd, rel, isDir, err)
	}
	return err
}

// inTheWay tells whether err, from a lookup, may come from something in
// the way: ENOTDIR, a leading part is a file, or (walking) a link opened
// as a directory; ELOOP, a link; EXDEV, a way out of the root; ENXIO and
// ENODEV, a socket, or a device without a driver.
func inTheWay(err error) bool {
	switch err {
	case unix.ENOTDIR, unix.ELOOP, unix.EXDEV, unix.ENXIO, unix.ENODEV:
		return true
	}
	return false
}

// regularFD checks that fd, just opened for rel, is a regular file. A
// directory is errNoObject (a prefix, not an object). It closes fd unless
// it returns nil.
func regularFD(fd int, rel string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return nil
	case unix.S_IFDIR:
		unix.Close(fd)
		return errNoObject
	}
	unix.Close(fd)
	return notRegular(rel, st.Mode, false)
}

// blocking clears O_NONBLOCK on fd, which objFlags set only to get past a
// FIFO's open: a regular file is then used like any other.
func blocking(fd int) error {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	return err
}
