//go:build ceph

package rados_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	goceph "github.com/ceph/go-ceph/rados"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/location"
	"hostcrypt/storage/rados"
	"hostcrypt/storage/storagetest"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	// clusterEnv holds the cluster's location, as scripts/ceph-cluster.sh
	// prints it. Its ceph.conf's keyring must also hold client.admin, which
	// the tests that create pools or read OSD counters use.
	clusterEnv = "HOSTCRYPT_RADOS"
)

// cluster returns the configuration of the test cluster with a namespace of
// its own, which it empties at the end of t. Without a cluster it skips, or
// fails in CI.
func cluster(t testing.TB) rados.Config {
	t.Helper()
	s := os.Getenv(clusterEnv)
	if s == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but %s is not: the RADOS tests need a cluster (make test-ceph starts one)", clusterEnv)
		}
		t.Skipf("no Ceph cluster: %s is unset (eval \"$(scripts/ceph-cluster.sh start DIR)\", or make test-ceph)", clusterEnv)
	}
	l, err := location.Parse(s)
	require.NoError(t, err, clusterEnv)
	require.NotNil(t, l.RADOS, "%s=%q is no rados:// location", clusterEnv, s)
	cfg := *l.RADOS
	cfg.Namespace = "test-" + randomHex(t, 6)
	if l.RADOS.Namespace != "" {
		cfg.Namespace = l.RADOS.Namespace + "-" + cfg.Namespace
	}
	t.Cleanup(func() { empty(t, cfg) })
	return cfg
}

// empty deletes every object of cfg's namespace that the backend can see.
func empty(t testing.TB, cfg rados.Config) {
	ctx := context.Background()
	b, err := rados.Open(ctx, cfg)
	if err != nil {
		t.Errorf("emptying namespace %s: %v", cfg.Namespace, err)
		return
	}
	defer b.Close()
	keys, err := b.List(ctx, "")
	assert.NoError(t, err)
	for _, k := range keys {
		assert.NoError(t, b.Delete(ctx, k))
	}
}

func open(t testing.TB, cfg rados.Config) *rados.Backend {
	t.Helper()
	b, err := rados.Open(t.Context(), cfg)
	require.NoError(t, err)
	return b
}

func randomHex(t testing.TB, n int) string {
	p := make([]byte, n)
	_, err := rand.Read(p)
	require.NoError(t, err)
	return hex.EncodeToString(p)
}

func random(t testing.TB, n int) []byte {
	p := make([]byte, n)
	_, err := rand.Read(p)
	require.NoError(t, err)
	return p
}

func TestConformance(t *testing.T) {
	cluster(t) // skip or fail before any subtest
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		return open(t, cluster(t))
	}, storagetest.Options{
		LogicalUsage: true,
		Reopen: func(t *testing.T, b storage.Backend) storage.Backend {
			return open(t, b.(*rados.Backend).Config())
		},
	})
}

// TestLocation opens the cluster through the location hostcryptd is given.
func TestLocation(t *testing.T) {
	cluster(t)
	b, err := location.Open(t.Context(), os.Getenv(clusterEnv))
	require.NoError(t, err)
	defer b.Close()
	rb, ok := b.(*rados.Backend)
	require.True(t, ok, "a rados:// location opens a *rados.Backend, got %T", b)
	require.Equal(t, rados.DefaultTimeout, rb.Config().Timeout)
	_, err = b.List(t.Context(), "")
	require.NoError(t, err)
}

// admin connects as client.admin to the cluster of cfg.
func admin(t testing.TB, cfg rados.Config) *goceph.Conn {
	t.Helper()
	conn, err := goceph.NewConnWithUser("admin")
	require.NoError(t, err)
	require.NoError(t, conn.ReadConfigFile(cfg.ConfFile))
	require.NoError(t, conn.SetConfigOption("rados_osd_op_timeout", "30"))
	require.NoError(t, conn.SetConfigOption("rados_mon_op_timeout", "30"))
	require.NoError(t, conn.Connect(), "connecting as client.admin (its key must be in the keyring of %s)", cfg.ConfFile)
	t.Cleanup(conn.Shutdown)
	return conn
}

