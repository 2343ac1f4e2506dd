package volume

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/control/keys/keystest"
	"hostcrypt/disk"
	"hostcrypt/internal/leakscan"
	"hostcrypt/storage"
	"hostcrypt/storage/local"
	"hostcrypt/storage/storagetest"
)

var bg = context.Background()

type fixture struct {
	root string
	sb   storage.Backend
	keys *keystest.Service
}

func newFixture(t *testing.T) *fixture {
	root := t.TempDir()
	sb, err := local.Open(filepath.Join(root, "storage"))
	require.NoError(t, err)
	t.Cleanup(func() { sb.Close() })
	f := &fixture{root: root, sb: sb, keys: keystest.New()}
	d, err := disk.Create(bg, sb, "disks/d1", disk.CreateOptions{Size: 8 << 20, SectorSize: 512, Layers: []disk.KeyWrapper{f.keys}})
	require.NoError(t, err)
	require.NoError(t, d.Close())
	return f
}

func (f *fixture) config(mode cache.Mode, eah bool) Config {
	return Config{Name: "d1", Storage: f.sb, Prefix: "disks/d1", Keys: f.keys, Caching: mode, EncryptionAtHost: eah,
		CacheDir: filepath.Join(f.root, "cache", "d1"), CacheBytes: 4 << 20,
		// Everything through the cache: on fast local storage the default
		// policy sends a test's I/O around it.
		SequentialCutoff: -1, SlowStorage: -1}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// With encryption at host the cache holds ciphertext only; without, it
// holds plaintext; storage never does. Either way what was written is there
// after a close and a reopen.
func TestCachePlacement(t *testing.T) {
	for _, eah := range []bool{true, false} {
		f := newFixture(t)
		v, err := Open(bg, f.config(cache.ReadWrite, eah))
		require.NoError(t, err)
		p := pattern(1 << 20)
		_, err = v.Image().WriteAt(p, 4096)
		require.NoError(t, err)
		require.NoError(t, v.Image().Sync())
		s := v.Stats()
		require.True(t, s.HasCache)
		assert.Equal(t, cache.ReadWrite, s.Cache.Mode)
		hits, err := leakscan.Scan(filepath.Join(f.root, "cache"), p, 16)
		require.NoError(t, err)
		assert.Equal(t, !eah, len(hits) > 0, "plaintext in the host cache with encryption at host %v", eah)
		_, err = v.Close()
		require.NoError(t, err)
		hits, err = leakscan.Scan(filepath.Join(f.root, "storage"), p, 16)
		require.NoError(t, err)
		assert.Empty(t, hits, "plaintext in storage")

		v, err = Open(bg, f.config(cache.None, !eah))
		require.NoError(t, err)
		got := make([]byte, len(p))
		_, err = v.Image().ReadAt(got, 4096)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(p, got))
		assert.False(t, v.Stats().HasCache)
		_, err = v.Close()
		require.NoError(t, err)
	}
}

// On shared storage a flush of a ReadWrite-cached disk returns once its
// writes are in storage, with encryption at host (the cache under the
// engine) and without (above it). A copy of storage taken as the flush
// returns is what another host finds if this one dies then, its host
// cache with it: it holds every write.
func TestSharedStorageFlushReachesStorage(t *testing.T) {
	for _, eah := range []bool{true, false} {
		f := newFixture(t)
		cfg := f.config(cache.ReadWrite, eah)
		cfg.SharedStorage = true
		v, err := Open(bg, cfg)
		require.NoError(t, err)
		want := make([]byte, 2<<20)
		p := pattern(1 << 20)
		_, err = v.Image().WriteAt(p, 4096)
		require.NoError(t, err)
		copy(want[4096:], p)
		for i := range 16 {
			q := pattern(512)
			off := int64(i)*100*1024 + 512
			_, err = v.Image().WriteAt(q, off)
			require.NoError(t, err)
			copy(want[off:], q)
		}
		require.NoError(t, v.Image().Sync())
		assert.Positive(t, v.Stats().Cache.WrittenBackBytes, "the flush wrote the cache back")

		other := filepath.Join(t.TempDir(), "storage")
		require.NoError(t, os.CopyFS(other, os.DirFS(filepath.Join(f.root, "storage"))))
		_, err = v.Close()
		require.NoError(t, err)

		sb, err := local.Open(other)
		require.NoError(t, err)
		v2, err := Open(bg, Config{Name: "d1", Storage: sb, Prefix: "disks/d1", Keys: f.keys})
		require.NoError(t, err)
		got := make([]byte, len(want))
		_, err = v2.Image().ReadAt(got, 0)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want, got), "encryption at host %v: the flushed writes are in storage", eah)
		_, err = v2.Close()
		require.NoError(t, err)
		require.NoError(t, sb.Close())
	}
}

