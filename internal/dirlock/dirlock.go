// Package dirlock keeps two processes from using one directory at once: an
// exclusive flock on a lock file in the directory, taken without waiting
// and held until Release or the process's end (the kernel drops it then,
// even after kill -9, so a crash leaves nothing to clean up).
//
// The lock file records the holder's pid, so that the process refused can
// say who holds the directory. Its name starts with a dot, which a storage
// backend never takes for an object.
package dirlock

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"hostcrypt/internal/dirfd"
)

// FileName is the lock file's name in a locked directory.
const FileName = ".hostcrypt.lock"

// ErrLocked is returned, wrapped, when another holder has the lock.
var ErrLocked = errors.New("directory in use")

// Lock is a held lock.
type Lock struct {
	dir string
	f   *os.File
}

// Acquire takes the lock of dir, which must exist. When another process,
// or another Lock of this one, holds it, Acquire returns at once with an
// error wrapping ErrLocked that names dir and, when the lock file tells,
// the holder's pid and program.
func Acquire(dir string) (*Lock, error) {
	d, err := dirfd.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	f, err := d.OpenFile(FileName, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, fmt.Errorf("%s: %w by another process%s; stop it first, or give this one a directory of its own",
				dir, ErrLocked, holder(f))
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	// Who holds it, for whoever is refused next. Not synced: after a
	// crash the lock is gone anyway.
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt(pid, 0)
	}
	return &Lock{dir: dir, f: f}, nil
}

// Dir returns the locked directory.
func (l *Lock) Dir() string { return l.dir }

// Release drops the lock. The lock file stays: removing it would let a
// process that opened it just before lock a file no longer in the
// directory while a third locks a new one.
func (l *Lock) Release() error {
	return l.f.Close()
}

func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if ferr = unix.Flock(int(fd), how); ferr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}

// holder describes the process named by the lock file f, or says nothing
// when the file does not tell.
func holder(f *os.File) string {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	pid, err := strconv.Atoi(string(bytes.TrimSpace(buf[:n])))
	if err != nil || pid <= 0 {
		return ""
	}
	comm, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
	if err != nil {
		return fmt.Sprintf(" (pid %d)", pid)
	}
	return fmt.Sprintf(" (pid %d, %s)", pid, bytes.TrimSpace(comm))
}