func monCommand(t testing.TB, conn *goceph.Conn, cmd map[string]any) {
	t.Helper()
	js, err := json.Marshal(cmd)
	require.NoError(t, err)
	_, status, err := conn.MonCommand(js)
	require.NoError(t, err, "%s: %s", js, status)
}

// allocated returns the bytes BlueStore has allocated on osd.0.
func allocated(t testing.TB, conn *goceph.Conn) int64 {
	t.Helper()
	out, status, err := conn.OsdCommand(0, [][]byte{[]byte(`{"prefix": "perf dump", "logger": "bluestore"}`)})
	require.NoError(t, err, status)
	var dump struct {
		BlueStore struct {
			Allocated int64 `json:"bluestore_allocated"`
		} `json:"bluestore"`
	}
	require.NoError(t, json.Unmarshal(out, &dump), "%s", out)
	require.Positive(t, dump.BlueStore.Allocated, "%s", out)
	return dump.BlueStore.Allocated
}

// settled returns allocated once two readings in a row agree, so that space
// an earlier test freed is not taken for this one's.
func settled(t testing.TB, conn *goceph.Conn) int64 {
	t.Helper()
	last := allocated(t, conn)
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		now := allocated(t, conn)
		if now == last {
			return now
		}
		last = now
	}
	t.Fatalf("the OSD's allocation keeps changing: is another test using the cluster?")
	return 0
}

// TestPunchHoleFreesSpace checks on the OSD itself what Usage cannot show:
// a punched hole gives its space back, where writing zeros over the same
// range does not. Not parallel: it reads the OSD's total allocation.
func TestPunchHoleFreesSpace(t *testing.T) {
	cfg := cluster(t)
	conn := admin(t, cfg)
	b := open(t, cfg)
	defer b.Close()
	ctx := t.Context()

	fill := func(key string) (storage.Chunk, []byte) {
		c, err := b.OpenChunk(ctx, key, true)
		require.NoError(t, err)
		data := random(t, 8*mib)
		_, err = c.WriteAt(data, 0)
		require.NoError(t, err)
		require.NoError(t, c.Sync())
		return c, data
	}
	const off, n = 1*mib + 100, 6 * mib
	check := func(c storage.Chunk, data []byte) {
		got := make([]byte, len(data))
		_, err := c.ReadAt(got, 0)
		require.NoError(t, err)
		require.True(t, bytes.Equal(data[:off], got[:off]), "before the range")
		require.True(t, bytes.Equal(make([]byte, n), got[off:off+n]), "the range reads as zeros")
		require.True(t, bytes.Equal(data[off+n:], got[off+n:]), "after the range")
	}

	c, data := fill("punched")
	before := settled(t, conn)
	require.NoError(t, c.PunchHole(off, n))
	// BlueStore releases the extents once the transaction is committed,
	// which the acknowledgement may precede by a moment.
	var after int64
	require.Eventually(t, func() bool {
		after = allocated(t, conn)
		return after <= before-5*mib
	}, 20*time.Second, 100*time.Millisecond, "a 6 MiB hole frees at least 5 MiB")
	t.Logf("punching 6 MiB: allocated %d -> %d bytes", before, after)
	check(c, data)

	c, data = fill("zeroed")
	before = settled(t, conn)
	_, err := c.WriteAt(make([]byte, n), off)
	require.NoError(t, err)
	after = allocated(t, conn)
	t.Logf("writing 6 MiB of zeros: allocated %d -> %d bytes", before, after)
	require.Greater(t, after, before-1*mib, "writing zeros frees nothing: that is why PunchHole uses the zero operation")
	check(c, data)
}

