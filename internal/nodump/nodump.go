// Package nodump keeps a daemon's memory out of core dumps. The daemons
// hold data keys, master keys and plaintext buffers in memory; a core file
// written on a crash (or on a SIGABRT, or by GOTRACEBACK=crash) would put
// them on disk, readable by whoever reads the dump directory.
//
// Protect sets two guards, because each covers what the other misses:
//   - RLIMIT_CORE 0, soft and hard: no core file, and the process cannot
//     raise the limit again. But a core_pattern that pipes to a handler
//     (systemd-coredump, apport) ignores this limit.
//   - PR_SET_DUMPABLE 0: no core at all, piped or not, and other
//     processes of the same user can no longer ptrace it or read its
//     /proc/PID/mem. Root still can; see docs/SECURITY.md.
package nodump

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Protect makes the calling process undumpable for the rest of its life.
// It is the first thing a daemon's main does, before any key is loaded.
func Protect() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("turning core dumps off (RLIMIT_CORE 0): %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("turning core dumps off (PR_SET_DUMPABLE 0): %w", err)
	}
	return nil
}