// Close cancels the work registered with Use and waits for it to let go,
// before it closes the engine; Use after Close began is refused.
func TestCloseWaitsForUsers(t *testing.T) {
	f := newFixture(t)
	v, err := Open(bg, f.config(cache.None, true))
	require.NoError(t, err)
	uctx, release, err := v.Use(bg)
	require.NoError(t, err)
	fr, objBytes, err := v.Snapshot(uctx)
	require.NoError(t, err)
	require.NotNil(t, fr)
	assert.Positive(t, objBytes)

	var released time.Time
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-uctx.Done() // the copy sees the cancellation
		time.Sleep(20 * time.Millisecond)
		released = time.Now()
		release()
	}()
	_, err = v.Close()
	closed := time.Now()
	require.NoError(t, err)
	wg.Wait()
	assert.False(t, closed.Before(released), "Close returned before the user let go")
	_, _, err = v.Use(bg)
	assert.ErrorIs(t, err, ErrClosing)
}

// Stats are read while the guest writes (under -race: no data race), and
// count what the engine found.
func TestStatsWhileWriting(t *testing.T) {
	f := newFixture(t)
	v, err := Open(bg, f.config(cache.ReadOnly, true))
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p := pattern(64 << 10)
		for i := range 64 {
			v.Image().WriteAt(p, int64(i)*int64(len(p)))
		}
	}()
	for range 50 {
		s := v.Stats()
		assert.EqualValues(t, 8<<20, s.Size)
		assert.Empty(t, s.Fenced)
	}
	<-done
	n, err := v.Close()
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestPlainTempDisk(t *testing.T) {
	f := newFixture(t)
	ch, err := f.sb.OpenChunk(bg, "temp-plain/vm1", true)
	require.NoError(t, err)
	v := Plain("temp", ch, 4<<20)
	assert.False(t, v.Encrypted())
	assert.EqualValues(t, 4<<20, v.Image().Size())
	_, err = v.Image().WriteAt([]byte("x"), 0)
	require.NoError(t, err)
	require.NoError(t, v.Image().Discard(0, 4096))
	_, err = v.Close()
	require.NoError(t, err)
}

// The read window of a disk opened as the daemon opens it (a host cache,
// the freeze decorator of snapshots, the engine) reaches local storage as a
// prefetch hint: every layer between passes it on, so a short read waits
// for its own page only.
func TestReadWindowHintReachesStorage(t *testing.T) {
	for _, tc := range []struct {
		mode cache.Mode
		eah  bool
	}{{cache.None, false}, {cache.None, true}, {cache.ReadOnly, true}, {cache.ReadWrite, true}} {
		f := newFixture(t)
		hc := &storagetest.Counting{Backend: f.sb}
		cfg := f.config(tc.mode, tc.eah)
		cfg.Storage = hc
		v, err := Open(bg, cfg)
		require.NoError(t, err)
		p := pattern(64 << 10)
		_, err = v.Image().WriteAt(p, 0)
		require.NoError(t, err)
		require.NoError(t, v.Image().Sync())
		got := make([]byte, 4096)
		_, err = v.Image().ReadAt(got, 8192)
		require.NoError(t, err)
		assert.Equal(t, p[8192:12288], got)
		assert.Positive(t, hc.Prefetches.Load(), "cache %v, encryption at host %v: the read window's hint reached storage", tc.mode, tc.eah)
		_, err = v.Close()
		require.NoError(t, err)
	}
}