func TestCompareAndSwap(t *testing.T) {
	b := open(t, cluster(t))
	defer b.Close()
	ctx := t.Context()

	_, _, err := b.ReadMetaVersion(ctx, "rec")
	require.ErrorIs(t, err, storage.ErrNotFound)
	_, err = b.WriteMetaIf(ctx, "rec", []byte("x"), 12345)
	require.ErrorIs(t, err, storage.ErrConflict, "a version condition on a missing object")
	_, err = b.ReadMeta(ctx, "rec")
	require.ErrorIs(t, err, storage.ErrNotFound, "a failed condition writes nothing")

	v1, err := b.WriteMetaIf(ctx, "rec", []byte("one"), storage.NoVersion)
	require.NoError(t, err, "creating a missing object")
	require.NotEqual(t, storage.NoVersion, v1)
	_, err = b.WriteMetaIf(ctx, "rec", []byte("again"), storage.NoVersion)
	require.ErrorIs(t, err, storage.ErrConflict, "creating an object that exists")

	data, v, err := b.ReadMetaVersion(ctx, "rec")
	require.NoError(t, err)
	require.Equal(t, "one", string(data))
	require.Equal(t, v1, v, "a read returns the version the write returned")

	v2, err := b.WriteMetaIf(ctx, "rec", []byte{}, v1)
	require.NoError(t, err, "an empty value at the right version")
	require.NotEqual(t, v1, v2)
	_, err = b.WriteMetaIf(ctx, "rec", []byte("stale"), v1)
	require.ErrorIs(t, err, storage.ErrConflict, "an older version")
	_, err = b.WriteMetaIf(ctx, "rec", []byte("future"), v2+100)
	require.ErrorIs(t, err, storage.ErrConflict, "a newer version")
	data, v, err = b.ReadMetaVersion(ctx, "rec")
	require.NoError(t, err)
	require.Empty(t, data, "conflicting writes left the value alone")
	require.Equal(t, v2, v)

	// A plain WriteMeta moves the version too.
	require.NoError(t, b.WriteMeta(ctx, "rec", []byte("plain")))
	_, err = b.WriteMetaIf(ctx, "rec", []byte("stale"), v2)
	require.ErrorIs(t, err, storage.ErrConflict, "after a plain write")

	// A deleted object conflicts with any version it had.
	_, v, err = b.ReadMetaVersion(ctx, "rec")
	require.NoError(t, err)
	require.NoError(t, b.Delete(ctx, "rec"))
	_, err = b.WriteMetaIf(ctx, "rec", []byte("resurrect"), v)
	require.ErrorIs(t, err, storage.ErrConflict, "after a delete")
	_, err = b.ReadMeta(ctx, "rec")
	require.ErrorIs(t, err, storage.ErrNotFound)

	// A value larger than the first read guess comes back whole.
	big := random(t, 300*kib)
	_, err = b.WriteMetaIf(ctx, "big", big, storage.NoVersion)
	require.NoError(t, err)
	data, _, err = b.ReadMetaVersion(ctx, "big")
	require.NoError(t, err)
	require.True(t, bytes.Equal(big, data))

	_, err = b.WriteMetaIf(ctx, "bad/../key", nil, storage.NoVersion)
	require.ErrorIs(t, err, storage.ErrInvalidKey)
}

