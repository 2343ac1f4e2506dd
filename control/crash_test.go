package control

import (
	"bytes"
	"context"
	"errors"
	"hostcrypt/control/api"
	"hostcrypt/internal/testenv"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/disk"
	"hostcrypt/storage"
)

// crasher ends the goroutine of an operation (runtime.Goexit: deferred
// unlocks run, nothing else does) just before its at-th step, a step being
// any change to storage (a chunk created, written, punched or synced, a
// metadata object written, an object deleted) or a save of the state. It
// is what a kill -9 at that instant leaves behind.
type crasher struct {
	mu      sync.Mutex
	armed   bool
	n, at   int
	crashed bool
}

func (c *crasher) step() {
	c.mu.Lock()
	hit := false
	if c.armed {
		c.n++
		if c.n == c.at {
			hit, c.crashed, c.armed = true, true, false
		}
	}
	c.mu.Unlock()
	if hit {
		runtime.Goexit()
	}
}

// run runs op with a crash before step at; it tells whether the crash came
// (false: op finished with fewer steps).
func (c *crasher) run(at int, op func()) bool {
	c.mu.Lock()
	c.armed, c.n, c.at, c.crashed = true, 0, at, false
	c.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		op()
	}()
	<-done
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armed = false
	return c.crashed
}

type crashBackend struct {
	storage.Backend
	c *crasher
}

func (b crashBackend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	if create {
		b.c.step()
	}
	ch, err := b.Backend.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return crashChunk{ch, b.c}, nil
}

func (b crashBackend) WriteMeta(ctx context.Context, key string, data []byte) error {
	b.c.step()
	return b.Backend.WriteMeta(ctx, key, data)
}

func (b crashBackend) WriteMetaIf(ctx context.Context, key string, data []byte, v storage.Version) (storage.Version, error) {
	b.c.step()
	return b.Backend.WriteMetaIf(ctx, key, data, v)
}

func (b crashBackend) Delete(ctx context.Context, key string) error {
	b.c.step()
	return b.Backend.Delete(ctx, key)
}

type crashChunk struct {
	storage.Chunk
	c *crasher
}

func (c crashChunk) WriteAt(p []byte, off int64) (int, error) {
	c.c.step()
	return c.Chunk.WriteAt(p, off)
}

func (c crashChunk) PunchHole(off, n int64) error {
	c.c.step()
	return c.Chunk.PunchHole(off, n)
}

func (c crashChunk) Sync() error {
	c.c.step()
	return c.Chunk.Sync()
}

// newCrashFixture is newFixture with storage and state saves that a crasher
// can interrupt, and the log kept.
func newCrashFixture(t *testing.T) (*fixture, *crasher, *testenv.Buffer) {
	f := newFixture(t)
	require.NoError(t, f.h.Shutdown())
	c := &crasher{}
	logs := &testenv.Buffer{}
	f.cfg.Storage = crashBackend{f.cfg.Storage, c}
	f.cfg.hooks.beforeSave = c.step
	f.cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
	var err error
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	return f, c, logs
}

// writeDisk writes p at off of the unattached disk name.
func (f *fixture) writeDisk(t *testing.T, name string, p []byte, off int64) {
	t.Helper()
	d, err := f.h.ShowDisk(name)
	require.NoError(t, err)
	dd, err := disk.Open(context.Background(), f.cfg.Storage, d.StoragePrefix, f.keys)
	require.NoError(t, err)
	_, err = dd.WriteAt(p, off)
	require.NoError(t, err)
	require.NoError(t, dd.Close())
}

