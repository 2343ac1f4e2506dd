// Package latency is a storage.Backend decorator that delays every call,
// to see how the layers above behave when the backing store is remote
// (an object store a few milliseconds away) while testing on a local
// directory.
package latency

import (
	"context"
	"time"

	"hostcrypt/storage"
)

// New returns b with d added before every Backend and Chunk call. The
// delay is a sleep, not a queue: concurrent calls wait in parallel, as
// they would on a network with enough bandwidth. With d <= 0 it returns b.
func New(b storage.Backend, d time.Duration) storage.Backend {
	if d <= 0 {
		return b
	}
	return &backend{b: b, d: d}
}

type backend struct {
	b storage.Backend
	d time.Duration
}

// Unwrap returns the backend being delayed.
func (l *backend) Unwrap() storage.Backend { return l.b }

// wait sleeps for the delay, or less if ctx ends first: a caller that
// gives up should not pay the whole simulated round trip.
func (l *backend) wait(ctx context.Context) error {
	t := time.NewTimer(l.d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *backend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	c, err := l.b.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return &chunk{c: c, d: l.d}, nil
}

func (l *backend) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	return l.b.ReadMeta(ctx, key)
}

func (l *backend) WriteMeta(ctx context.Context, key string, data []byte) error {
	if err := l.wait(ctx); err != nil {
		return err
	}
	return l.b.WriteMeta(ctx, key, data)
}

func (l *backend) ReadMetaVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	if err := l.wait(ctx); err != nil {
		return nil, storage.NoVersion, err
	}
	return l.b.ReadMetaVersion(ctx, key)
}

func (l *backend) WriteMetaIf(ctx context.Context, key string, data []byte, ifVersion storage.Version) (storage.Version, error) {
	if err := l.wait(ctx); err != nil {
		return storage.NoVersion, err
	}
	return l.b.WriteMetaIf(ctx, key, data, ifVersion)
}

func (l *backend) Delete(ctx context.Context, key string) error {
	if err := l.wait(ctx); err != nil {
		return err
	}
	return l.b.Delete(ctx, key)
}

func (l *backend) List(ctx context.Context, prefix string) ([]string, error) {
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	return l.b.List(ctx, prefix)
}

func (l *backend) Usage(ctx context.Context, prefix string) (int64, error) {
	if err := l.wait(ctx); err != nil {
		return 0, err
	}
	return l.b.Usage(ctx, prefix)
}

func (l *backend) Close() error {
	time.Sleep(l.d)
	return l.b.Close()
}

// chunk delays each call with a plain sleep: the data path has no context
// to cut it short. It takes no prefetch hints (storage.Prefetcher): it
// stands for a store that keeps nothing near the caller.
type chunk struct {
	c storage.Chunk
	d time.Duration
}

func (c *chunk) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(c.d)
	return c.c.ReadAt(p, off)
}

func (c *chunk) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(c.d)
	return c.c.WriteAt(p, off)
}

func (c *chunk) PunchHole(off, n int64) error {
	time.Sleep(c.d)
	return c.c.PunchHole(off, n)
}

func (c *chunk) Sync() error {
	time.Sleep(c.d)
	return c.c.Sync()
}

func (c *chunk) Close() error {
	time.Sleep(c.d)
	return c.c.Close()
}