// TestCompareAndSwapRaces races clients on separate connections, as hosts
// would be: of those creating one key exactly one wins, and counters
// increased by read-modify-write with retries lose no increment.
func TestCompareAndSwapRaces(t *testing.T) {
	cfg := cluster(t)
	const clients = 4
	bs := make([]*rados.Backend, clients)
	for i := range bs {
		bs[i] = open(t, cfg)
		defer bs[i].Close()
	}
	ctx := t.Context()

	for round := range 5 {
		key := fmt.Sprintf("create-%d", round)
		errs := make([]error, clients)
		var wg sync.WaitGroup
		for i, b := range bs {
			wg.Go(func() { _, errs[i] = b.WriteMetaIf(ctx, key, []byte(strconv.Itoa(i)), storage.NoVersion) })
		}
		wg.Wait()
		winners := 0
		for i, err := range errs {
			if err == nil {
				winners++
				got, err := bs[0].ReadMeta(ctx, key)
				require.NoError(t, err)
				require.Equal(t, strconv.Itoa(i), string(got), "the value is the winner's")
			} else {
				require.ErrorIs(t, err, storage.ErrConflict)
			}
		}
		require.Equal(t, 1, winners, "round %d: exactly one create wins", round)
	}

	const increments = 10
	_, err := bs[0].WriteMetaIf(ctx, "counter", []byte("0"), storage.NoVersion)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for _, b := range bs {
		wg.Go(func() {
			for range increments {
				for {
					data, v, err := b.ReadMetaVersion(ctx, "counter")
					if !assert.NoError(t, err) {
						return
					}
					n, err := strconv.Atoi(string(data))
					if !assert.NoError(t, err) {
						return
					}
					_, err = b.WriteMetaIf(ctx, "counter", []byte(strconv.Itoa(n+1)), v)
					if err == nil {
						break
					}
					if !assert.ErrorIs(t, err, storage.ErrConflict) {
						return
					}
				}
			}
		})
	}
	wg.Wait()
	got, err := bs[0].ReadMeta(ctx, "counter")
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(clients*increments), string(got))
}

// TestDeletedChunk: a chunk deleted while open is not brought back by a
// late write, synchronous or asynchronous (here forced), and reading it
// says it is gone rather than inventing zeros.
func TestDeletedChunk(t *testing.T) {
	t.Run("sync", func(t *testing.T) { testDeletedChunk(t, false) })
	t.Run("async", func(t *testing.T) { testDeletedChunk(t, true) })
}

func testDeletedChunk(t *testing.T, async bool) {
	b := open(t, cluster(t))
	defer b.Close()
	if async {
		rados.AsyncWrites(b)
	}
	ctx := t.Context()
	c, err := b.OpenChunk(ctx, "d/0", true)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.WriteAt([]byte("data"), 0)
	require.NoError(t, err)
	require.NoError(t, b.Delete(ctx, "d/0"))

	_, err = c.WriteAt([]byte("late"), 4*kib)
	require.ErrorIs(t, err, storage.ErrNotFound)
	_, err = c.ReadAt(make([]byte, 4), 0)
	require.ErrorIs(t, err, storage.ErrNotFound)
	require.ErrorIs(t, c.PunchHole(0, 4), storage.ErrNotFound)
	keys, err := b.List(ctx, "")
	require.NoError(t, err)
	require.Empty(t, keys, "nothing came back")
	syncs, asyncs := rados.WritePaths(b)
	if async {
		require.Equal(t, [2]uint64{0, 2}, [2]uint64{syncs, asyncs})
	} else {
		require.Equal(t, [2]uint64{2, 0}, [2]uint64{syncs, asyncs})
	}
}

// TestChunkAfterClose: chunks of a closed backend fail instead of reaching
// a freed connection, and a closed chunk fails on its own.
func TestChunkAfterClose(t *testing.T) {
	b := open(t, cluster(t))
	ctx := t.Context()
	c, err := b.OpenChunk(ctx, "c", true)
	require.NoError(t, err)
	_, err = c.WriteAt([]byte("x"), 0)
	require.NoError(t, err)
	c2, err := b.OpenChunk(ctx, "c", false)
	require.NoError(t, err)
	require.NoError(t, c2.Close())
	_, err = c2.ReadAt(make([]byte, 1), 0)
	require.ErrorIs(t, err, os.ErrClosed)

	require.NoError(t, b.Close())
	_, err = c.ReadAt(make([]byte, 1), 0)
	require.ErrorIs(t, err, storage.ErrClosed)
	_, err = c.WriteAt([]byte("y"), 0)
	require.ErrorIs(t, err, storage.ErrClosed)
	require.ErrorIs(t, c.PunchHole(0, 1), storage.ErrClosed)
	require.ErrorIs(t, c.Sync(), storage.ErrClosed)
	require.NoError(t, b.Close(), "closing twice")
}

