//go:build ceph

package rados_test

import (
	"context"
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

	a := hostA.WithEpoch(1)
	ca, err := a.OpenChunk(ctx, key, false)
	require.NoError(t, err)
	defer ca.Close()
	assert.Empty(t, epochOf(t, cfg, key), "opening changes nothing")
	_, err = ca.WriteAt([]byte("epoch1"), 0)
	require.NoError(t, err)
	assert.Equal(t, "00000000000000000001", epochOf(t, cfg, key), "the first write stamps the object")

	// Host B takes over under epoch 2. Opening a chunk is no write: A
	// still writes until B's first write.
	cb, err := hostB.WithEpoch(2).OpenChunk(ctx, key, true)
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
	cb2, err := hostA.WithEpoch(2).OpenChunk(ctx, key, false)
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

	// A zero stamps as a write does; on a chunk that a guarded writer
	// created, the first write stamps it.
	const key2 = "disks/d/chunks/00000001"
	c9, err := hostA.WithEpoch(9).OpenChunk(ctx, key2, true)
	require.NoError(t, err)
	defer c9.Close()
	_, err = c9.WriteAt([]byte("nine"), 0)
	require.NoError(t, err)
	assert.Equal(t, "00000000000000000009", epochOf(t, cfg, key2))
	// 10 is newer than 9 (as numbers, not as strings).
	c10, err := hostB.WithEpoch(10).OpenChunk(ctx, key2, false)
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
	c3, err := hostA.WithEpoch(11).OpenChunk(ctx, key3, true)
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

	a := hostA.WithEpoch(4)
	var chunks []storage.Chunk
	for _, k := range keys[:2] {
		c, err := a.OpenChunk(ctx, k, true)
		require.NoError(t, err)
		defer c.Close()
		_, err = c.WriteAt([]byte("a-"+k[len(k)-1:]), 0)
		require.NoError(t, err)
		chunks = append(chunks, c)
	}
	// A chunk created and never written: no stamp yet.
	c3, err := a.OpenChunk(ctx, keys[2], true)
	require.NoError(t, err)
	defer c3.Close()
	require.Empty(t, epochOf(t, cfg, keys[2]))

	b := hostB.WithEpoch(5)
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