// A snapshot delete interrupted at every one of its steps leaves, after a
// restart, the snapshot whole and restorable, or gone with its objects
// removed; the later incremental snapshot that shared its chunks is
// restorable either way. Before the deletion was recorded first, a crash
// after the keys were destroyed left a snapshot listed but unusable ("disk
// view was destroyed").
func TestSnapshotDeleteCrashAtEveryStep(t *testing.T) {
	ctx := context.Background()
	const mib = 1 << 20
	a, b := bytes.Repeat([]byte{0xa1}, 64<<10), bytes.Repeat([]byte{0xb2}, 64<<10)
	steps := 0
	for at := 1; ; at++ {
		f, c, _ := newCrashFixture(t)
		_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d", SizeBytes: 8 * mib})
		require.NoError(t, err)
		f.writeDisk(t, "d", a, 0)
		f.writeDisk(t, "d", a, 4*mib)
		s1, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "d", Incremental: true})
		require.NoError(t, err)
		f.writeDisk(t, "d", b, 4*mib)
		s2, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s2", Source: "d", Incremental: true})
		require.NoError(t, err)
		require.EqualValues(t, 1, s2.ChunksShared, "s2 shares chunk 0 with s1")

		crashed := c.run(at, func() { _ = f.h.DeleteSnapshot(ctx, "s1") })
		f.restart(t, false)

		// What a disk made from the snapshot would read where data was
		// written, and past it.
		read := func(name string) []byte {
			t.Helper()
			r := f.records(t)
			s, ok := r.Snapshots[name]
			require.True(t, ok, name)
			d, err := f.h.openSnapshot(ctx, r, s)
			require.NoError(t, err, "crash before step %d: %s is listed but not usable", at, name)
			defer d.Close()
			got := make([]byte, 2*len(a))
			_, err = d.ReadAt(got[:len(a)], 0)
			require.NoError(t, err)
			_, err = d.ReadAt(got[len(a):], 4*mib)
			require.NoError(t, err)
			return got
		}
		require.Equal(t, append(bytes.Clone(a), b...), read("s2"), "crash before step %d: s2 lost data", at)
		if _, err := f.h.ShowSnapshot("s1"); err == nil {
			require.Equal(t, append(bytes.Clone(a), a...), read("s1"), "crash before step %d", at)
		} else {
			requireCode(t, err, 404)
			left, err := f.cfg.Storage.List(ctx, s1.StoragePrefix)
			require.NoError(t, err)
			require.Empty(t, left, "crash before step %d: s1 is gone but its objects stayed", at)
		}
		require.Empty(t, f.records(t).Removals, "crash before step %d: a removal was not finished at start", at)
		rep, err := f.h.GC(ctx, api.GCRequest{DryRun: true})
		require.NoError(t, err)
		require.Empty(t, rep.Leftovers, "crash before step %d", at)
		require.NoError(t, f.h.Shutdown())
		if !crashed {
			steps = at - 1
			break
		}
	}
	t.Logf("snapshot delete: %d steps, each interrupted once", steps)
	require.Greater(t, steps, 5)
}

// A disk create interrupted at every step leaves the disk whole, or a
// leftover that start-up logs (and does not remove), host gc --dry-run
// lists as the disk's creation cut short and host gc removes.
func TestDiskCreateCrashLeavesGCableLeftover(t *testing.T) {
	ctx := context.Background()
	leftovers := 0
	for at := 1; ; at++ {
		f, c, logs := newCrashFixture(t)
		_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "keep", SizeBytes: 4 << 20})
		require.NoError(t, err)
		keep, err := f.cfg.Storage.List(ctx, "")
		require.NoError(t, err)

		crashed := c.run(at, func() { _, _ = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d", SizeBytes: 8 << 20}) })
		before, err := f.cfg.Storage.List(ctx, "")
		require.NoError(t, err)
		f.restart(t, false)
		after, err := f.cfg.Storage.List(ctx, "")
		require.NoError(t, err)
		require.Equal(t, before, after, "crash before step %d: start-up removed something", at)

		if d, err := f.h.ShowDisk("d"); err == nil {
			require.Empty(t, d.FailureReason)
			f.writeDisk(t, "d", []byte("still works"), 0)
		} else {
			requireCode(t, err, 404)
			rep, err := f.h.GC(ctx, api.GCRequest{DryRun: true})
			require.NoError(t, err)
			if len(after) > len(keep) {
				leftovers++
				require.Len(t, rep.Leftovers, 1, "crash before step %d", at)
				l := rep.Leftovers[0]
				require.Contains(t, l.Reason, `creation of disk d cut short`)
				require.False(t, l.Removed)
				require.Contains(t, logs.String(), "leftover that no record owns")
				require.Contains(t, logs.String(), l.Path)
			}
			rep, err = f.h.GC(ctx, api.GCRequest{})
			require.NoError(t, err)
			for _, l := range rep.Leftovers {
				require.True(t, l.Removed, "%+v", l)
			}
			left, err := f.cfg.Storage.List(ctx, "")
			require.NoError(t, err)
			require.Equal(t, keep, left, "crash before step %d: gc removed too much or too little", at)
			require.Empty(t, f.records(t).Intents)
		}
		_, err = f.h.ShowDisk("keep")
		require.NoError(t, err)
		require.NoError(t, f.h.Shutdown())
		if !crashed {
			t.Logf("disk create: %d steps, %d of them left something to collect", at-1, leftovers)
			break
		}
	}
	require.Positive(t, leftovers, "no step left anything to collect")
}