// TestListSkipsForeignObjects: objects of other programs sharing the
// namespace, whose names no key can take, are not listed.
func TestListSkipsForeignObjects(t *testing.T) {
	cfg := cluster(t)
	b := open(t, cfg)
	defer b.Close()
	ctx := t.Context()
	conn := admin(t, cfg)
	io, err := conn.OpenIOContext(cfg.Pool)
	require.NoError(t, err)
	defer io.Destroy()
	io.SetNamespace(cfg.Namespace)
	foreign := []string{".hidden", "with space", "rbd:header", "a//b", "trailing/"}
	for _, name := range foreign {
		require.NoError(t, io.WriteFull(name, []byte("x")), name)
	}
	defer func() {
		for _, name := range foreign {
			assert.NoError(t, io.Delete(name), name)
		}
	}()
	require.NoError(t, b.WriteMeta(ctx, "mine", []byte("m")))
	keys, err := b.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, []string{"mine"}, keys)
	u, err := b.Usage(ctx, "")
	require.NoError(t, err)
	require.Equal(t, int64(1), u, "foreign objects are not counted either")
}

func TestOpenErrors(t *testing.T) {
	cfg := cluster(t)
	ctx := t.Context()

	missing := cfg
	missing.Pool = "no-such-pool-" + randomHex(t, 4)
	_, err := rados.Open(ctx, missing)
	require.ErrorContains(t, err, "does not exist")
	require.ErrorContains(t, err, "ceph osd pool create "+missing.Pool)

	noConf := cfg
	noConf.ConfFile = filepath.Join(t.TempDir(), "ceph.conf")
	_, err = rados.Open(ctx, noConf)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, err, noConf.ConfFile)

	_, err = rados.Open(ctx, rados.Config{ConfFile: cfg.ConfFile})
	require.ErrorContains(t, err, "no pool")

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = rados.Open(cctx, cfg)
	require.ErrorIs(t, err, context.Canceled)
}

// cephxKey returns a well-formed cephx secret: enough for librados to try
// to authenticate, which it never gets to in the timeout test.
func cephxKey(t testing.TB) string {
	var p [28]byte
	binary.LittleEndian.PutUint16(p[0:], 1) // AES
	binary.LittleEndian.PutUint32(p[2:], uint32(time.Now().Unix()))
	binary.LittleEndian.PutUint16(p[10:], 16)
	_, err := rand.Read(p[12:])
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(p[:])
}

// TestOpenTimeout: a monitor that accepts connections and never answers
// makes Open fail with ErrTimeout, within a bound and not forever.
func TestOpenTimeout(t *testing.T) {
	cluster(t) // only for the skip rule: this test needs librados, not the cluster
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()
	conf := filepath.Join(t.TempDir(), "ceph.conf")
	require.NoError(t, os.WriteFile(conf, fmt.Appendf(nil,
		"[global]\nmon host = v2:%s\nkey = %s\nlog file = /dev/null\n", l.Addr(), cephxKey(t)), 0o600))

	start := time.Now()
	_, err = rados.Open(t.Context(), rados.Config{Pool: "any", ConfFile: conf, Timeout: 2 * time.Second})
	elapsed := time.Since(start)
	require.ErrorIs(t, err, rados.ErrTimeout)
	require.ErrorContains(t, err, "no answer within 2s")
	require.Less(t, elapsed, 60*time.Second, "bounded by the timeout, not hanging")
	t.Logf("Open gave up after %v", elapsed.Round(time.Millisecond))
}

