// Package fault is a storage.Backend decorator that fails or delays chosen
// calls when a test says so: I/O errors, a full file system, a slow or
// stalled device. It is for tests of what the layers above do then: the
// disk engine, the host cache, the control plane, a daemon under load.
//
// Nothing is injected until a test arms a Rule or makes the store full;
// until then every call passes straight through, at the cost of one atomic
// load, and the decorator passes storagetest.Run. Rules are armed and
// disarmed at any time, from any goroutine, while calls are in flight.
//
//	fb := fault.New(inner, 1)
//	f := fb.Arm(fault.Rule{Ops: fault.Sync, Err: syscall.EIO, After: 3, Times: 1})
//	// ... the fourth Sync of any chunk fails with EIO, every other passes
//	f.Injected() // 1
//	fb.SetFull(true)
//	// ... every write that needs new space fails with ENOSPC
//
// An injected error wraps the given errno, so errors.Is(err, syscall.EIO)
// holds as it would for a real one, and also ErrInjected, so that a test
// can tell the two apart.
package fault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"hostcrypt/storage"
)

// Op is a set of the calls a Rule applies to.
type Op uint32

// The calls that can be failed or delayed. Close is never: a test has no
// use for a close that fails, and a leak would follow. ReadMetaVersion is a
// ReadMeta and WriteMetaIf a WriteMeta to the rules.
const (
	OpenChunk Op = 1 << iota
	ReadMeta
	WriteMeta
	Delete
	List
	Usage
	ReadAt
	WriteAt
	PunchHole
	Sync

	// Data is every call on an open chunk.
	Data = ReadAt | WriteAt | PunchHole | Sync
	// All is every call.
	All = OpenChunk | ReadMeta | WriteMeta | Delete | List | Usage | Data
)

var opNames = []string{"OpenChunk", "ReadMeta", "WriteMeta", "Delete", "List", "Usage", "ReadAt", "WriteAt", "PunchHole", "Sync"}

