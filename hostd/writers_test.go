//go:build ceph

package hostd

import (
	"context"
	"syscall"
	"testing"
	"time"

	goceph "github.com/ceph/go-ceph/rados"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/cluster"
	"hostcrypt/control"
	"hostcrypt/internal/testenv"
	"hostcrypt/storage"
	"hostcrypt/storage/rados"
)

// noFence is a client whose fencing does not happen: Blocklist succeeds
// and fences nobody.
type noFence struct{ cluster.Fencer }

func (noFence) Blocklist(context.Context, string, time.Duration) error { return nil }

// A disk's writer of an older ownership epoch whose client nobody fenced
// gets EIO on its next chunk write once another host's writer took the
// disk, and nothing of that write lands: after a clean release (whose
// client the next owner rightly does not fence), after a takeover whose
// fence did not happen, and when a host cache writes back. The lease is long, so that the old writer's own
// lease check passes throughout and only the store refuses.
func TestOlderEpochWriterOnRADOS(t *testing.T) {
	loc := testenv.RADOS(t, "test-hostd-")
	ctx := t.Context()
	lease := time.Hour
	open := func(host string) *vmWriter {
		w, err := writers{loc: loc, lease: lease, host: host}.Open(ctx, "vm1")
		require.NoError(t, err)
		t.Cleanup(func() { w.Close() })
		return w.(*vmWriter)
	}
	a, b, c := open("host-a"), open("host-b"), open("host-c")
	t.Cleanup(func() {
		keys, _ := c.be.List(context.Background(), "")
		for _, k := range keys {
			c.be.Delete(context.Background(), k)
		}
	})
	const key, key2 = "disks/d1/chunks/00000000", "disks/d1/chunks/00000001"
	chunkAt := func(dw control.DiskWriter, key string) storage.Chunk {
		ch, err := dw.Storage.OpenChunk(ctx, key, true)
		require.NoError(t, err)
		t.Cleanup(func() { ch.Close() })
		return ch
	}
	chunk := func(dw control.DiskWriter) storage.Chunk { return chunkAt(dw, key) }
	write := func(ch storage.Chunk, s string) error {
		_, err := ch.WriteAt([]byte(s), 0)
		return err
	}
	storedAt := func(key string) string {
		ch, err := c.be.OpenChunk(ctx, key, false)
		require.NoError(t, err)
		defer ch.Close()
		p := make([]byte, 8)
		_, err = ch.ReadAt(p, 0)
		require.NoError(t, err)
		return string(p)
	}
	stored := func() string { return storedAt(key) }

	da, err := a.Disk(ctx, "d1", "disks/d1/meta.json", nil)
	require.NoError(t, err)
	require.Equal(t, uint64(1), da.Epoch)
	ca := chunk(da)
	require.NoError(t, write(ca, "a-epoch1"))
	// A lets the disk go cleanly, but a write of it is still to come (a
	// chunk left open); B takes the disk and fences nobody.
	da.Release()
	db, err := b.Disk(ctx, "d1", "disks/d1/meta.json", nil)
	require.NoError(t, err)
	require.Equal(t, uint64(2), db.Epoch)
	require.Empty(t, db.Fenced, "a released disk's last writer is not fenced")
	cb := chunk(db)
	require.NoError(t, write(cb, "b-epoch2"))
	err = write(ca, "a-late!!")
	require.ErrorIs(t, err, syscall.EIO)
	require.ErrorIs(t, err, rados.ErrStaleEpoch)
	require.ErrorIs(t, ca.PunchHole(0, 8), syscall.EIO)
	assert.Equal(t, "b-epoch2", stored())
	cb2 := chunkAt(db, key2)
	require.NoError(t, write(cb2, "b2epoch2"))

	// C takes the disk from B without a release, but its fence does not
	// happen (B's lock broken, the blocklist lost): B's writes are refused
	// all the same.
	holders, err := b.be.(*rados.Backend).Lockers(ctx, cluster.LockKey("d1"), cluster.DiskLockName)
	require.NoError(t, err)
	require.Len(t, holders, 1)
	breakLock(t, *loc.RADOS, cluster.LockKey("d1"), holders[0])
	c.fencer = noFence{c.fencer}
	dc, err := c.Disk(ctx, "d1", "disks/d1/meta.json", nil)
	require.NoError(t, err)
	require.Equal(t, uint64(3), dc.Epoch)
	require.Equal(t, "host-b", dc.Fenced)
	require.NoError(t, write(chunk(dc), "c-epoch3"))
	err = write(cb, "b-late!!")
	require.ErrorIs(t, err, syscall.EIO, "B's lease check still passes: only the store refuses")
	assert.Equal(t, "c-epoch3", stored())
	// C took the disk from a writer that did not let it go, so it stamped
	// every chunk: B is refused on one C never wrote too.
	err = write(cb2, "b2-late!")
	require.ErrorIs(t, err, rados.ErrStaleEpoch)
	assert.Equal(t, "b2epoch2", storedAt(key2))
	// And C's floor is its epoch: a chunk object B creates after the
	// takeover (a region never written before) is never read by C, nor
	// kept, whether C finds it when it looks for the chunk or when it
	// creates a chunk it found absent before.
	rec, _, err := cluster.ReadOwner(ctx, c.be, "d1")
	require.NoError(t, err)
	require.Equal(t, uint64(3), rec.Floor)
	const key3, key4 = "disks/d1/chunks/00000002", "disks/d1/chunks/00000003"
	cb3 := chunkAt(db, key3)
	require.NoError(t, write(cb3, "b3-late!"))
	_, err = dc.Storage.OpenChunk(ctx, key3, false)
	require.ErrorIs(t, err, storage.ErrNotFound, "as if B never created it")
	_, err = c.be.OpenChunk(ctx, key3, false)
	require.ErrorIs(t, err, storage.ErrNotFound, "removed")
	require.ErrorIs(t, write(cb3, "b3-late2"), storage.ErrNotFound)
	_, err = dc.Storage.OpenChunk(ctx, key4, false)
	require.ErrorIs(t, err, storage.ErrNotFound)
	cb4 := chunkAt(db, key4)
	require.NoError(t, write(cb4, "b4-late!"))
	cc4 := chunkAt(dc, key4)
	p := make([]byte, 8)
	_, err = cc4.ReadAt(p, 0)
	require.NoError(t, err)
	assert.Equal(t, make([]byte, 8), p, "none of B's bytes")
	require.ErrorIs(t, write(cb4, "b4-late2"), rados.ErrStaleEpoch)
	require.NoError(t, write(cc4, "c4epoch3"))
	assert.Equal(t, "c4epoch3", storedAt(key4))
	// One more chunk object B creates after the takeover, which C never
	// opens: an operation on the stopped disk (a snapshot, an export)
	// opens the disk through a writer of its own, under the same floor,
	// and does not read it either.
	const key5 = "disks/d1/chunks/00000004"
	require.NoError(t, write(chunkAt(db, key5), "b5-late!"))

	// A host cache writes back through the same guarded chunks: C's
	// write-back cache holds a write when A takes the disk again; its
	// write-back is refused.
	hc, err := cache.New(ctx, dc.Storage, cache.Options{Mode: cache.ReadWrite, Dir: t.TempDir(),
		MaxBytes: 1 << 20, FlushInterval: time.Hour, SlowStorage: -1, SequentialCutoff: -1})
	require.NoError(t, err)
	cc, err := hc.OpenChunk(ctx, key, false)
	require.NoError(t, err)
	require.NoError(t, write(cc, "c-cached"))
	assert.Equal(t, "c-epoch3", stored(), "the write is in the cache only")
	dc.Release()
	ow, err := writers{loc: loc, lease: lease, host: "host-c"}.Operation(ctx, "snapshot s1")
	require.NoError(t, err)
	dop, err := ow.Disk(ctx, "d1", "disks/d1/meta.json", nil)
	require.NoError(t, err)
	require.Equal(t, uint64(3), dop.Epoch, "the same host: the epoch stays")
	_, err = dop.Storage.OpenChunk(ctx, key5, false)
	require.ErrorIs(t, err, storage.ErrNotFound, "the operation reads none of B's late chunk")
	_, err = c.be.OpenChunk(ctx, key5, false)
	require.ErrorIs(t, err, storage.ErrNotFound, "removed")
	dop.Release()
	require.NoError(t, ow.Close())
	da2, err := a.Disk(ctx, "d1", "disks/d1/meta.json", nil)
	require.NoError(t, err)
	defer da2.Release()
	require.Equal(t, uint64(4), da2.Epoch)
	rec, _, err = cluster.ReadOwner(ctx, a.be, "d1")
	require.NoError(t, err)
	assert.Equal(t, uint64(3), rec.Floor, "a clean move keeps the floor")
	assert.Equal(t, "c4epoch3", func() string {
		ch := chunkAt(da2, key4)
		_, err := ch.ReadAt(p, 0)
		require.NoError(t, err)
		return string(p)
	}(), "a chunk of a clean previous owner is the disk's")
	require.NoError(t, write(chunk(da2), "a-epoch4"))
	require.ErrorIs(t, hc.Flush(ctx), syscall.EIO)
	assert.Equal(t, "a-epoch4", stored())
	cc.Close()
	hc.Close()
}

