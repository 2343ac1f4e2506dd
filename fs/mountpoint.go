package fs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// CleanStaleMount prepares dir for Mount at daemon start-up. A FUSE mount
// whose daemon was killed answers ENOTCONN; such a mount is detached
// (lazily, so processes still holding files in it do not block the clean
// up). A live mount, or a plain directory that is not empty, is refused with
// an error and left alone. A missing dir or an empty directory is fine.
func CleanStaleMount(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("fs: clean %q: %w", dir, err)
	}
	switch err := probe(abs); {
	case errors.Is(err, iofs.ErrNotExist):
		return nil
	case isDeadConn(err):
		if err := detach(abs); err != nil {
			return fmt.Errorf("fs: clean stale mount %s: %w", abs, err)
		}
		if err := probe(abs); err != nil {
			return fmt.Errorf("fs: clean stale mount %s: still unusable after unmount: %w", abs, err)
		}
	case err != nil:
		return fmt.Errorf("fs: clean %s: %w", abs, err)
	}
	return checkIdle(abs)
}

// checkMountDir is Mount's precondition on dir.
func checkMountDir(abs string) error {
	err := probe(abs)
	switch {
	case errors.Is(err, iofs.ErrNotExist):
		return fmt.Errorf("fs: mount point %s does not exist", abs)
	case isDeadConn(err):
		return fmt.Errorf("fs: mount point %s is a dead FUSE mount (its daemon was killed); clean it up with CleanStaleMount or `fusermount3 -uz %s`", abs, abs)
	case err != nil:
		return fmt.Errorf("fs: mount point %s: %w", abs, err)
	}
	return checkIdle(abs)
}

// probe asks the file system holding dir a question that no kernel cache
// answers: statfs goes to a FUSE daemon every time, so a dead one shows at
// once (stat could be answered from cached attributes for a while).
func probe(abs string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(abs, &st); err != nil {
		return &os.PathError{Op: "statfs", Path: abs, Err: err}
	}
	return nil
}

func isDeadConn(err error) bool {
	return errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED)
}

// checkIdle accepts an empty directory that is not a mount point.
func checkIdle(abs string) error {
	fi, err := os.Stat(abs)
	if err != nil {
		return fmt.Errorf("fs: mount point %s: %w", abs, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("fs: mount point %s is not a directory", abs)
	}
	if fstype, ok, err := mountedAt(abs); err != nil {
		return fmt.Errorf("fs: mount point %s: %w", abs, err)
	} else if ok {
		return fmt.Errorf("fs: %s is already a live %s mount; unmount it first", abs, fstype)
	}
	f, err := os.Open(abs)
	if err != nil {
		return fmt.Errorf("fs: mount point %s: %w", abs, err)
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != io.EOF {
		if err != nil {
			return fmt.Errorf("fs: mount point %s: %w", abs, err)
		}
		return fmt.Errorf("fs: mount point %s is not empty", abs)
	}
	return nil
}

// detach lazily unmounts a dead mount: umount2(MNT_DETACH) as root, else the
// fusermount helper, which lets users unmount their own FUSE mounts.
func detach(abs string) error {
	err := unix.Unmount(abs, unix.MNT_DETACH)
	if err == nil {
		return nil
	}
	for _, helper := range []string{"fusermount3", "fusermount"} {
		path, lookErr := exec.LookPath(helper)
		if lookErr != nil {
			continue
		}
		out, runErr := exec.Command(path, "-u", "-z", abs).CombinedOutput()
		if runErr == nil {
			return nil
		}
		err = fmt.Errorf("%w; %s: %v: %s", err, helper, runErr, strings.TrimSpace(string(out)))
	}
	return err
}

// mountedAt reports whether abs is a mount point of this process's mount
// namespace, and the type of the file system mounted there.
func mountedAt(abs string) (fstype string, ok bool, err error) {
	// Resolve symlinks in the parent only: resolving abs itself would stat
	// the mount's root.
	parent, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return "", false, err
	}
	want := filepath.Join(parent, filepath.Base(abs))

	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		point, typ, ok := parseMountinfo(s.Text())
		if ok && point == want {
			fstype, ok = typ, true
		}
	}
	return fstype, fstype != "", s.Err()
}

// parseMountinfo returns the mount point and file system type of one line
// of /proc/PID/mountinfo (see proc_pid_mountinfo(5)):
//
//	36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw
func parseMountinfo(line string) (point, fstype string, ok bool) {
	fields := strings.Fields(line)
	if len(fields) < 5 {
		return "", "", false
	}
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || sep+1 >= len(fields) {
		return "", "", false
	}
	return unescapeMountinfo(fields[4]), fields[sep+1], true
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, ...) the
// kernel writes for blanks and backslashes in paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
