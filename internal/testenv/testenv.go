// Package testenv holds what tests of several packages share: the one rule
// every test that needs the machine follows — a test that cannot run here
// (no FUSE, not root) is skipped on a developer's machine and fails in CI
// (the environment variable CI is set), where every test must run — and
// small helpers every such package would otherwise write again: a log
// buffer safe for concurrent use, and a clock a test moves.
package testenv

import (
	"bytes"
	"os"
	"sync"
	"testing"
	"time"
)

// InCI tells whether the tests run in CI.
func InCI() bool { return os.Getenv("CI") != "" }

// unavailable skips t, or fails it in CI, for why.
func unavailable(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s; in CI every test must run", why)
	}
	t.Skip(why)
}

// RequireFUSE is for a test that mounts: it needs /dev/fuse.
func RequireFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		unavailable(t, "no /dev/fuse on this machine")
	}
}

// RequireRoot is for a test that needs root (loop devices, mount(2), the
// daemon's own mount).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, "needs root")
	}
}

// RequireDaemonMount is for a test that runs hostcryptd, in-process or not:
// FUSE, as root.
func RequireDaemonMount(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	RequireFUSE(t)
}

// Buffer is a bytes.Buffer safe for concurrent use: the sink of a logger
// that a test reads while a server or daemon writes.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Bytes returns a copy of what was written so far.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}

// Clock is a clock a test sets and moves; its Now is safe for concurrent
// use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