// breakLock breaks l's hold of the disk lock on key, as an administrator
// would (rados lock break).
func breakLock(t *testing.T, cfg rados.Config, key string, l rados.Locker) {
	conn, err := goceph.NewConnWithUser(cfg.User)
	require.NoError(t, err)
	require.NoError(t, conn.ReadConfigFile(cfg.ConfFile))
	require.NoError(t, conn.Connect())
	defer conn.Shutdown()
	io, err := conn.OpenIOContext(cfg.Pool)
	require.NoError(t, err)
	defer io.Destroy()
	io.SetNamespace(cfg.Namespace)
	ret, err := io.BreakLock(key, cluster.DiskLockName, l.Client, l.Cookie)
	require.NoError(t, err)
	require.Zero(t, ret)
}

// An operation on a stopped disk takes the disk's writer lock on a client
// of its own, on the real store: another host's VM start and another
// host's operation are refused, naming the host and the operation; of two
// racing for the lock exactly one gets it; the operation lets the disk go
// cleanly (nobody fenced, the epoch bumped for the next host). Should its
// lease run out instead, the host that takes the disk over fences the
// operation's client, and the host's records connection writes on.
func TestOperationWriterOnRADOS(t *testing.T) {
	loc := testenv.RADOS(t, "test-hostd-op-")
	ctx := t.Context()
	records, err := loc.Open(ctx)
	require.NoError(t, err)
	t.Cleanup(func() {
		keys, _ := records.List(context.Background(), "")
		for _, k := range keys {
			records.Delete(context.Background(), k)
		}
		records.Close()
	})
	open := func(host, vm, op string) control.VMWriter {
		ws := writers{loc: loc, lease: time.Hour, host: host}
		var w control.VMWriter
		var err error
		if op != "" {
			w, err = ws.Operation(ctx, op)
		} else {
			w, err = ws.Open(ctx, vm)
		}
		require.NoError(t, err)
		t.Cleanup(func() { w.Close() })
		return w
	}
	const meta = "disks/d1/meta.json"
	refusedBy := func(err error, host, op string) {
		t.Helper()
		require.ErrorIs(t, err, storage.ErrConflict)
		var held *control.LockHeld
		require.ErrorAs(t, err, &held)
		assert.Equal(t, control.LockHeld{Host: host, Op: op}, *held)
	}

	// Two hosts race one operation on d1: exactly one gets the lock.
	snapA, resizeB := open("host-a", "", "snapshot s1"), open("host-b", "", "resize")
	type took struct {
		dw  control.DiskWriter
		err error
	}
	res := make(chan took, 2)
	for _, w := range []control.VMWriter{snapA, resizeB} {
		go func() {
			dw, err := w.Disk(ctx, "d1", meta, nil)
			res <- took{dw, err}
		}()
	}
	r1, r2 := <-res, <-res
	if r1.err != nil {
		r1, r2 = r2, r1
	}
	require.NoError(t, r1.err, "one of the two gets the lock")
	require.Error(t, r2.err, "the other is refused")
	own, _, err := cluster.ReadOwner(ctx, records, "d1")
	require.NoError(t, err)
	winner, loser := "host-a", "host-b"
	if own.Host == "host-b" {
		winner, loser = loser, winner
	}
	refusedBy(r2.err, winner, own.Op)
	r1.dw.Release()
	own, _, err = cluster.ReadOwner(ctx, records, "d1")
	require.NoError(t, err)
	require.True(t, own.Released)
	require.Equal(t, uint64(1), own.Epoch)

	// The loser's host takes it for its own operation: the epoch grows;
	// a VM start on the winner's host is refused, naming the operation.
	w := map[string]control.VMWriter{"host-a": snapA, "host-b": resizeB}[loser]
	dw, err := w.Disk(ctx, "d1", meta, nil)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), dw.Epoch)
	assert.Empty(t, dw.Fenced, "the winner let the disk go cleanly")
	_, err = open(winner, "vm1", "").Disk(ctx, "d1", meta, nil)
	refusedBy(err, loser, map[string]string{"host-a": "snapshot s1", "host-b": "resize"}[loser])
	require.NoError(t, dw.Storage.WriteMeta(ctx, meta, []byte(`{"by":"`+loser+`"}`)))

	// Its lease is lost (the lock broken, as if it ran out): the winner's
	// VM takes the disk over and fences the operation's client only.
	opClient, err := w.(*vmWriter).fencer.Addr()
	require.NoError(t, err)
	holders, err := w.(*vmWriter).be.(*rados.Backend).Lockers(ctx, cluster.LockKey("d1"), cluster.DiskLockName)
	require.NoError(t, err)
	require.Len(t, holders, 1)
	breakLock(t, *loc.RADOS, cluster.LockKey("d1"), holders[0])
	vm := open(winner, "vm1", "")
	dv, err := vm.Disk(ctx, "d1", meta, nil)
	require.NoError(t, err)
	defer dv.Release()
	assert.Equal(t, loser, dv.Fenced)
	assert.Equal(t, uint64(3), dv.Epoch)
	own, _, err = cluster.ReadOwner(ctx, records, "d1")
	require.NoError(t, err)
	assert.Equal(t, "vm1", own.VM)
	assert.Empty(t, own.Op)
	assert.NotEqual(t, opClient, own.Addr)
	require.Error(t, w.(*vmWriter).be.WriteMeta(ctx, meta, []byte(`{"late":1}`)), "the operation's client is fenced")
	raw, err := records.ReadMeta(ctx, meta)
	require.NoError(t, err)
	assert.Equal(t, `{"by":"`+loser+`"}`, string(raw))
	require.NoError(t, records.WriteMeta(ctx, "cluster/probe", []byte("x")), "the records connection writes on")
}
