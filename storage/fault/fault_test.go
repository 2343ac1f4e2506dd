package fault_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/fault"
	"hostcrypt/storage/local"
	"hostcrypt/storage/storagetest"
)

func newLocal(t *testing.T) *local.Backend {
	b, err := local.Open(filepath.Join(t.TempDir(), "store"))
	require.NoError(t, err)
	return b
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend { return fault.New(newLocal(t), 1) }, storagetest.Options{
		Reopen: func(t *testing.T, b storage.Backend) storage.Backend {
			inner, err := local.Open(b.(*fault.Backend).Unwrap().(*local.Backend).Dir())
			require.NoError(t, err)
			return fault.New(inner, 1)
		},
		Foreign: func(t *testing.T, b storage.Backend, key string) {
			p := filepath.Join(b.(*fault.Backend).Unwrap().(*local.Backend).Dir(), filepath.FromSlash(key))
			require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
			require.NoError(t, os.Symlink("/", p))
		},
	})
}

// TestConformanceWithRulesElsewhere: rules armed for other objects change
// nothing for the rest.
func TestConformanceWithRulesElsewhere(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b := fault.New(newLocal(t), 1)
		b.Arm(fault.Rule{Ops: fault.All, Prefix: "elsewhere", Err: syscall.EIO})
		b.Arm(fault.Rule{Ops: fault.Data, Prefix: "a/elsewhere", Err: syscall.ENOSPC, Probability: 0.5})
		return b
	})
}

// calls makes one call of each Op on b, on an object that exists.
func calls(t *testing.T, b *fault.Backend) map[fault.Op]func() error {
	ctx := t.Context()
	require.NoError(t, b.Unwrap().WriteMeta(ctx, "d/meta", []byte("m")))
	inner, err := b.Unwrap().OpenChunk(ctx, "d/chunk", true)
	require.NoError(t, err)
	_, err = inner.WriteAt(make([]byte, 8192), 0)
	require.NoError(t, err)
	require.NoError(t, inner.Close())
	c, err := b.OpenChunk(ctx, "d/chunk", false)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return map[fault.Op]func() error{
		fault.OpenChunk: func() error {
			c, err := b.OpenChunk(ctx, "d/chunk", true)
			if err == nil {
				c.Close()
			}
			return err
		},
		fault.ReadMeta:  func() error { _, err := b.ReadMeta(ctx, "d/meta"); return err },
		fault.WriteMeta: func() error { return b.WriteMeta(ctx, "d/meta", []byte("m")) },
		fault.Delete: func() error {
			require.NoError(t, b.Unwrap().WriteMeta(ctx, "d/gone", nil))
			return b.Delete(ctx, "d/gone")
		},
		fault.List:      func() error { _, err := b.List(ctx, "d"); return err },
		fault.Usage:     func() error { _, err := b.Usage(ctx, "d"); return err },
		fault.ReadAt:    func() error { _, err := c.ReadAt(make([]byte, 512), 0); return err },
		fault.WriteAt:   func() error { _, err := c.WriteAt(make([]byte, 512), 0); return err },
		fault.PunchHole: func() error { return c.PunchHole(0, 4096) },
		fault.Sync:      c.Sync,
	}
}

func TestEveryOp(t *testing.T) {
	b := fault.New(newLocal(t), 1)
	all := calls(t, b)
	require.Len(t, all, 10)
	for op, call := range all {
		f := b.Arm(fault.Rule{Ops: op, Err: syscall.EIO})
		for other, call := range all {
			err := call()
			if other != op {
				require.NoError(t, err, "%v while %v is armed", other, op)
				continue
			}
			require.ErrorIs(t, err, syscall.EIO, "%v", op)
			require.ErrorIs(t, err, fault.ErrInjected, "%v", op)
			var fe *fault.Error
			require.True(t, errors.As(err, &fe))
			require.Equal(t, op, fe.Op)
			require.Contains(t, fe.Key, "d")
			require.Contains(t, err.Error(), fe.Key)
		}
		require.Equal(t, 1, f.Injected())
		f.Disarm()
		require.True(t, f.Spent())
		require.NoError(t, call(), "%v after Disarm", op)
	}
}

