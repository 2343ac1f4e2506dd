package hostd

import (
	"fmt"
	"os"
	"syscall"

	"hostcrypt/internal/dirlock"
	"hostcrypt/storage/location"
)

// lockDirs locks the state, storage and host directories, so that a second
// hostcryptd given any of them is refused before it changes anything: the
// first one's socket, mount, state and disks stay its own. A directory
// given for two flags is locked once. The locks hold until release, or
// until the process ends.
func lockDirs(cfg Config) (release func(), err error) {
	type id struct{ dev, ino uint64 }
	held := map[id]bool{}
	var locks []*dirlock.Lock
	unlock := func() {
		for _, l := range locks {
			l.Release()
		}
	}
	defer func() {
		if err != nil {
			unlock()
		}
	}()
	dirs := []struct{ flag, dir string }{{"--state", cfg.StateDir}, {"--host-dir", cfg.HostDir}}
	// A rados:// store is shared by design; only a directory is locked.
	if loc, err := location.Parse(cfg.StorageDir); err == nil && loc.Dir != "" {
		dirs = append(dirs, struct{ flag, dir string }{"--storage", loc.Dir})
	}
	for _, d := range dirs {
		fi, err := os.Stat(d.dir)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.flag, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil, fmt.Errorf("%s %s: no device and inode to tell it apart", d.flag, d.dir)
		}
		k := id{uint64(st.Dev), st.Ino}
		if held[k] {
			continue
		}
		held[k] = true
		l, err := dirlock.Acquire(d.dir)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.flag, err)
		}
		locks = append(locks, l)
	}
	return unlock, nil
}
