// Package dirfd works on the files of one directory of the host through a
// descriptor of that directory. Names are single path segments, looked up
// once the directory is open: a symbolic link planted at a name is never
// followed, only regular files are opened, and opening never blocks on a
// FIFO or a device. The daemons run as root; without this, a link in the
// host cache's or the state directory would make them create, truncate or
// read a file anywhere on the host.
package dirfd

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotRegular is returned, wrapped, when a name holds something other
// than a regular file (a symbolic link, a FIFO, a socket, a device, or a
// directory where a file is expected). The message names the file and
// nothing of what is there.
var ErrNotRegular = errors.New("not a regular file")

const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC

// Dir is an open directory. Its methods may be called concurrently; Close
// must come after every other call.
type Dir struct {
	fd   int
	path string
}

// Open opens the directory at path. Links on the way to it, and path
// itself, are followed: where the directory is, is the operator's choice.
func Open(path string) (*Dir, error) {
	fd, err := retry(func() (int, error) { return unix.Open(path, dirFlags, 0) })
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &Dir{fd: fd, path: path}, nil
}

// OpenLeaf opens the directory at path, refusing it if its last part is
// anything but a directory (a link to one included): that part is made by
// the program, never by the operator. With create, a missing directory is
// made, mode 0700, and so are its missing parents. Without, a missing
// directory is an error wrapping fs.ErrNotExist.
func OpenLeaf(path string, create bool) (*Dir, error) {
	path = filepath.Clean(path)
	parent, name := filepath.Split(path)
	if name == "" || name == "." || name == ".." {
		return nil, fmt.Errorf("%s: not a directory name of its own", path)
	}
	if create {
		if err := os.MkdirAll(parent, 0o700); err != nil {
			return nil, err
		}
	}
	p, err := Open(parent)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	if create {
		if err := unix.Mkdirat(p.fd, name, 0o700); err != nil && err != unix.EEXIST {
			return nil, &fs.PathError{Op: "mkdir", Path: path, Err: err}
		}
	}
	fd, err := retry(func() (int, error) { return unix.Openat(p.fd, name, dirFlags|unix.O_NOFOLLOW, 0) })
	if err != nil {
		if err == unix.ENOTDIR || err == unix.ELOOP {
			return nil, p.notRegular(name, "a directory", err)
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &Dir{fd: fd, path: path}, nil
}

// Path returns the path the directory was opened with.
func (d *Dir) Path() string { return d.path }

// Close closes the directory.
func (d *Dir) Close() error { return unix.Close(d.fd) }

// Sync makes the directory's entries durable: names created, renamed or
// removed in it.
func (d *Dir) Sync() error {
	_, err := retry(func() (int, error) { return 0, unix.Fsync(d.fd) })
	if err != nil {
		return &fs.PathError{Op: "fsync", Path: d.path, Err: err}
	}
	return nil
}

// OpenFile opens the regular file name with flag (os.O_* values) and, when
// it creates the file, perm. A symbolic link at name is an error wrapping
// ErrNotRegular, whatever flag holds, and so is a FIFO, a socket or a
// device, opened for a moment without blocking and never read or written.
func (d *Dir) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	if err := segment(name); err != nil {
		return nil, err
	}
	flags := flag | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC
	fd, err := retry(func() (int, error) { return unix.Openat(d.fd, name, flags, uint32(perm.Perm())) })
	if err != nil {
		switch err {
		case unix.ELOOP, unix.ENXIO, unix.ENODEV, unix.EISDIR:
			// A link, a socket or a driverless device, a directory.
			return nil, d.notRegular(name, "a regular file", err)
		}
		return nil, &fs.PathError{Op: "open", Path: d.join(name), Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "stat", Path: d.join(name), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, notRegular(d.join(name), "a regular file", st.Mode)
	}
	// O_NONBLOCK was only for getting past a FIFO's open.
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	return os.NewFile(uintptr(fd), d.join(name)), nil
}

// ReadFile returns the content of the regular file name.
func (d *Dir) ReadFile(name string) ([]byte, error) {
	f, err := d.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// Remove removes name, whatever it is but a directory; a link is removed,
// not what it points to. A missing name is an error wrapping
// fs.ErrNotExist.
func (d *Dir) Remove(name string) error {
	if err := segment(name); err != nil {
		return err
	}
	if _, err := retry(func() (int, error) { return 0, unix.Unlinkat(d.fd, name, 0) }); err != nil {
		return &fs.PathError{Op: "remove", Path: d.join(name), Err: err}
	}
	return nil
}

// Rename renames oldName to newName in the directory, replacing what
// newName was (a link itself, never what it points to).
func (d *Dir) Rename(oldName, newName string) error {
	if err := errors.Join(segment(oldName), segment(newName)); err != nil {
		return err
	}
	if _, err := retry(func() (int, error) { return 0, unix.Renameat(d.fd, oldName, d.fd, newName) }); err != nil {
		return &os.LinkError{Op: "rename", Old: d.join(oldName), New: d.join(newName), Err: err}
	}
	return nil
}

// Lstat returns the mode bits (type and permissions, as unix.S_IF* and
// the low bits) of name, without following a link. A missing name is an
// error wrapping fs.ErrNotExist.
func (d *Dir) Lstat(name string) (uint32, error) {
	if err := segment(name); err != nil {
		return 0, err
	}
	var st unix.Stat_t
	if _, err := retry(func() (int, error) { return 0, unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) }); err != nil {
		return 0, &fs.PathError{Op: "lstat", Path: d.join(name), Err: err}
	}
	return st.Mode, nil
}

// CheckRegular returns nil if name is missing or a regular file, and an
// error wrapping ErrNotRegular otherwise.
func (d *Dir) CheckRegular(name string) error {
	mode, err := d.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case mode&unix.S_IFMT != unix.S_IFREG:
		return notRegular(d.join(name), "a regular file", mode)
	}
	return nil
}

func (d *Dir) join(name string) string { return filepath.Join(d.path, name) }

// notRegular is the error for name, where want should be, after a call
// failed with err: it says what is there if it can find out.
func (d *Dir) notRegular(name, want string, err error) error {
	mode, serr := d.Lstat(name)
	if serr != nil || mode&unix.S_IFMT == unix.S_IFREG {
		// A regular file is no stranger here; err says what is wrong.
		return &fs.PathError{Op: "open", Path: d.join(name), Err: err}
	}
	return notRegular(d.join(name), want, mode)
}

func notRegular(path, want string, mode uint32) error {
	return fmt.Errorf("%s: %w: a %s is there, where %s should be; it is never followed or used: remove it, and find out who put it there",
		path, ErrNotRegular, Kind(mode), want)
}

// Kind names the file type in mode (unix.S_IF* bits) in words, for
// messages: "symbolic link", "FIFO", "directory" and so on.
func Kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return "symbolic link"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFREG:
		return "regular file"
	}
	return "special file"
}

// segment refuses a name that is not one path segment of its own.
func segment(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%q is not a file name", name)
	}
	return nil
}

func retry(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}
