package cache_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// durable is a storage.Backend decorator that records, per chunk object,
// the bytes that reached it and were synced after: what another host
// finds in a shared store once this one is gone.
type durable struct {
	storage.Backend
	written atomic.Int64 // bytes written to chunks

	mu      sync.Mutex
	pending map[string][]extent // written, not synced yet
	synced  map[string][]byte
}

type extent struct {
	off  int64
	data []byte // nil: a punched hole of n bytes
	n    int64
}

func newDurable(b storage.Backend) *durable {
	return &durable{Backend: b, pending: map[string][]extent{}, synced: map[string][]byte{}}
}

func (b *durable) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := b.Backend.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return &durableChunk{Chunk: c, b: b, key: key}, nil
}

// syncedBytes returns n bytes at off of key as the last syncs left them.
func (b *durable) syncedBytes(key string, off int64, n int) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := make([]byte, n)
	if s := b.synced[key]; off < int64(len(s)) {
		copy(p, s[off:])
	}
	return p
}

type durableChunk struct {
	storage.Chunk
	b   *durable
	key string
}

func (c *durableChunk) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.Chunk.WriteAt(p, off)
	if err == nil {
		c.b.written.Add(int64(len(p)))
		c.b.mu.Lock()
		c.b.pending[c.key] = append(c.b.pending[c.key], extent{off: off, data: bytes.Clone(p)})
		c.b.mu.Unlock()
	}
	return n, err
}

func (c *durableChunk) PunchHole(off, n int64) error {
	err := c.Chunk.PunchHole(off, n)
	if err == nil {
		c.b.mu.Lock()
		c.b.pending[c.key] = append(c.b.pending[c.key], extent{off: off, n: n})
		c.b.mu.Unlock()
	}
	return err
}

func (c *durableChunk) Sync() error {
	// What is pending as Sync starts is durable once it returns.
	c.b.mu.Lock()
	es := c.b.pending[c.key]
	delete(c.b.pending, c.key)
	c.b.mu.Unlock()
	if err := c.Chunk.Sync(); err != nil {
		return err
	}
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	s := c.b.synced[c.key]
	for _, e := range es {
		n := e.n
		if e.data != nil {
			n = int64(len(e.data))
		}
		if end := e.off + n; end > int64(len(s)) {
			s = append(s, make([]byte, end-int64(len(s)))...)
		}
		if e.data != nil {
			copy(s[e.off:], e.data)
		} else {
			clear(s[e.off : e.off+n])
		}
	}
	c.b.synced[c.key] = s
	return nil
}

func openDurable(t *testing.T, shared bool) (*durable, *cache.Cache, string, string) {
	root := t.TempDir()
	storeDir, cacheDir := filepath.Join(root, "store"), filepath.Join(root, "cache")
	l, err := local.Open(storeDir)
	require.NoError(t, err)
	remote := newDurable(l)
	c, err := cache.New(t.Context(), remote, cache.Options{
		Mode: cache.ReadWrite, Dir: cacheDir, MaxBytes: 4 * mib, FlushInterval: time.Hour,
		SequentialCutoff: 64 * kib, SlowStorage: -1, SharedStorage: shared,
	})
	require.NoError(t, err)
	return remote, c, storeDir, cacheDir
}

