package storagetest

import (
	"context"
	"sync/atomic"

	"hostcrypt/storage"
)

// Counting is a storage.Backend decorator for tests that counts the
// data-path calls reaching the backend it wraps, prefetch hints included
// (passed on, and taken when the backend beneath takes them).
type Counting struct {
	storage.Backend
	Reads, Writes, Syncs, Prefetches atomic.Int64
}

// OpenChunk opens the chunk beneath and counts its calls.
func (b *Counting) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := b.Backend.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return &countingChunk{Chunk: c, b: b}, nil
}

type countingChunk struct {
	storage.Chunk
	b *Counting
}

func (c *countingChunk) ReadAt(p []byte, off int64) (int, error) {
	c.b.Reads.Add(1)
	return c.Chunk.ReadAt(p, off)
}

func (c *countingChunk) WriteAt(p []byte, off int64) (int, error) {
	c.b.Writes.Add(1)
	return c.Chunk.WriteAt(p, off)
}

func (c *countingChunk) Prefetch(off, n int64) bool {
	c.b.Prefetches.Add(1)
	return storage.Prefetch(c.Chunk, off, n)
}

func (c *countingChunk) Sync() error {
	c.b.Syncs.Add(1)
	return c.Chunk.Sync()
}