// TestOperationTimeout makes a pool's placement group inactive (two copies
// required, one OSD to hold them) under a backend using it: every call then
// fails with ErrTimeout instead of blocking, and works again once the pool
// is served again.
func TestOperationTimeout(t *testing.T) {
	cfg := cluster(t)
	conn := admin(t, cfg)
	pool := "hostcrypt-test-stuck-" + randomHex(t, 4)
	monCommand(t, conn, map[string]any{"prefix": "osd pool create", "pool": pool, "pg_num": 1, "pgp_num": 1})
	defer monCommand(t, conn, map[string]any{"prefix": "osd pool rm", "pool": pool, "pool2": pool,
		"yes_i_really_really_mean_it": true})
	monCommand(t, conn, map[string]any{"prefix": "osd pool application enable", "pool": pool, "app": "rados"})

	// Only client.admin may use a pool made here.
	stuck := cfg
	stuck.Pool, stuck.User, stuck.Timeout = pool, "admin", time.Second
	ctx := t.Context()
	start := time.Now()
	var b *rados.Backend
	require.Eventually(t, func() bool { // the new PG takes a moment to go active
		var err error
		b, err = rados.Open(ctx, stuck)
		return err == nil
	}, 60*time.Second, 500*time.Millisecond)
	defer b.Close()
	t.Logf("the new pool served after %v", time.Since(start).Round(time.Millisecond))
	require.NoError(t, b.WriteMeta(ctx, "m", []byte("before")))
	c, err := b.OpenChunk(ctx, "c", true)
	require.NoError(t, err)
	defer c.Close()

	// And the hostcrypt user, whose rights cover its own pool only, is
	// told so.
	if cfg.User != "admin" {
		other := cfg
		other.Pool = pool
		_, err := rados.Open(ctx, other)
		require.ErrorContains(t, err, "permission denied")
	}

	setPool := func(size int) {
		monCommand(t, conn, map[string]any{"prefix": "osd pool set", "pool": pool, "var": "size",
			"val": strconv.Itoa(size), "yes_i_really_mean_it": true})
		monCommand(t, conn, map[string]any{"prefix": "osd pool set", "pool": pool, "var": "min_size",
			"val": strconv.Itoa(size)})
	}
	start = time.Now()
	setPool(2)
	// The PG goes inactive once the OSD has the new map: until then calls
	// may still succeed.
	require.Eventually(t, func() bool {
		return errors.Is(b.WriteMeta(ctx, "m", []byte("during")), rados.ErrTimeout)
	}, 60*time.Second, 10*time.Millisecond, "writes time out on an inactive pool")
	t.Logf("the pool stopped serving after %v", time.Since(start).Round(time.Millisecond))

	for name, call := range map[string]func() error{
		"ReadMeta": func() error { _, err := b.ReadMeta(ctx, "m"); return err },
		"ReadAt":   func() error { _, err := c.ReadAt(make([]byte, 4*kib), 0); return err },
		"WriteAt":  func() error { _, err := c.WriteAt(make([]byte, 4*kib), 0); return err },
		"List":     func() error { _, err := b.List(ctx, ""); return err },
	} {
		start := time.Now()
		err := call()
		elapsed := time.Since(start)
		require.ErrorIs(t, err, rados.ErrTimeout, name)
		require.Less(t, elapsed, 60*time.Second, "%s is bounded", name)
		t.Logf("%s timed out after %v", name, elapsed.Round(time.Millisecond))
	}

	start = time.Now()
	setPool(1)
	require.Eventually(t, func() bool {
		return b.WriteMeta(ctx, "m", []byte("after")) == nil
	}, 60*time.Second, 100*time.Millisecond, "the backend works again once the pool is served")
	t.Logf("the pool served again after %v", time.Since(start).Round(time.Millisecond))
	got, err := b.ReadMeta(ctx, "m")
	require.NoError(t, err)
	require.Equal(t, "after", string(got))
}