func TestAfterAndTimes(t *testing.T) {
	b := fault.New(newLocal(t), 1)
	write := calls(t, b)[fault.WriteAt]
	f := b.Arm(fault.Rule{Ops: fault.WriteAt | fault.Sync, Err: syscall.ENOSPC, After: 2, Times: 2})
	var got []bool
	for range 6 {
		got = append(got, errors.Is(write(), syscall.ENOSPC))
	}
	require.Equal(t, []bool{false, false, true, true, false, false}, got)
	require.Equal(t, 2, f.Injected())
	require.True(t, f.Spent(), "a rule disarms itself after Times faults")
}

func TestFirstRuleDecides(t *testing.T) {
	b := fault.New(newLocal(t), 1)
	read := calls(t, b)[fault.ReadMeta]
	first := b.Arm(fault.Rule{Ops: fault.ReadMeta, Err: syscall.EIO, Times: 1})
	second := b.Arm(fault.Rule{Ops: fault.All, Err: syscall.ENOSPC, After: 1, Times: 1})
	require.ErrorIs(t, read(), syscall.EIO) // first faults; second counts it
	require.ErrorIs(t, read(), syscall.ENOSPC)
	require.NoError(t, read())
	require.Equal(t, 1, first.Injected())
	require.Equal(t, 1, second.Injected())
}

func TestPrefix(t *testing.T) {
	b := fault.New(newLocal(t), 1)
	ctx := t.Context()
	b.Arm(fault.Rule{Ops: fault.WriteMeta, Prefix: "disks/d1", Err: syscall.EIO})
	for key, fails := range map[string]bool{
		"disks/d1": true, "disks/d1/meta": true, "disks/d1/chunks/0": true,
		"disks/d10/meta": false, "disks/d1-x": false, "disks/meta": false,
	} {
		err := b.WriteMeta(ctx, key, nil)
		if fails {
			require.ErrorIs(t, err, syscall.EIO, key)
		} else {
			require.NoError(t, err, key)
		}
	}
}

// TestProbabilityIsSeeded: one seed, one sequence of faults; the share of
// faulted calls follows the probability.
func TestProbabilityIsSeeded(t *testing.T) {
	run := func(seed uint64) []bool {
		b := fault.New(newLocal(t), seed)
		read := calls(t, b)[fault.ReadAt]
		b.Arm(fault.Rule{Ops: fault.ReadAt, Err: syscall.EIO, Probability: 0.3})
		var got []bool
		for range 400 {
			got = append(got, read() != nil)
		}
		return got
	}
	a, again, other := run(7), run(7), run(8)
	require.Equal(t, a, again, "the same seed faults the same calls")
	require.NotEqual(t, a, other, "another seed, other calls")
	n := 0
	for _, f := range a {
		if f {
			n++
		}
	}
	require.InDelta(t, 120, n, 40, "about 30 %% of 400 calls")
}