// On shared storage, Chunk.Sync of a ReadWrite cache returns once every
// byte written to the object before it is in the remote and synced there:
// another host taking the disk over finds it, whatever becomes of this
// host's cache. Between syncs the cache still absorbs writes, and a page
// written many times goes back once. On the host's own storage, Sync
// keeps the writes in the cache directory, whose recovery writes them back.
func TestSharedStorageSyncWritesBack(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(map[bool]string{false: "local", true: "shared"}[shared], func(t *testing.T) {
			remote, c, storeDir, cacheDir := openDurable(t, shared)
			const key, other = "d/chunks/0", "d/chunks/1"
			ch, err := c.OpenChunk(t.Context(), key, true)
			require.NoError(t, err)
			ch2, err := c.OpenChunk(t.Context(), other, true)
			require.NoError(t, err)
			require.NoError(t, ch.Sync())
			require.NoError(t, ch2.Sync())

			// Eight pages, then page 2 rewritten ten times, and a few
			// bytes in the middle of page 12.
			model := make([]byte, 16*PageSize)
			p := random(t, 8*PageSize)
			writeAt(t, ch, p, 0)
			copy(model, p)
			for range 10 {
				q := random(t, PageSize)
				writeAt(t, ch, q, 2*PageSize)
				copy(model[2*PageSize:], q)
			}
			q := random(t, 100)
			writeAt(t, ch, q, 12*PageSize+1000)
			copy(model[12*PageSize+1000:], q)
			writeAt(t, ch2, random(t, PageSize), 0)
			require.Zero(t, remote.written.Load(), "writes land in the cache")

			require.NoError(t, ch.Sync())
			s := c.Stats()
			if !shared {
				assert.Zero(t, remote.written.Load(), "synced in the cache, not in the remote")
				assert.Equal(t, make([]byte, len(model)), remote.syncedBytes(key, 0, len(model)))
				assert.Zero(t, s.Flushes)
				// A crash: the next cache on this host writes it back.
				l, err := local.Open(storeDir)
				require.NoError(t, err)
				c2, err := cache.New(t.Context(), l, cache.Options{Mode: cache.ReadWrite, Dir: cacheDir, MaxBytes: 4 * mib})
				require.NoError(t, err)
				require.NoError(t, c2.Close())
				e := &env{storeDir: storeDir}
				assert.Equal(t, model, e.remoteBytes(t, key, 0, len(model)), "recovered from the cache")
				return
			}
			assert.Equal(t, model, remote.syncedBytes(key, 0, len(model)), "every byte written before Sync is synced in the remote")
			assert.EqualValues(t, 8*PageSize+100, remote.written.Load(),
				"each dirty page once, and only the bytes written in it")
			assert.Equal(t, make([]byte, PageSize), remote.syncedBytes(other, 0, PageSize),
				"another object's dirty pages wait for their own Sync")
			assert.EqualValues(t, 1, s.Flushes, "the Sync's write-back is counted")
			assert.EqualValues(t, 8*PageSize+100, s.WrittenBackBytes)
			assert.Positive(t, s.WriteBackTime)
			assert.EqualValues(t, PageSize, s.DirtyBytes, "the other object's page")

			// Reads are still served by the cache.
			reads := s.Hits
			assert.Equal(t, model[:8*PageSize], readAt(t, ch, 0, 8*PageSize))
			assert.EqualValues(t, reads+8, c.Stats().Hits)

			// A write around the cache (one I/O of the sequential cut-off)
			// and a punched hole are synced by the next Sync too.
			big := random(t, 64*kib)
			writeAt(t, ch, big, 1*mib)
			require.NoError(t, ch.PunchHole(0, PageSize))
			clear(model[:PageSize])
			require.NoError(t, ch.Sync())
			assert.Equal(t, big, remote.syncedBytes(key, 1*mib, len(big)))
			assert.Equal(t, model, remote.syncedBytes(key, 0, len(model)))

			// The host dies with its cache: the store alone has it all.
			require.NoError(t, os.RemoveAll(cacheDir))
			e := &env{storeDir: storeDir}
			assert.Equal(t, model, e.remoteBytes(t, key, 0, len(model)))
		})
	}
}

// The image cache (above the engine, without encryption at host) on
// shared storage: Sync writes the dirty pages back into the volume and
// syncs the volume, so that the engine under it takes them to storage.
func TestSharedStorageImageCacheSync(t *testing.T) {
	v := &memVolume{b: make([]byte, 2*mib)}
	ic, err := cache.NewImage(t.Context(), v, cache.Options{
		Mode: cache.ReadWrite, Dir: t.TempDir(), MaxBytes: 4 * mib, FlushInterval: time.Hour,
		SequentialCutoff: -1, SlowStorage: -1, SharedStorage: true,
	})
	require.NoError(t, err)
	defer ic.Close()
	p := random(t, 64*kib)
	for range 3 {
		_, err = ic.WriteAt(p, mib+100)
		require.NoError(t, err)
	}
	require.Zero(t, v.writes.Load(), "writes land in the cache")
	syncs := v.syncs.Load()
	require.NoError(t, ic.Sync())
	assert.Equal(t, p, v.bytes(mib+100, int64(len(p))))
	assert.Greater(t, v.syncs.Load(), syncs, "the volume was synced")
	assert.Zero(t, ic.Stats().DirtyBytes)
	assert.EqualValues(t, len(p), ic.Stats().WrittenBackBytes, "written back once")
}
