// Package freeze is a storage.Backend decorator that takes point-in-time
// copies of the objects under a prefix while they are being written:
// copy-before-write.
//
// Freeze lists the prefix's objects at one instant, with every mutation
// through the decorator held back only for that instant. From then on, the
// first mutation of a listed object (a chunk write or hole punch, a
// Delete, a metadata write) first hands the object as it was to the
// session's save function; the copier hands over the rest with Preserve.
// Every object therefore reaches save exactly once, with its content as
// of the freeze, however the writes and the copier interleave. Objects
// created after the freeze are not part of it.
//
// The data path pays one shared lock per mutation while
// no session is open, and the save of an object's first mutation during
// one.
package freeze

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"hostcrypt/storage"
)

// Save receives an object as it was at the freeze. For a chunk object src is
// open for reading (the caller closes it); for a metadata object meta holds
// its value and src is nil.
type Save func(ctx context.Context, key string, src storage.Chunk, meta []byte) error

// Backend is the decorator. It is safe for concurrent use.
type Backend struct {
	below storage.Backend
	mu    sync.RWMutex // held shared by every mutation, exclusively by Freeze
	s     *Session
}

// New wraps below. Close does not close below.
func New(below storage.Backend) *Backend { return &Backend{below: below} }

// Session is one open freeze.
type Session struct {
	b      *Backend
	prefix string
	save   Save
	mu     sync.Mutex
	objs   map[string]*entry
	keys   []string
	pause  time.Duration
	err    error
}

type entry struct {
	mu   sync.Mutex
	meta bool
	done bool
}

// Freeze starts a session over the objects under prefix. metaKeys names the
// keys among them that are metadata objects; every other listed object is a
// chunk. Only one session is open at a time.
func (b *Backend) Freeze(ctx context.Context, prefix string, metaKeys []string, save Save) (*Session, error) {
	start := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.s != nil {
		return nil, fmt.Errorf("a copy of %s is already in progress", b.s.prefix)
	}
	keys, err := b.below.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	s := &Session{b: b, prefix: prefix, save: save, objs: make(map[string]*entry, len(keys)), keys: keys}
	isMeta := map[string]bool{}
	for _, k := range metaKeys {
		isMeta[k] = true
	}
	for _, k := range keys {
		s.objs[k] = &entry{meta: isMeta[k]}
	}
	b.s = s
	s.pause = time.Since(start)
	return s, nil
}

// Pause is how long Freeze held mutations back.
func (s *Session) Pause() time.Duration { return s.pause }

// Keys returns the objects of the freeze, sorted.
func (s *Session) Keys() []string {
	out := append([]string(nil), s.keys...)
	sort.Strings(out)
	return out
}

// Preserve hands key to save unless a mutation already did.
func (s *Session) Preserve(ctx context.Context, key string) error {
	e := s.objs[key]
	if e == nil {
		return fmt.Errorf("%s is not part of the frozen set", key)
	}
	return s.preserve(ctx, key, e)
}

func (s *Session) preserve(ctx context.Context, key string, e *entry) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.done {
		return nil
	}
	var err error
	if e.meta {
		var v []byte
		if v, err = s.b.below.ReadMeta(ctx, key); err == nil {
			err = s.save(ctx, key, nil, v)
		}
	} else {
		var src storage.Chunk
		if src, err = s.b.below.OpenChunk(ctx, key, false); err == nil {
			err = s.save(ctx, key, src, nil)
			src.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("copying %s before it changes: %w", key, err)
	}
	e.done = true
	return nil
}

// before runs before a mutation of key; the caller holds b.mu shared.
func (b *Backend) before(key string) error {
	s := b.s
	if s == nil {
		return nil
	}
	e := s.objs[key]
	if e == nil {
		return nil
	}
	if err := s.preserve(context.Background(), key, e); err != nil {
		// The write must not go ahead and destroy the frozen content; the
		// session is failed so the copy reports it.
		s.mu.Lock()
		if s.err == nil {
			s.err = err
		}
		s.mu.Unlock()
		return err
	}
	return nil
}

// End closes the session: mutations no longer copy. It returns the first
// error a mutation met while saving, if any.
func (s *Session) End() error {
	s.b.mu.Lock()
	if s.b.s == s {
		s.b.s = nil
	}
	s.b.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (b *Backend) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	c, err := b.below.OpenChunk(ctx, key, create)
	if err != nil {
		return nil, err
	}
	return &chunk{c: c, b: b, key: key}, nil
}

func (b *Backend) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	return b.below.ReadMeta(ctx, key)
}

func (b *Backend) WriteMeta(ctx context.Context, key string, data []byte) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if err := b.before(key); err != nil {
		return err
	}
	return b.below.WriteMeta(ctx, key, data)
}

func (b *Backend) ReadMetaVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	return b.below.ReadMetaVersion(ctx, key)
}

// WriteMetaIf preserves the frozen value first, as WriteMeta does; a
// conflict below then changes nothing more.
func (b *Backend) WriteMetaIf(ctx context.Context, key string, data []byte, ifVersion storage.Version) (storage.Version, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if err := b.before(key); err != nil {
		return storage.NoVersion, err
	}
	return b.below.WriteMetaIf(ctx, key, data, ifVersion)
}

func (b *Backend) Delete(ctx context.Context, key string) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if err := b.before(key); err != nil {
		return err
	}
	return b.below.Delete(ctx, key)
}

func (b *Backend) List(ctx context.Context, prefix string) ([]string, error) {
	return b.below.List(ctx, prefix)
}

func (b *Backend) Usage(ctx context.Context, prefix string) (int64, error) {
	return b.below.Usage(ctx, prefix)
}

// Close does nothing: below belongs to the caller.
func (b *Backend) Close() error { return nil }

type chunk struct {
	c   storage.Chunk
	b   *Backend
	key string
}

func (c *chunk) ReadAt(p []byte, off int64) (int, error) { return c.c.ReadAt(p, off) }

func (c *chunk) WriteAt(p []byte, off int64) (int, error) {
	c.b.mu.RLock()
	defer c.b.mu.RUnlock()
	if err := c.b.before(c.key); err != nil {
		return 0, err
	}
	return c.c.WriteAt(p, off)
}

func (c *chunk) PunchHole(off, n int64) error {
	c.b.mu.RLock()
	defer c.b.mu.RUnlock()
	if err := c.b.before(c.key); err != nil {
		return err
	}
	return c.c.PunchHole(off, n)
}

func (c *chunk) Sync() error  { return c.c.Sync() }
func (c *chunk) Close() error { return c.c.Close() }

// Prefetch passes the hint down: it changes nothing to copy.
func (c *chunk) Prefetch(off, n int64) bool { return storage.Prefetch(c.c, off, n) }