func TestDelay(t *testing.T) {
	const d = 20 * time.Millisecond
	b := fault.New(newLocal(t), 1)
	all := calls(t, b)
	f := b.Arm(fault.Rule{Ops: fault.ReadMeta | fault.Sync, Delay: d})
	for _, op := range []fault.Op{fault.ReadMeta, fault.Sync} {
		start := time.Now()
		require.NoError(t, all[op](), "a delay alone lets the call run")
		require.GreaterOrEqual(t, time.Since(start), d, "%v", op)
	}
	require.Equal(t, 2, f.Injected())
	f.Disarm()

	// A stalled store: a Backend call gives up with its context.
	b.Arm(fault.Rule{Ops: fault.ReadMeta, Delay: time.Hour, Err: syscall.EIO})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	_, err := b.ReadMeta(ctx, "d/meta")
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestFull(t *testing.T) {
	b := fault.New(newLocal(t), 1)
	ctx := t.Context()
	c, err := b.OpenChunk(ctx, "d/chunk", true)
	require.NoError(t, err)
	defer c.Close()
	data := bytes.Repeat([]byte{0x5A}, 1<<20)
	_, err = c.WriteAt(data, 0)
	require.NoError(t, err)
	require.NoError(t, c.Sync())
	require.NoError(t, b.WriteMeta(ctx, "d/meta", []byte("old")))

	b.SetFull(true)
	require.True(t, b.Full())
	// What needs new space fails...
	_, err = c.WriteAt([]byte("x"), 8<<20) // a hole
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.ErrorIs(t, err, fault.ErrInjected)
	_, err = c.WriteAt(make([]byte, 8192), 1<<20-4096) // crosses the end
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.ErrorIs(t, b.WriteMeta(ctx, "d/meta", []byte("new")), syscall.ENOSPC)
	_, err = b.OpenChunk(ctx, "d/new", true)
	require.ErrorIs(t, err, syscall.ENOSPC)
	keys, err := b.List(ctx, "d")
	require.NoError(t, err)
	require.Equal(t, []string{"d/chunk", "d/meta"}, keys, "a full store creates nothing")

	// ... what does not, works.
	over := bytes.Repeat([]byte{0xA5}, 64<<10)
	_, err = c.WriteAt(over, 4096)
	require.NoError(t, err, "overwriting allocated bytes")
	require.NoError(t, c.Sync())
	got := make([]byte, len(over))
	_, err = c.ReadAt(got, 4096)
	require.NoError(t, err)
	require.Equal(t, over, got)
	c2, err := b.OpenChunk(ctx, "d/chunk", true)
	require.NoError(t, err, "opening an existing chunk")
	require.NoError(t, c2.Close())
	meta, err := b.ReadMeta(ctx, "d/meta")
	require.NoError(t, err)
	require.Equal(t, "old", string(meta))
	require.NoError(t, c.PunchHole(512<<10, 256<<10))
	_, err = c.WriteAt([]byte("x"), 512<<10+4096)
	require.ErrorIs(t, err, syscall.ENOSPC, "a punched range is a hole again")
	require.NoError(t, b.Delete(ctx, "d/meta"))

	b.SetFull(false)
	_, err = c.WriteAt([]byte("x"), 8<<20)
	require.NoError(t, err)
	require.NoError(t, b.WriteMeta(ctx, "d/meta", []byte("new")))
}

// hidden hides what a local chunk can tell about its space.
type hidden struct{ storage.Backend }

func (h hidden) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := h.Backend.OpenChunk(ctx, key, create)
	return struct{ storage.Chunk }{c}, err
}

// TestFullWithoutSpaceInfo: over a backend that cannot tell which ranges
// have space, a full store refuses every write.
func TestFullWithoutSpaceInfo(t *testing.T) {
	b := fault.New(hidden{newLocal(t)}, 1)
	c, err := b.OpenChunk(t.Context(), "c", true)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.WriteAt(make([]byte, 8192), 0)
	require.NoError(t, err)
	b.SetFull(true)
	_, err = c.WriteAt([]byte("x"), 0)
	require.ErrorIs(t, err, syscall.ENOSPC)
}

func TestArmRefusesUselessRules(t *testing.T) {
	b := fault.New(newLocal(t), 1)
	for _, r := range []fault.Rule{
		{Err: syscall.EIO},
		{Ops: fault.Sync},
		{Ops: fault.Sync, Err: syscall.EIO, After: -1},
		{Ops: fault.Sync, Err: syscall.EIO, Probability: 1.5},
		{Ops: 1 << 20, Err: syscall.EIO},
	} {
		require.Panics(t, func() { b.Arm(r) }, "%+v", r)
	}
	require.Equal(t, "WriteAt|Sync", (fault.WriteAt | fault.Sync).String())
}

// TestArmWhileBusy arms and disarms rules while calls are in flight.
func TestArmWhileBusy(t *testing.T) {
	b := fault.New(newLocal(t), 1)
	c, err := b.OpenChunk(t.Context(), "c", true)
	require.NoError(t, err)
	defer c.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var faulted, passed int64
	var mu sync.Mutex
	for w := range 4 {
		wg.Go(func() {
			p := make([]byte, 4096)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := c.WriteAt(p, int64(w*64+i%64)*4096)
				mu.Lock()
				if err != nil {
					assert.ErrorIs(t, err, fault.ErrInjected)
					faulted++
				} else {
					passed++
				}
				mu.Unlock()
			}
		})
	}
	for range 200 {
		f := b.Arm(fault.Rule{Ops: fault.WriteAt, Err: syscall.EIO, Times: 3})
		time.Sleep(50 * time.Microsecond)
		if time.Now().UnixNano()%2 == 0 {
			f.Disarm()
		} else {
			b.DisarmAll()
		}
	}
	close(stop)
	wg.Wait()
	require.Positive(t, passed)
	t.Logf("%d writes faulted, %d passed", faulted, passed)
}