// TestConcurrentReads: reads one after another are synchronous; reads of
// one chunk from many goroutines at once are mostly asynchronous and each
// get their own bytes (the completions reach the read that asked), a read
// past the object's end gets zeros there, and the reads in flight hold no
// thread each: they wait for librados without blocking one in C, so the
// process starts few threads for them.
func TestConcurrentReads(t *testing.T) {
	b := open(t, cluster(t))
	defer b.Close()
	ctx := t.Context()
	c, err := b.OpenChunk(ctx, "r/0", true)
	require.NoError(t, err)
	defer c.Close()
	const size = 1 * mib
	want := random(t, size)
	_, err = c.WriteAt(want, 0)
	require.NoError(t, err)

	one := make([]byte, 4*kib)
	for i := range 16 {
		_, err := c.ReadAt(one, int64(i)*64*kib)
		require.NoError(t, err)
		require.Equal(t, want[i*64*kib:i*64*kib+4*kib], one)
	}
	syncs, asyncs := rados.ReadPaths(b)
	require.Equal(t, [2]uint64{16, 0}, [2]uint64{syncs, asyncs}, "reads one after another are synchronous")

	const readers, each = 256, 8
	together(t, "reads", readers, each, func() (uint64, uint64) { return rados.ReadPaths(b) }, func(r int) error {
		p := make([]byte, 4*kib)
		for i := range each {
			off := int64((r*each+i)*4*kib) % (size + 8*kib) // some past the end
			if _, err := c.ReadAt(p, off); err != nil {
				return err
			}
			exp := make([]byte, len(p))
			if off < size {
				copy(exp, want[off:])
			}
			if !bytes.Equal(p, exp) {
				return fmt.Errorf("read at %d got other bytes", off)
			}
		}
		return nil
	})
}

// together runs fn(0) to fn(n-1) in goroutines at once, each making each
// calls of the kind paths counts (what: "reads" or "writes"), fails t with
// the first error, and checks that the calls that came together went
// asynchronous for the most part, without a thread each.
func together(t *testing.T, what string, n, each int, paths func() (sync, async uint64), fn func(i int) error) {
	syncs0, asyncs0 := paths()
	threads := pprof.Lookup("threadcreate")
	before := threads.Count()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			if err := fn(i); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	created := threads.Count() - before
	syncs, asyncs := paths()
	syncs, asyncs = syncs-syncs0, asyncs-asyncs0
	t.Logf("%d threads created for %d %s, %d at a time; %d synchronous, %d asynchronous",
		created, n*each, what, n, syncs, asyncs)
	assert.Equal(t, uint64(n*each), syncs+asyncs)
	assert.Greater(t, asyncs, syncs, "%s that come together are asynchronous", what)
	assert.Less(t, created, 32, "%s in flight hold threads", what)
}

// TestConcurrentWrites: writes one after another are synchronous; writes
// to one chunk from many goroutines at once are mostly asynchronous, each
// lands where it was asked (the completions reach the write that made it),
// and the writes in flight hold no thread each.
func TestConcurrentWrites(t *testing.T) {
	b := open(t, cluster(t))
	defer b.Close()
	ctx := t.Context()
	c, err := b.OpenChunk(ctx, "w/0", true)
	require.NoError(t, err)
	defer c.Close()

	const writers, each, block = 256, 8, 4 * kib
	want := random(t, writers*each*block)
	for i := range 16 {
		_, err := c.WriteAt(want[i*block:(i+1)*block], int64(i*block))
		require.NoError(t, err)
	}
	syncs, asyncs := rados.WritePaths(b)
	require.Equal(t, [2]uint64{16, 0}, [2]uint64{syncs, asyncs}, "writes one after another are synchronous")

	together(t, "writes", writers, each, func() (uint64, uint64) { return rados.WritePaths(b) }, func(w int) error {
		for i := range each {
			off := (i*writers + w) * block // interleaved with the others'
			if _, err := c.WriteAt(want[off:off+block], int64(off)); err != nil {
				return err
			}
		}
		return nil
	})

	got := make([]byte, len(want))
	_, err = c.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "every write landed where it was asked")
}