// String names the calls in o, joined by '|'.
func (o Op) String() string {
	var names []string
	for i, n := range opNames {
		if o&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	if rest := o &^ All; rest != 0 {
		names = append(names, fmt.Sprintf("Op(%#x)", uint32(rest)))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "|")
}

// ErrInjected is wrapped by every error the decorator makes up.
var ErrInjected = errors.New("injected fault")

// Error is an injected failure of one call.
type Error struct {
	Op  Op
	Key string // the object's key; the prefix for List and Usage
	Err error  // what was injected, e.g. syscall.EIO
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %v (injected fault)", e.Op, e.Key, e.Err)
}

// Unwrap returns the injected error.
func (e *Error) Unwrap() error { return e.Err }

// Is makes every Error match ErrInjected.
func (e *Error) Is(target error) bool { return target == ErrInjected }

// Rule says which calls to fail or delay, and how.
type Rule struct {
	// Ops are the calls the rule applies to; at least one.
	Ops Op
	// Prefix restricts the rule to the object Prefix and the objects
	// under it ("disks/d1" matches "disks/d1/meta"); "" matches every
	// object. For List and Usage it is matched against their prefix.
	Prefix string
	// Err is what a faulted call returns, e.g. syscall.EIO or
	// syscall.ENOSPC. Nil delays the call and lets it run.
	Err error
	// Delay is slept before a faulted call, whether it then fails or not;
	// a Backend method's context cuts it short, a chunk call's cannot.
	Delay time.Duration
	// After lets this many matching calls through before the rule starts.
	After int
	// Times is how many calls the rule faults before it is spent and
	// disarms itself; 0 means no limit.
	Times int
	// Probability, if between 0 and 1, faults each matching call (after
	// After) with that chance, drawn from the Backend's seeded source; 0
	// and 1 fault every one.
	Probability float64
}

// Fault is an armed Rule.
type Fault struct {
	b        *Backend
	r        Rule
	seen     int // matching calls, under b.mu
	injected atomic.Int64
	spent    atomic.Bool
}

// Injected returns how many calls the rule has faulted so far.
func (f *Fault) Injected() int { return int(f.injected.Load()) }

// Spent tells whether the rule has faulted Times calls, or was disarmed.
func (f *Fault) Spent() bool { return f.spent.Load() }

// Disarm removes the rule; calls already faulted stay so.
func (f *Fault) Disarm() { f.b.remove(f) }

// Backend is the decorator. It is safe for concurrent use.
type Backend struct {
	inner storage.Backend
	// rules is the armed rules in arming order, replaced whole on every
	// change, so the path without rules takes no lock.
	rules atomic.Pointer[[]*Fault]
	full  atomic.Bool
	mu    sync.Mutex // counts and draws of the rules
	rnd   *rand.Rand
}

var _ storage.Backend = (*Backend)(nil)

// New wraps inner. seed seeds the source of Rule.Probability, so that a
// run can be repeated. Close closes inner.
func New(inner storage.Backend, seed uint64) *Backend {
	return &Backend{inner: inner, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Unwrap returns the wrapped backend.
func (b *Backend) Unwrap() storage.Backend { return b.inner }

// Arm adds r after the rules already armed. A call goes through the armed
// rules in the order they were armed: each rule it matches counts it
// towards After, and the first that faults it decides its delay and error.
// Arm panics on a rule that could never do anything (no Ops, neither Err
// nor Delay) or has a field out of range: that is a mistake in the test.
func (b *Backend) Arm(r Rule) *Fault {
	switch {
	case r.Ops&All == 0 || r.Ops&^All != 0:
		panic(fmt.Sprintf("fault: rule with Ops %v", r.Ops))
	case r.Err == nil && r.Delay <= 0:
		panic("fault: rule with neither Err nor Delay")
	case r.Delay < 0 || r.After < 0 || r.Times < 0 || r.Probability < 0 || r.Probability > 1:
		panic(fmt.Sprintf("fault: rule with a negative or out-of-range field: %+v", r))
	}
	f := &Fault{b: b, r: r}
	b.mu.Lock()
	defer b.mu.Unlock()
	var rules []*Fault
	if p := b.rules.Load(); p != nil {
		rules = append(rules, *p...)
	}
	rules = append(rules, f)
	b.rules.Store(&rules)
	return f
}

// DisarmAll removes every rule. It does not change the full state.
func (b *Backend) DisarmAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p := b.rules.Load(); p != nil {
		for _, f := range *p {
			f.spent.Store(true)
		}
	}
	b.rules.Store(nil)
}

func (b *Backend) remove(f *Fault) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.removeLocked(f)
}

func (b *Backend) removeLocked(f *Fault) {
	f.spent.Store(true)
	p := b.rules.Load()
	if p == nil {
		return
	}
	var rules []*Fault
	for _, g := range *p {
		if g != f {
			rules = append(rules, g)
		}
	}
	if len(rules) == 0 {
		b.rules.Store(nil)
		return
	}
	b.rules.Store(&rules)
}

// SetFull makes the store full, or no longer full. While it is full, what
// needs new space fails with ENOSPC (wrapping ErrInjected), as on a full
// file system: WriteMeta; OpenChunk creating a missing chunk; and a WriteAt
// unless the chunk below can tell that the whole range already has backing
// space, which a local chunk can (see storage/local) and others are
// assumed not to. Overwriting allocated bytes, reading, punching holes,
// syncing and deleting go on working.
func (b *Backend) SetFull(full bool) { b.full.Store(full) }

// Full tells whether the store is full.
func (b *Backend) Full() bool { return b.full.Load() }

// decide runs the rules for a call of op on key and returns the delay and
// the error it gets.
func (b *Backend) decide(op Op, key string) (time.Duration, error) {
	p := b.rules.Load()
	if p == nil {
		return 0, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var (
		decided bool
		delay   time.Duration
		err     error
	)
	for _, f := range *p {
		r := &f.r
		if r.Ops&op == 0 || f.spent.Load() || !under(key, r.Prefix) {
			continue
		}
		f.seen++
		if decided || f.seen <= r.After {
			continue
		}
		if r.Probability > 0 && r.Probability < 1 && b.rnd.Float64() >= r.Probability {
			continue
		}
		if n := f.injected.Add(1); r.Times > 0 && n >= int64(r.Times) {
			b.removeLocked(f)
		}
		decided, delay = true, r.Delay
		if r.Err != nil {
			err = &Error{Op: op, Key: key, Err: r.Err}
		}
	}
	return delay, err
}

func under(key, prefix string) bool {
	return prefix == "" || key == prefix || strings.HasPrefix(key, prefix) && key[len(prefix)] == '/'
}

// enter applies the rules to a Backend method, cutting a delay short when
// ctx ends.
func (b *Backend) enter(ctx context.Context, op Op, key string) error {
	d, err := b.decide(op, key)
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func full(op Op, key string) error {
	return &Error{Op: op, Key: key, Err: syscall.ENOSPC}
}

// OpenChunk opens the chunk in the backend below. While the store is full
// it creates nothing: a missing chunk opened with create is ENOSPC.
func (b *Backend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	if err := b.enter(ctx, OpenChunk, key); err != nil {
		return nil, err
	}
	c, err := b.inner.OpenChunk(ctx, key, create && !b.full.Load())
	if errors.Is(err, storage.ErrNotFound) && create {
		return nil, full(OpenChunk, key)
	}
	if err != nil {
		return nil, err
	}
	return &chunk{b: b, c: c, key: key}, nil
}

func (b *Backend) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	if err := b.enter(ctx, ReadMeta, key); err != nil {
		return nil, err
	}
	return b.inner.ReadMeta(ctx, key)
}

func (b *Backend) WriteMeta(ctx context.Context, key string, data []byte) error {
	if err := b.enter(ctx, WriteMeta, key); err != nil {
		return err
	}
	if b.full.Load() {
		// A new value is a new file: it needs space whatever its size.
		// An invalid key is still that error first, as the contract wants.
		if err := storage.ValidKey(key); err != nil {
			return b.inner.WriteMeta(ctx, key, data)
		}
		return full(WriteMeta, key)
	}
	return b.inner.WriteMeta(ctx, key, data)
}

// ReadMetaVersion is a ReadMeta to the rules.
func (b *Backend) ReadMetaVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	if err := b.enter(ctx, ReadMeta, key); err != nil {
		return nil, storage.NoVersion, err
	}
	return b.inner.ReadMetaVersion(ctx, key)
}

// WriteMetaIf is a WriteMeta to the rules and to a full store.
func (b *Backend) WriteMetaIf(ctx context.Context, key string, data []byte, ifVersion storage.Version) (storage.Version, error) {
	if err := b.enter(ctx, WriteMeta, key); err != nil {
		return storage.NoVersion, err
	}
	if b.full.Load() && storage.ValidKey(key) == nil {
		return storage.NoVersion, full(WriteMeta, key)
	}
	return b.inner.WriteMetaIf(ctx, key, data, ifVersion)
}

func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.enter(ctx, Delete, key); err != nil {
		return err
	}
	return b.inner.Delete(ctx, key)
}

