package disk

import (
	"context"
	"encoding/json"
	"math"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage/local"
)

// countingWrapper counts its wraps: a refused size must cost no key store
// call.
type countingWrapper struct {
	kek
	n *atomic.Int32
}

func (c countingWrapper) WrapKey(ctx context.Context, dek []byte) (WrappedKey, error) {
	c.n.Add(1)
	return c.kek.WrapKey(ctx, dek)
}

// tooLarge are sizes no disk of the default chunk size can have, up to the
// largest multiples of a sector an int64 holds.
var tooLarge = []int64{MaxSize + 512, 4194304 << 40, math.MaxInt64 &^ 511, math.MaxInt64 &^ 4095}

// Sizes the engine cannot address are refused with a clear error before
// anything changes: no key is wrapped, no object is written, a resize
// leaves meta.json as it was and the disk as it was.
func TestSizesBeyondTheEngine(t *testing.T) {
	ctx := context.Background()
	be, err := local.Open(t.TempDir())
	require.NoError(t, err)
	var wraps atomic.Int32
	w := countingWrapper{newKEK("k"), &wraps}
	for _, size := range tooLarge {
		_, err := Create(ctx, be, "x", CreateOptions{Size: size, Layers: []KeyWrapper{w}})
		require.ErrorContains(t, err, "can address", "size %d", size)
		require.Error(t, CheckSize(size, 512))
	}
	require.Zero(t, wraps.Load(), "a refused size cost a key wrap")
	left, err := be.List(ctx, "")
	require.NoError(t, err)
	require.Empty(t, left)

	require.NoError(t, CheckSize(MaxSize, 4096))
	require.EqualValues(t, int64(1)<<54, MaxSize)
	// Smaller chunks address less.
	_, err = Create(ctx, be, "x", CreateOptions{Size: MaxSizeFor(8) + 4096, ChunkBlocks: 8, Layers: []KeyWrapper{w}})
	require.ErrorContains(t, err, "can address")

	td := newTestDisk(t, 4<<20, 1, 0)
	p := randBytes(BlockSize)
	_, err = td.WriteAt(p, 0)
	require.NoError(t, err)
	before, err := td.be.ReadMeta(ctx, metaKey(td.name))
	require.NoError(t, err)
	for _, size := range tooLarge {
		require.ErrorContains(t, td.Resize(ctx, size), "can address", "size %d", size)
		after, err := td.be.ReadMeta(ctx, metaKey(td.name))
		require.NoError(t, err)
		require.Equal(t, before, after, "a refused resize changed meta.json")
		require.EqualValues(t, 4<<20, td.Size())
	}
	td.reopen(t)
	require.EqualValues(t, 4<<20, td.Size())
	got := make([]byte, BlockSize)
	_, err = td.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, p, got)

	// A meta.json holding such a size (edited, or left by an older build)
	// is refused at open with the reason, not a panic.
	require.NoError(t, td.Close())
	var m map[string]any
	require.NoError(t, json.Unmarshal(before, &m))
	m["size"] = int64(4194304 << 40)
	raw, err := json.Marshal(m)
	require.NoError(t, err)
	require.NoError(t, td.be.WriteMeta(ctx, metaKey(td.name), raw))
	_, err = Open(ctx, td.be, td.name, td.ring)
	require.ErrorContains(t, err, "can address")
}

// heapInUse is the heap in use after a collection.
func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// The chunk table is sparse: a disk of the largest size costs next to
// nothing until written, each chunk written costs its own state, and Sync
// visits the chunks written since the last one, not the disk's size.
func TestHugeDiskIsSparse(t *testing.T) {
	ctx := context.Background()
	for _, size := range []int64{256 << 40, MaxSize} {
		be, err := local.Open(t.TempDir())
		require.NoError(t, err)
		ring := keyring{newKEK("k")}
		before := heapInUse()
		d, err := Create(ctx, be, "d", CreateOptions{Size: size, Layers: wrappers(ring)})
		require.NoError(t, err)
		grew := int64(heapInUse()) - int64(before)
		require.Less(t, grew, int64(1<<20), "size %d: an empty disk took %d bytes of heap", size, grew)

		p := randBytes(BlockSize)
		offs := []int64{0, size / 3 / BlockSize * BlockSize, size - BlockSize}
		for _, off := range offs {
			_, err := d.WriteAt(p, off)
			require.NoError(t, err)
		}
		require.Len(t, d.dirty.list(), len(offs), "each written chunk is to be synced")
		require.NoError(t, d.Sync())
		// Format 3 leaves each chunk it committed to one more Sync, for
		// the zeros over the older state copy (see syncChunk).
		require.Len(t, d.dirty.list(), len(offs))
		require.NoError(t, d.Sync())
		require.Empty(t, d.dirty.list(), "the Syncs leave no chunk to visit")
		_, err = d.WriteAt(p, offs[1]+BlockSize)
		require.NoError(t, err)
		require.Len(t, d.dirty.list(), 1)
		require.NoError(t, d.Close())

		d, err = Open(ctx, be, "d", ring)
		require.NoError(t, err)
		for _, off := range append(offs, offs[1]+BlockSize) {
			got := make([]byte, BlockSize)
			_, err := d.ReadAt(got, off)
			require.NoError(t, err)
			require.Equal(t, p, got, "size %d offset %d", size, off)
		}
		require.Equal(t, len(offs), d.Stats().ChunksOpen)
		require.NoError(t, d.Close())
	}
}
