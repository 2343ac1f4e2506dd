package cache

import (
	"context"
	"errors"
	"fmt"

	"hostcrypt/storage"
)

// Volume is the random access a disk image offers: what an ImageCache sits
// on. The disk engine's *disk.Disk is one.
type Volume interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Discard makes a range read as zeros.
	Discard(off, n int64) error
	Sync() error
	Size() int64
}

// ImageCache is a host cache above a volume instead of below the disk
// engine: it keeps what the volume's readers and writers see, so over an
// encrypted disk its pages are plaintext. It is the host cache of a VM
// without encryption at host, where the host keeps plaintext and the
// storage side encrypts; with encryption at host the cache belongs under
// the engine (New over the storage backend).
//
// It has the modes, bound, write-back and crash recovery of Cache: the
// volume is the one object of the remote backend. After a crash, NewImage
// over the same directory writes the dirty pages back into the volume
// before it returns. ImageCache implements the same Volume interface, so
// the image the VM sees is the ImageCache itself.
type ImageCache struct {
	c  *Cache
	ch storage.Chunk
	v  Volume
}

// imageKey is the one object of a volume seen as a backend.
const imageKey = "image"

// NewImage returns a host cache over v. With mode None it adds nothing but
// still recovers a crashed cache left in o.Dir.
func NewImage(ctx context.Context, v Volume, o Options) (*ImageCache, error) {
	c, err := New(ctx, &volumeBackend{v: v}, o)
	if err != nil {
		return nil, err
	}
	ch, err := c.OpenChunk(ctx, imageKey, false)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &ImageCache{c: c, ch: ch, v: v}, nil
}

func (ic *ImageCache) check(off, n int64) error {
	if size := ic.v.Size(); off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("range %d+%d is outside the image (%d bytes)", off, n, size)
	}
	return nil
}

// ReadAt reads from the cache, filling missing pages from the volume.
func (ic *ImageCache) ReadAt(p []byte, off int64) (int, error) {
	if err := ic.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	return ic.ch.ReadAt(p, off)
}

// lender is a volume that sometimes holds the data of a read in a buffer
// of its own already (the disk engine's read-ahead): ReadLent reads like
// ReadAt into p, or answers with that buffer and a release to call once
// the data was used.
type lender interface {
	ReadLent(p []byte, off int64) (data []byte, release func(), err error)
}

// ReadLent is ReadAt, except that a read that goes around the cache to a
// volume that lends its buffers (the disk engine) may answer with the
// volume's buffer instead of copying it into p: then release is not nil
// and must be called once data was used. Otherwise data is p.
func (ic *ImageCache) ReadLent(p []byte, off int64) (data []byte, release func(), err error) {
	if err := ic.check(off, int64(len(p))); err != nil {
		return nil, nil, err
	}
	h, ok := ic.ch.(*chunk)
	l, lends := ic.v.(lender)
	if !ok || !lends {
		n, err := ic.ch.ReadAt(p, off)
		return p[:n], nil, err
	}
	got, n, err := h.read(p, off, func(p []byte, off int64) (lent, error) {
		data, release, err := l.ReadLent(p, off)
		if err != nil {
			if release != nil {
				release()
			}
			return lent{}, err
		}
		return lent{data: data, release: release}, nil
	})
	if err != nil {
		return nil, nil, err
	}
	if got.release != nil {
		return got.data, got.release, nil
	}
	if got.data != nil {
		return got.data, nil, nil
	}
	return p[:n], nil, nil
}

// WriteAt writes through (ReadOnly) or into the cache (ReadWrite).
func (ic *ImageCache) WriteAt(p []byte, off int64) (int, error) {
	if err := ic.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	return ic.ch.WriteAt(p, off)
}

// Discard drops the cached pages of the range and discards it in the
// volume.
func (ic *ImageCache) Discard(off, n int64) error {
	if err := ic.check(off, n); err != nil {
		return err
	}
	return ic.ch.PunchHole(off, n)
}

// Sync makes completed writes durable: in the cache directory for
// ReadWrite, in the volume otherwise.
func (ic *ImageCache) Sync() error { return ic.ch.Sync() }

// Flush writes every dirty page back into the volume and syncs it.
func (ic *ImageCache) Flush(ctx context.Context) error { return ic.c.Flush(ctx) }

// Size is the volume's size now (a volume may grow while cached).
func (ic *ImageCache) Size() int64 { return ic.v.Size() }

// Stats returns the cache's counters.
func (ic *ImageCache) Stats() Stats { return ic.c.Stats() }

// Close writes every dirty page back to the volume and syncs it, then
// closes the cache. It does not close the volume.
func (ic *ImageCache) Close() error {
	return errors.Join(ic.ch.Close(), ic.c.Close())
}

// volumeBackend shows a volume as a backend holding one chunk object,
// imageKey, for the cache to sit on.
type volumeBackend struct{ v Volume }

var errVolumeOnly = errors.New("a volume backend holds one chunk object and no metadata")

func (b *volumeBackend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	if key != imageKey {
		return nil, fmt.Errorf("%w: %q", storage.ErrNotFound, key)
	}
	return volumeChunk{b.v}, nil
}

func (b *volumeBackend) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	return nil, fmt.Errorf("%w: %q", storage.ErrNotFound, key)
}

func (b *volumeBackend) WriteMeta(ctx context.Context, key string, data []byte) error {
	return errVolumeOnly
}

func (b *volumeBackend) ReadMetaVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	return nil, storage.NoVersion, fmt.Errorf("%w: %q", storage.ErrNotFound, key)
}

func (b *volumeBackend) WriteMetaIf(ctx context.Context, key string, data []byte, ifVersion storage.Version) (storage.Version, error) {
	return storage.NoVersion, errVolumeOnly
}

func (b *volumeBackend) Delete(ctx context.Context, key string) error { return errVolumeOnly }

func (b *volumeBackend) List(ctx context.Context, prefix string) ([]string, error) {
	return []string{imageKey}, nil
}

func (b *volumeBackend) Usage(ctx context.Context, prefix string) (int64, error) {
	return 0, errVolumeOnly
}

func (b *volumeBackend) Close() error { return nil }

// volumeChunk is the volume as a chunk: past the end it reads zeros, as a
// chunk does, and refuses writes.
type volumeChunk struct{ v Volume }

func (c volumeChunk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	size := c.v.Size()
	n := len(p)
	if off >= size {
		clear(p)
		return n, nil
	}
	if rest := size - off; int64(n) > rest {
		clear(p[rest:])
		p = p[:rest]
	}
	if _, err := c.v.ReadAt(p, off); err != nil {
		return 0, err
	}
	return n, nil
}

func (c volumeChunk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > c.v.Size() {
		return 0, fmt.Errorf("write of %d bytes at %d is outside the volume (%d bytes)", len(p), off, c.v.Size())
	}
	return c.v.WriteAt(p, off)
}

func (c volumeChunk) PunchHole(off, n int64) error {
	size := c.v.Size()
	if off >= size {
		return nil
	}
	return c.v.Discard(off, min(n, size-off))
}

func (c volumeChunk) Sync() error  { return c.v.Sync() }
func (c volumeChunk) Close() error { return nil }