// Pointed at populated storage, a fresh, empty state directory removes
// nothing at start: it lists what it does not own, and that is all. Before,
// start-up destroyed every snapshot and image it had no record of.
func TestEmptyStateRemovesNothing(t *testing.T) {
	f, _ := newCachedFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20})
	require.NoError(t, err)
	_, err = f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "d1"})
	require.NoError(t, err)
	_, err = f.h.CreateImage(ctx, api.CreateImageRequest{Name: "i1", Source: "s1"})
	require.NoError(t, err)
	_, err = f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, TempDiskSize: 4 << 20,
		DataDisks: []api.AttachedDisk{{Name: "d1", Caching: api.CacheReadWrite}}})
	require.NoError(t, err)
	_, err = f.tree.get("vm1/data-0.img").WriteAt([]byte("cached"), 0)
	require.NoError(t, err)
	d1, err := f.h.ShowDisk("d1")
	require.NoError(t, err)
	require.NoError(t, f.h.Shutdown())
	// A clean shutdown writes the cache back and removes its directory; a
	// crashed host leaves one, with pages still to write back.
	crashed := filepath.Join(f.cfg.CacheDir, d1.UniqueID)
	require.NoError(t, os.MkdirAll(crashed, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(crashed, "data"), []byte("sealed pages"), 0o600))
	storageBefore, err := f.cfg.Storage.List(ctx, "")
	require.NoError(t, err)
	hostBefore, err := f.cfg.HostLocal.List(ctx, "")
	require.NoError(t, err)
	require.NotEmpty(t, storageBefore)
	cachesBefore := cacheNames(t, f.cfg.CacheDir)
	require.NotEmpty(t, cachesBefore)

	logs := &testenv.Buffer{}
	cfg := f.cfg
	cfg.StateDir = t.TempDir()
	cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
	h, err := New(cfg)
	require.NoError(t, err)
	h.Recover(ctx)
	require.NoError(t, h.Shutdown())

	storageAfter, err := f.cfg.Storage.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, storageBefore, storageAfter)
	hostAfter, err := f.cfg.HostLocal.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, hostBefore, hostAfter)
	for _, what := range []string{"disks/", "snapshots/", "images/", "temp/vm1", "host-cache"} {
		require.Contains(t, logs.String(), what)
	}
	require.Contains(t, logs.String(), "nothing was removed")
	require.Equal(t, cachesBefore, cacheNames(t, f.cfg.CacheDir))
}

func cacheNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// convertibleDisk makes disk "d" of size bytes under the customer-key set
// des1 and writes a known piece at off, which it returns.
func (f *restrictFixture) convertibleDisk(t *testing.T, size, off int64) []byte {
	t.Helper()
	_, err := f.h.CreateDES(context.Background(), api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k")})
	require.NoError(t, err)
	f.mustDisk(t, api.CreateDiskRequest{Name: "d", SizeBytes: size, DiskEncryptionSet: "des1"})
	data := bytes.Repeat([]byte("convert me "), 1000)
	f.writeDisk(t, "d", data, off)
	return data
}

// A conversion saves its progress every convertSaveEvery chunks, not at
// each of a large disk's chunk indices: each save is an fsync under the
// control lock, and a 32 TiB disk has eight million of them. Before, a
// 1 GiB disk with one chunk written took 256 saves.
func TestConversionSavesProgressInBatches(t *testing.T) {
	var saves atomic.Int64
	var counting atomic.Bool
	f := newRestrictFixture(t, func(c *Config) {
		c.hooks.beforeSave = func() {
			if counting.Load() {
				saves.Add(1)
			}
		}
	})
	ctx := context.Background()
	data := f.convertibleDisk(t, 1<<30, 300<<20)

	counting.Store(true)
	d, err := f.h.UpdateDisk(ctx, "d", api.UpdateDiskRequest{EncryptionType: api.EncPlatformAndCustomerKey, DiskEncryptionSet: "des1"})
	require.NoError(t, err)
	require.NotNil(t, d.Conversion)
	require.EqualValues(t, 256, d.Conversion.TotalChunks)
	require.Eventually(t, func() bool {
		d, err = f.h.ShowDisk("d")
		// Done once the old copy's removal is finished too.
		return err == nil && d.Conversion == nil && len(f.records(t).Removals) == 0
	}, time.Minute, 10*time.Millisecond)
	counting.Store(false)
	require.Equal(t, api.EncPlatformAndCustomerKey, d.Encryption.Type)
	// The intent, the conversion's start, its progress after chunks 64,
	// 128, 192 and 256, the switch and the removal of the old copy.
	require.Equal(t, int64(8), saves.Load(), "progress saved at every chunk")
	got := f.readDisk(t, "d")
	require.True(t, bytes.Equal(data, got[300<<20:300<<20+len(data)]))
}

// A conversion that stopped with an error (here the copy failed) is taken
// up again at the next start of hostcryptd, as its error message says,
// from the chunk it had reached; before, the start skipped it and the disk
// stayed unusable for good.
func TestStoppedConversionResumesAtStart(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	f := newRestrictFixture(t, func(c *Config) {
		c.hooks.copying = func(_ context.Context, what string) error {
			if fail.Load() && what == "conversion of disk d" {
				return errors.New("the storage went away")
			}
			return nil
		}
	})
	ctx := context.Background()
	data := f.convertibleDisk(t, 64<<20, 9<<20)

	_, err := f.h.UpdateDisk(ctx, "d", api.UpdateDiskRequest{EncryptionType: api.EncPlatformAndCustomerKey, DiskEncryptionSet: "des1"})
	require.NoError(t, err)
	var d *api.Disk
	require.Eventually(t, func() bool {
		d, err = f.h.ShowDisk("d")
		return err == nil && d.Conversion != nil && d.Conversion.Error != ""
	}, time.Minute, 10*time.Millisecond)
	assert.Contains(t, d.Conversion.Error, "the storage went away")
	_, err = f.h.UpdateDisk(ctx, "d", api.UpdateDiskRequest{SizeBytes: 128 << 20})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "restart hostcryptd to resume")

	fail.Store(false)
	f.restart(t, true)
	require.Eventually(t, func() bool {
		d, err = f.h.ShowDisk("d")
		return err == nil && d.Conversion == nil
	}, time.Minute, 10*time.Millisecond, "the stopped conversion was not taken up at the start")
	require.Equal(t, api.EncPlatformAndCustomerKey, d.Encryption.Type)
	got := f.readDisk(t, "d")
	require.True(t, bytes.Equal(data, got[9<<20:9<<20+len(data)]))
}
