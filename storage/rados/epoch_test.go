//go:build ceph

package rados_test

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/rados"
)

// epochOf reads the epoch xattr of object key of cfg's namespace as
// client.admin; "" when it has none.
func epochOf(t *testing.T, cfg rados.Config, key string) string {
	t.Helper()
	io, err := admin(t, cfg).OpenIOContext(cfg.Pool)
	require.NoError(t, err)
	defer io.Destroy()
	io.SetNamespace(cfg.Namespace)
	buf := make([]byte, 64)
	n, err := io.GetXattr(key, rados.EpochXattr, buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

func readBack(t *testing.T, b storage.Backend, key string, n int) string {
	t.Helper()
	c, err := b.OpenChunk(t.Context(), key, false)
	require.NoError(t, err)
	defer c.Close()
	p := make([]byte, n)
	_, err = c.ReadAt(p, 0)
	require.NoError(t, err)
	return string(p)
}

// Two clients (two hosts) on one chunk object: the writer of epoch 1 is
// refused, by the OSD, every write and zero once a writer of epoch 2
// wrote the object, and nothing of them lands; the same epoch again is
// allowed; an object without the xattr (written by an unguarded backend)
// is anyone's; the epoch compares as a number (9 < 10); an unguarded
// backend is unaffected. All of it holds for writes one at a time
// (synchronous) and for writes that come together (asynchronous, here
// forced).
func TestEpochGuard(t *testing.T) {
	t.Run("sync", func(t *testing.T) { testEpochGuard(t, false) })
	t.Run("async", func(t *testing.T) { testEpochGuard(t, true) })
}

func testEpochGuard(t *testing.T, async bool) {
	cfg := cluster(t)
	ctx := t.Context()
	hostA, hostB, tool := open(t, cfg), open(t, cfg), open(t, cfg)
	defer hostA.Close()
	defer hostB.Close()
	defer tool.Close()
	if async {
		for _, b := range []*rados.Backend{hostA, hostB, tool} {
			rados.AsyncWrites(b)
		}
	}
	const key = "disks/d/chunks/00000000"

	// Created and written by an unguarded backend: no xattr, which any
	// epoch passes.
	raw, err := tool.OpenChunk(ctx, key, true)
	require.NoError(t, err)
	defer raw.Close()
	_, err = raw.WriteAt([]byte("before"), 0)
	require.NoError(t, err)
	require.Empty(t, epochOf(t, cfg, key))

	a := hostA.WithEpoch(1, 0)
	ca, err := a.OpenChunk(ctx, key, false)
	require.NoError(t, err)
	defer ca.Close()
	assert.Empty(t, epochOf(t, cfg, key), "opening changes nothing")
	_, err = ca.WriteAt([]byte("epoch1"), 0)
	require.NoError(t, err)
	assert.Equal(t, "00000000000000000001", epochOf(t, cfg, key), "the first write stamps the object")

	// Host B takes over under epoch 2. Opening a chunk is no write: A
	// still writes until B's first write.
	cb, err := hostB.WithEpoch(2, 0).OpenChunk(ctx, key, true)
	require.NoError(t, err)
	defer cb.Close()
	_, err = ca.WriteAt([]byte("epoch1"), 0)
	require.NoError(t, err)
	_, err = cb.WriteAt([]byte("epoch2"), 0)
	require.NoError(t, err)
	assert.Equal(t, "00000000000000000002", epochOf(t, cfg, key))

	// A's chunk, opened before: its write and its zero are refused.
	_, err = ca.WriteAt([]byte("late!!"), 0)
	require.ErrorIs(t, err, rados.ErrStaleEpoch)
	require.ErrorIs(t, err, syscall.EIO)
	require.NotErrorIs(t, err, syscall.ECANCELED, "the guest sees EIO, never the compare's errno")
	assert.ErrorContains(t, err, "ownership epoch 2, this writer's is 1")
	assert.NotContains(t, err.Error(), "late!!")
	require.ErrorIs(t, ca.PunchHole(0, 6), rados.ErrStaleEpoch)
	assert.Equal(t, "epoch2", readBack(t, tool, key, 6), "nothing of the refused write or zero landed")
	// So is the first write of a chunk A opens again, which would stamp
	// it, and the newer epoch stays.
	ca2, err := a.OpenChunk(ctx, key, true)
	require.NoError(t, err)
	defer ca2.Close()
	_, err = ca2.WriteAt([]byte("late!!"), 0)
	require.ErrorIs(t, err, rados.ErrStaleEpoch)
	require.ErrorIs(t, ca2.PunchHole(0, 6), rados.ErrStaleEpoch)
	assert.Equal(t, "00000000000000000002", epochOf(t, cfg, key))
	assert.Equal(t, "epoch2", readBack(t, tool, key, 6))

	// The same epoch again (another client of the new owner) is allowed.
	cb2, err := hostA.WithEpoch(2, 0).OpenChunk(ctx, key, false)
	require.NoError(t, err)
	defer cb2.Close()
	_, err = cb2.WriteAt([]byte("again!"), 0)
	require.NoError(t, err)
	require.NoError(t, cb2.PunchHole(0, 3))
	_, err = cb.WriteAt([]byte("b"), 5)
	require.NoError(t, err)
	assert.Equal(t, "\x00\x00\x00inb", readBack(t, tool, key, 6))

	// Unguarded use is unaffected and leaves the xattr alone.
	_, err = raw.WriteAt([]byte("tool"), 0)
	require.NoError(t, err)
	require.NoError(t, raw.PunchHole(0, 1))
	assert.Equal(t, "\x00ool", readBack(t, tool, key, 4))
	assert.Equal(t, "00000000000000000002", epochOf(t, cfg, key))

	// A guarded writer creates a chunk stamped; a zero stamps as a write
	// does.
	const key2 = "disks/d/chunks/00000001"
	c9, err := hostA.WithEpoch(9, 0).OpenChunk(ctx, key2, true)
	require.NoError(t, err)
	defer c9.Close()
	assert.Equal(t, "00000000000000000009", epochOf(t, cfg, key2), "stamped by its creation")
	_, err = c9.WriteAt([]byte("nine"), 0)
	require.NoError(t, err)
	assert.Equal(t, "00000000000000000009", epochOf(t, cfg, key2))
	// 10 is newer than 9 (as numbers, not as strings).
	c10, err := hostB.WithEpoch(10, 0).OpenChunk(ctx, key2, false)
	require.NoError(t, err)
	defer c10.Close()
	require.NoError(t, c10.PunchHole(0, 1))
	assert.Equal(t, "00000000000000000010", epochOf(t, cfg, key2))
	_, err = c9.WriteAt([]byte("x"), 0)
	require.ErrorIs(t, err, rados.ErrStaleEpoch)
	assert.ErrorContains(t, err, "ownership epoch 10, this writer's is 9")
	_, err = c10.WriteAt([]byte("y"), 1)
	require.NoError(t, err)
	assert.Equal(t, "\x00yne", readBack(t, tool, key2, 4))

	// A guarded write does not bring back a chunk deleted while open.
	const key3 = "disks/d/chunks/00000002"
	c3, err := hostA.WithEpoch(11, 0).OpenChunk(ctx, key3, true)
	require.NoError(t, err)
	defer c3.Close()
	require.NoError(t, tool.Delete(ctx, key3))
	_, err = c3.WriteAt([]byte("z"), 0)
	require.ErrorIs(t, err, storage.ErrNotFound)
	_, err = tool.OpenChunk(ctx, key3, false)
	require.ErrorIs(t, err, storage.ErrNotFound)

	// Every write went the way asked.
	for _, b := range []*rados.Backend{hostA, hostB, tool} {
		syncs, asyncs := rados.WritePaths(b)
		if async {
			assert.Zero(t, syncs)
			assert.NotZero(t, asyncs)
		} else {
			assert.NotZero(t, syncs)
			assert.Zero(t, asyncs)
		}
	}

	// WithEpoch's backend leaves the connection open when closed.
	require.NoError(t, a.Close())
	_, err = hostA.List(ctx, "")
	require.NoError(t, err)
}

// A taker stamps every chunk of the disk at once (StampChunks): the older
// writer is refused on a chunk the taker never wrote; an object that
// carries a newer epoch already makes the stamp fail as stale.
func TestStampChunks(t *testing.T) {
	cfg := cluster(t)
	ctx := t.Context()
	hostA, hostB := open(t, cfg), open(t, cfg)
	defer hostA.Close()
	defer hostB.Close()
	stampChunks := func(be storage.Backend, prefix string) (int, error) {
		return be.(interface {
			StampChunks(ctx context.Context, prefix string) (int, error)
		}).StampChunks(ctx, prefix)
	}
	const prefix = "disks/s/chunks"
	keys := []string{prefix + "/00000000", prefix + "/00000001", prefix + "/00000002"}

	a := hostA.WithEpoch(4, 0)
	var chunks []storage.Chunk
	for _, k := range keys[:2] {
		c, err := a.OpenChunk(ctx, k, true)
		require.NoError(t, err)
		defer c.Close()
		_, err = c.WriteAt([]byte("a-"+k[len(k)-1:]), 0)
		require.NoError(t, err)
		chunks = append(chunks, c)
	}
	// A chunk created and never written: stamped by its creation.
	c3, err := a.OpenChunk(ctx, keys[2], true)
	require.NoError(t, err)
	defer c3.Close()
	require.Equal(t, "00000000000000000004", epochOf(t, cfg, keys[2]))

	b := hostB.WithEpoch(5, 0)
	n, err := stampChunks(b, prefix)
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	for _, k := range keys {
		assert.Equal(t, "00000000000000000005", epochOf(t, cfg, k))
	}
	// A is refused everywhere, and nothing of it lands.
	for i, c := range append(chunks, c3) {
		_, err := c.WriteAt([]byte("a-late"), 0)
		require.ErrorIs(t, err, rados.ErrStaleEpoch, keys[i])
		require.ErrorIs(t, err, syscall.EIO)
	}
	assert.Equal(t, "a-0", readBack(t, hostB, keys[0], 3))
	assert.Equal(t, "a-1", readBack(t, hostB, keys[1], 3))

	// A stamping after B is the stale one.
	_, err = stampChunks(a, prefix)
	require.ErrorIs(t, err, rados.ErrStaleEpoch)
	assert.Equal(t, "00000000000000000005", epochOf(t, cfg, keys[0]))

	// Nothing under the prefix: nothing to do.
	n, err = stampChunks(b, "disks/none/chunks")
	require.NoError(t, err)
	assert.Zero(t, n)
}

func stampChunks(t *testing.T, be storage.Backend, prefix string) int {
	t.Helper()
	n, err := be.(interface {
		StampChunks(ctx context.Context, prefix string) (int, error)
	}).StampChunks(t.Context(), prefix)
	require.NoError(t, err)
	return n
}

func exists(t *testing.T, b *rados.Backend, key string) bool {
	t.Helper()
	c, err := b.OpenChunk(t.Context(), key, false)
	if errors.Is(err, storage.ErrNotFound) {
		return false
	}
	require.NoError(t, err)
	c.Close()
	return true
}

// The epoch floor: host A writes a disk under epoch 1 and is taken over by
// B under epoch 2 without letting go, and nobody fences it. B stamps every
// chunk, then opens the disk with the floor at 2. A chunk object A creates
// after that (a region never written before) is never read by B: opened
// absent, it is removed and reported absent; opened to be created (the
// engine found it absent before), it is removed and created again,
// stamped, and A is refused on it. A chunk of a clean previous owner
// (epoch below the writer's, not below the floor) and one written by an
// unguarded backend are the disk's and kept; the second is stamped at its
// opening, so A cannot write into it later. A later taker's stamping
// removes what lies below the floor instead of stamping it.
func TestEpochFloor(t *testing.T) {
	cfg := cluster(t)
	ctx := t.Context()
	hostA, hostB, tool := open(t, cfg), open(t, cfg), open(t, cfg)
	defer hostA.Close()
	defer hostB.Close()
	defer tool.Close()
	const prefix = "disks/f/chunks"
	k := func(i int) string { return fmt.Sprintf("%s/%08x", prefix, i) }
	write := func(c storage.Chunk, s string) error {
		_, err := c.WriteAt([]byte(s), 0)
		return err
	}
	openOK := func(b storage.Backend, key string, create bool) storage.Chunk {
		c, err := b.OpenChunk(ctx, key, create)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	read := func(c storage.Chunk, n int) string {
		p := make([]byte, n)
		_, err := c.ReadAt(p, 0)
		require.NoError(t, err)
		return string(p)
	}

	a := hostA.WithEpoch(1, 0)
	require.NoError(t, write(openOK(a, k(0), true), "a-before"))

	// B takes over: stamps under the floor before (none), then opens the
	// disk with the floor at its epoch.
	assert.Equal(t, 1, stampChunks(t, hostB.WithEpoch(2, 0), prefix))
	b := hostB.WithEpoch(2, 2)
	assert.Equal(t, "a-before", read(openOK(b, k(0), false), 8), "a chunk from before the takeover is the disk's")

	// A creates chunk 1 after the takeover and writes it.
	ca1 := openOK(a, k(1), true)
	require.NoError(t, write(ca1, "a-late-1"))
	_, err := b.OpenChunk(ctx, k(1), false)
	require.ErrorIs(t, err, storage.ErrNotFound, "below the floor: as if absent")
	assert.False(t, exists(t, tool, k(1)), "and removed")
	require.ErrorIs(t, write(ca1, "a-late-2"), storage.ErrNotFound, "A's next write does not bring it back")
	assert.False(t, exists(t, tool, k(1)))

	// B finds chunk 2 absent; A creates it; B creates it (EEXIST).
	_, err = b.OpenChunk(ctx, k(2), false)
	require.ErrorIs(t, err, storage.ErrNotFound)
	ca2 := openOK(a, k(2), true)
	require.NoError(t, write(ca2, "a-late-3"))
	cb2 := openOK(b, k(2), true)
	assert.Equal(t, "\x00\x00\x00\x00\x00\x00\x00\x00", read(cb2, 8), "none of A's bytes")
	assert.Equal(t, "00000000000000000002", epochOf(t, cfg, k(2)), "created again, stamped")
	require.ErrorIs(t, write(ca2, "a-late-4"), rados.ErrStaleEpoch)
	require.NoError(t, write(cb2, "b-epoch2"))
	assert.Equal(t, "b-epoch2", readBack(t, tool, k(2), 8))

	// A chunk A created before B opened the disk but after the stamping
	// (epoch 1 still) is removed at B's opening too, and a chunk object
	// that A's older version created unstamped and then wrote (its first
	// write stamps it) is the same case.
	ca3, err := hostA.OpenChunk(ctx, k(3), true) // unstamped, as the previous version created
	require.NoError(t, err)
	defer ca3.Close()
	ca3g := openOK(a, k(3), false)
	require.NoError(t, write(ca3g, "a-late-5"))
	assert.Equal(t, "00000000000000000001", epochOf(t, cfg, k(3)))
	_, err = b.OpenChunk(ctx, k(3), false)
	require.ErrorIs(t, err, storage.ErrNotFound)

	// B lets the disk go; C owns it under epoch 3, the floor still 2: B's
	// chunk (epoch 2) is kept. A chunk an unguarded backend wrote (an
	// operation on the stopped disk) is kept too, and stamped with C's
	// epoch at its opening: A and B are refused on it from then on.
	raw := openOK(tool, k(4), true)
	require.NoError(t, write(raw, "tool-wrt"))
	ca4 := openOK(a, k(4), false) // before C: the object has no epoch
	c := hostA.WithEpoch(3, 2)
	assert.Equal(t, "b-epoch2", read(openOK(c, k(2), false), 8), "a clean previous owner's chunk is the disk's")
	assert.Equal(t, "00000000000000000002", epochOf(t, cfg, k(2)), "and left as it is")
	cc4 := openOK(c, k(4), false)
	assert.Equal(t, "00000000000000000003", epochOf(t, cfg, k(4)))
	require.ErrorIs(t, write(ca4, "a-late-6"), rados.ErrStaleEpoch)
	assert.Equal(t, "tool-wrt", read(cc4, 8))

	// D takes the disk from C without a release: its stamping (floor 2
	// before it) removes a chunk A created meanwhile instead of making it
	// the disk's, and stamps the others, the one an unguarded backend
	// wrote too.
	ca5 := openOK(a, k(5), true)
	require.NoError(t, write(ca5, "a-late-7"))
	require.NoError(t, write(openOK(tool, k(6), true), "tool-6"))
	assert.Equal(t, 4, stampChunks(t, hostB.WithEpoch(4, 2), prefix), "chunks 0, 2, 4, 6")
	assert.False(t, exists(t, tool, k(5)))
	for _, i := range []int{0, 2, 4, 6} {
		assert.Equal(t, "00000000000000000004", epochOf(t, cfg, k(i)), i)
	}

	// A stamping under a floor that finds a newer epoch is the stale one.
	_, err = hostA.WithEpoch(3, 2).(interface {
		StampChunks(ctx context.Context, prefix string) (int, error)
	}).StampChunks(ctx, prefix)
	require.ErrorIs(t, err, rados.ErrStaleEpoch)
	assert.Equal(t, "00000000000000000004", epochOf(t, cfg, k(0)))

	// An epoch xattr edited into something else is an error that says so.
	io, err := admin(t, cfg).OpenIOContext(cfg.Pool)
	require.NoError(t, err)
	defer io.Destroy()
	io.SetNamespace(cfg.Namespace)
	require.NoError(t, io.SetXattr(k(6), rados.EpochXattr, []byte("junk")))
	_, err = hostB.WithEpoch(4, 4).OpenChunk(ctx, k(6), false)
	require.ErrorContains(t, err, "is not an ownership epoch")
	assert.True(t, exists(t, tool, k(6)), "and nothing removed")

	// A floor above the epoch is refused outright.
	require.Panics(t, func() { hostA.WithEpoch(3, 4) })
}
