package local_test

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// benchChunkSize is the span the benchmarks spread over: big enough that
// random offsets rarely repeat, small enough for any test machine.
const benchChunkSize = 256 << 20

func benchChunk(b *testing.B, fill bool) storage.Chunk {
	be, err := local.Open(filepath.Join(b.TempDir(), "store"))
	require.NoError(b, err)
	c, err := be.OpenChunk(b.Context(), "c", true)
	require.NoError(b, err)
	b.Cleanup(func() { _ = c.Close(); _ = be.Close() })
	if fill {
		// Reads of holes never touch the disk; fill first to measure data.
		p := make([]byte, 1<<20)
		for off := int64(0); off < benchChunkSize; off += int64(len(p)) {
			_, err := c.WriteAt(p, off)
			require.NoError(b, err)
		}
	}
	return c
}

func benchRandom(b *testing.B, fill bool, op func(c storage.Chunk, p []byte, off int64) (int, error)) {
	const bs = 4 << 10
	c := benchChunk(b, fill)
	b.SetBytes(bs)
	b.RunParallel(func(pb *testing.PB) {
		p := make([]byte, bs)
		r := rand.New(rand.NewPCG(rand.Uint64(), 0))
		for pb.Next() {
			off := r.Int64N(benchChunkSize/bs) * bs
			if _, err := op(c, p, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchSequential(b *testing.B, fill bool, op func(c storage.Chunk, p []byte, off int64) (int, error)) {
	const bs = 1 << 20
	c := benchChunk(b, fill)
	p := make([]byte, bs)
	b.SetBytes(bs)
	var off int64
	for b.Loop() {
		if _, err := op(c, p, off); err != nil {
			b.Fatal(err)
		}
		off = (off + bs) % benchChunkSize
	}
}

func write(c storage.Chunk, p []byte, off int64) (int, error) { return c.WriteAt(p, off) }
func read(c storage.Chunk, p []byte, off int64) (int, error)  { return c.ReadAt(p, off) }

func BenchmarkChunkWriteAt4KRandom(b *testing.B)     { benchRandom(b, false, write) }
func BenchmarkChunkReadAt4KRandom(b *testing.B)      { benchRandom(b, true, read) }
func BenchmarkChunkWriteAt1MSequential(b *testing.B) { benchSequential(b, false, write) }
func BenchmarkChunkReadAt1MSequential(b *testing.B)  { benchSequential(b, true, read) }

// BenchmarkOpenExistingChunk is the cost of opening a chunk that exists:
// the lookup beneath the root and the checks on what it finds.
func BenchmarkOpenExistingChunk(b *testing.B) {
	be, err := local.Open(filepath.Join(b.TempDir(), "store"))
	require.NoError(b, err)
	defer be.Close()
	const key = "disks/d1/chunks/00000000"
	c, err := be.OpenChunk(b.Context(), key, true)
	require.NoError(b, err)
	require.NoError(b, c.Close())
	for b.Loop() {
		c, err := be.OpenChunk(b.Context(), key, false)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