func (b *Backend) List(ctx context.Context, prefix string) ([]string, error) {
	if err := b.enter(ctx, List, prefix); err != nil {
		return nil, err
	}
	return b.inner.List(ctx, prefix)
}

func (b *Backend) Usage(ctx context.Context, prefix string) (int64, error) {
	if err := b.enter(ctx, Usage, prefix); err != nil {
		return 0, err
	}
	return b.inner.Usage(ctx, prefix)
}

// Close closes the backend below; it is never faulted.
func (b *Backend) Close() error { return b.inner.Close() }

// allocator is what a chunk below may tell about its backing space: whether
// every byte of [off, off+n) has some, so that writing there needs none.
type allocator interface {
	Allocated(off, n int64) (bool, error)
}

type chunk struct {
	b   *Backend
	c   storage.Chunk
	key string
}

// fault applies the rules to a chunk call, sleeping any delay.
func (c *chunk) fault(op Op) error {
	d, err := c.b.decide(op, c.key)
	if d > 0 {
		time.Sleep(d)
	}
	return err
}

func (c *chunk) ReadAt(p []byte, off int64) (int, error) {
	if err := c.fault(ReadAt); err != nil {
		return 0, err
	}
	return c.c.ReadAt(p, off)
}

func (c *chunk) WriteAt(p []byte, off int64) (int, error) {
	if err := c.fault(WriteAt); err != nil {
		return 0, err
	}
	if c.b.full.Load() && len(p) > 0 && off >= 0 {
		a, ok := c.c.(allocator)
		allocated := false
		if ok {
			var err error
			if allocated, err = a.Allocated(off, int64(len(p))); err != nil {
				return 0, err
			}
		}
		if !allocated {
			return 0, full(WriteAt, c.key)
		}
	}
	return c.c.WriteAt(p, off)
}

// Prefetch passes the hint down; it is not a call a rule applies to.
func (c *chunk) Prefetch(off, n int64) bool { return storage.Prefetch(c.c, off, n) }

func (c *chunk) PunchHole(off, n int64) error {
	if err := c.fault(PunchHole); err != nil {
		return err
	}
	return c.c.PunchHole(off, n)
}

func (c *chunk) Sync() error {
	if err := c.fault(Sync); err != nil {
		return err
	}
	return c.c.Sync()
}

// Close closes the chunk below; it is never faulted.
func (c *chunk) Close() error { return c.c.Close() }
