package disk

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	hcrypto "hostcrypt/crypto"
	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// kek is a key-encryption key held in memory: the tests' stand-in for a key
// store. It wraps with AES-256-GCM from the standard library.
type kek struct {
	id  string
	key []byte
}

func (k kek) gcm() cipher.AEAD {
	b, err := aes.NewCipher(k.key)
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

func newKEK(id string) kek { return kek{id: id, key: hcrypto.NewDataKey()} }

func (k kek) WrapKey(_ context.Context, dek []byte) (WrappedKey, error) {
	g := k.gcm()
	nonce := make([]byte, g.NonceSize())
	rand.Read(nonce)
	return WrappedKey{KeyID: k.id, Algorithm: "A256GCM", Value: g.Seal(nonce, nonce, dek, nil)}, nil
}

// keyring unwraps with whichever of its keys a wrap names.
type keyring []kek

func (r keyring) UnwrapKey(_ context.Context, w WrappedKey) ([]byte, error) {
	for _, k := range r {
		if k.id == w.KeyID {
			g := k.gcm()
			if len(w.Value) < g.NonceSize() {
				return nil, ErrWrongKey
			}
			dek, err := g.Open(nil, w.Value[:g.NonceSize()], w.Value[g.NonceSize():], nil)
			if err != nil {
				return nil, fmt.Errorf("wrap does not open with %s: %w", k.id, ErrWrongKey)
			}
			return dek, nil
		}
	}
	return nil, fmt.Errorf("no key %s in the ring", w.KeyID)
}

type testDisk struct {
	*Disk
	dir  string
	be   storage.Backend
	ring keyring
	name string
}

func wrappers(ring keyring) []KeyWrapper {
	ws := make([]KeyWrapper, len(ring))
	for i, k := range ring {
		ws[i] = k
	}
	return ws
}

// newTestDisk creates a disk of the current format with one layer per key in
// the ring on a fresh local backend.
func newTestDisk(t testing.TB, size int64, layers, chunkBlocks int) *testDisk {
	t.Helper()
	return newTestDiskFormat(t, FormatVersion, size, layers, chunkBlocks)
}

// formats are the format versions every engine test runs on.
var formats = []int{formatV1, formatV2, formatV3}

// newTestDiskFormat is newTestDisk for a given format version.
func newTestDiskFormat(t testing.TB, format int, size int64, layers, chunkBlocks int) *testDisk {
	t.Helper()
	dir := t.TempDir()
	be, err := local.Open(dir)
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	ring := keyring{newKEK("test/kek1/v1")}
	if layers == 2 {
		ring = append(ring, newKEK("test/infra/v1"))
	}
	d, err := Create(context.Background(), be, "disks/d1", CreateOptions{Size: size, ChunkBlocks: chunkBlocks, Layers: wrappers(ring), Format: format})
	require.NoError(t, err)
	td := &testDisk{Disk: d, dir: dir, be: be, ring: ring, name: "disks/d1"}
	t.Cleanup(func() { td.Disk.Close() })
	return td
}

// reopen closes the disk and opens it again from its metadata.
func (td *testDisk) reopen(t testing.TB) {
	t.Helper()
	require.NoError(t, td.Disk.Close())
	d, err := Open(context.Background(), td.be, td.name, td.ring)
	require.NoError(t, err)
	td.Disk = d
	t.Cleanup(func() { d.Close() })
}

// hookBackend wraps a backend so tests can watch and disturb chunk I/O.
type hookBackend struct {
	storage.Backend
	onWrite func(p []byte, off int64) (handled bool, n int, err error)
	onSync  func() // called before each chunk Sync
	onRead  func(n int, off int64)
	// failSync, when set, is asked before each chunk Sync; an error it
	// returns is the Sync's, and nothing is synced.
	failSync func() error
	onPunch  func(off, n int64)
}

func (h *hookBackend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := h.Backend.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return &hookChunk{Chunk: c, h: h}, nil
}

type hookChunk struct {
	storage.Chunk
	h *hookBackend
}

func (c *hookChunk) WriteAt(p []byte, off int64) (int, error) {
	if c.h.onWrite != nil {
		if handled, n, err := c.h.onWrite(p, off); handled {
			if n > 0 {
				c.Chunk.WriteAt(p[:n], off)
			}
			return n, err
		}
	}
	return c.Chunk.WriteAt(p, off)
}

func (c *hookChunk) ReadAt(p []byte, off int64) (int, error) {
	if c.h.onRead != nil {
		c.h.onRead(len(p), off)
	}
	return c.Chunk.ReadAt(p, off)
}

func (c *hookChunk) Sync() error {
	if c.h.onSync != nil {
		c.h.onSync()
	}
	if c.h.failSync != nil {
		if err := c.h.failSync(); err != nil {
			return err
		}
	}
	return c.Chunk.Sync()
}

func (c *hookChunk) PunchHole(off, n int64) error {
	if c.h.onPunch != nil {
		c.h.onPunch(off, n)
	}
	return c.Chunk.PunchHole(off, n)
}

// barrier lets n goroutines through only together; if they never meet within
// the test's patience, wait reports false.
type barrier struct {
	mu      sync.Mutex
	n, seen int
	ch      chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, ch: make(chan struct{})} }

func (b *barrier) arrive() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seen++
	if b.seen == b.n {
		close(b.ch)
	}
}

var errInjected = errors.New("injected failure")

// failingMeta fails WriteMeta after failAfter successful calls.
type failingMeta struct {
	storage.Backend
	failAfter int
	calls     int
}

func (f *failingMeta) WriteMeta(ctx context.Context, key string, data []byte) error {
	f.calls++
	if f.calls > f.failAfter {
		return errInjected
	}
	return f.Backend.WriteMeta(ctx, key, data)
}

func (f *failingMeta) WriteMetaIf(ctx context.Context, key string, data []byte, v storage.Version) (storage.Version, error) {
	f.calls++
	if f.calls > f.failAfter {
		return storage.NoVersion, errInjected
	}
	return f.Backend.WriteMetaIf(ctx, key, data, v)
}

// failingDelete fails every Delete.
type failingDelete struct{ storage.Backend }

func (f *failingDelete) Delete(context.Context, string) error { return errInjected }

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// storedUnit returns the sealed unit of slot s of block i from the raw bytes
// of a chunk object, wherever the format keeps its parts.
func storedUnit(lay layout, raw []byte, s, i int) []byte {
	u := make([]byte, lay.slotSize)
	for j := range u {
		u[j] = raw[lay.unitOffset(s, i, j)]
	}
	return u
}

// putUnit is storedUnit in reverse.
func putUnit(lay layout, raw []byte, s, i int, u []byte) {
	for j := range u {
		raw[lay.unitOffset(s, i, j)] = u[j]
	}
}
