// Package storage defines where encrypted disks live: a Backend holding
// objects by key, and a Chunk for random access inside one object.
//
// The interface is the contract every backend implements, and the
// storagetest package checks it, so the disk engine can rely on exactly
// what is written here and on nothing a particular backend happens to do.
// Latency, caching and retries belong in decorators that wrap a Backend,
// not in a backend.
package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// MaxKeyLen is the longest key, in bytes.
const MaxKeyLen = 512

// MaxSegmentLen is the longest segment of a key, in bytes. It is the
// common file name limit, so that a key valid for one backend is valid for
// every backend, including one that maps segments to file names.
const MaxSegmentLen = 255

var (
	// ErrNotFound is returned, wrapped, for an object that does not exist.
	ErrNotFound = errors.New("storage: object not found")
	// ErrInvalidKey is returned, wrapped, for a key breaking the key rules;
	// the error message names the key and the rule it breaks.
	ErrInvalidKey = errors.New("storage: invalid key")
	// ErrClosed is returned, wrapped, by a Backend method called after Close.
	ErrClosed = errors.New("storage: backend closed")
	// ErrConflict is returned, wrapped, by WriteMetaIf when the metadata
	// object is no longer at the version the caller read: it was written,
	// created or deleted since.
	ErrConflict = errors.New("storage: object changed since it was read")
	// ErrNotRegular is returned, wrapped, when the backing store holds
	// something at a key's place, or on the way to it, that the backend
	// did not put there and does not use: for a backend over a directory,
	// a symbolic link, a device, a FIFO or a socket. The message names the
	// key (and the part of it in the way) and nothing of what is there.
	ErrNotRegular = errors.New("storage: not a regular object")
)

// A Backend holds objects named by keys.
//
// A key is a '/'-separated list of segments made of [A-Za-z0-9._-]; no
// segment is empty, and none starts with '.' (which rules out "." and ".."
// and leaves dot names free for a backend's own temporary files). A
// segment is at most MaxSegmentLen bytes and a key at most MaxKeyLen. Every
// method rejects a key breaking these rules with an error wrapping
// ErrInvalidKey. A key may not be both an object and a leading part of
// another object's key ("a/b" and "a/b/c"); a backend may refuse to create
// the second one.
//
// Two kinds of object share the namespace, and the caller decides which
// kind a key is:
//   - Chunk objects are large and accessed at offsets through OpenChunk.
//     They are sparse: a range never written reads as zeros, and so does
//     everything past the end (a chunk has no EOF for readers). Writes are
//     durable only after Chunk.Sync.
//   - Metadata objects are small and replaced whole with WriteMeta. A
//     reader sees the old or the new value, never a mix, even when the
//     writer crashes, and the new value is durable when WriteMeta returns.
//     They can also be changed by compare-and-swap: ReadMetaVersion
//     returns a value with its Version, and WriteMetaIf replaces it only
//     if it is still at that version. Of several writers racing from one
//     version exactly one succeeds; the others get ErrConflict, read
//     again and retry. What a Version is belongs to the backend (RADOS'
//     object version; a digest of the content for a directory); callers
//     only compare it, and NoVersion stands for "no object".
//
// A prefix, as taken by List and Usage, is "" for the whole backend or a
// valid key P, which names the objects whose keys start with P + "/", at
// any depth (not P itself).
//
// A backend never leads out of its own store. Whatever a key names, and
// whatever someone with access to the backing store has put there, no call
// creates, writes, reads or deletes anything outside the store, and none
// blocks on what it finds there. Where the store holds, at a key's place
// or on the way to it, something the backend did not put there and cannot
// use as an object or a directory of keys (for a backend over a directory:
// a symbolic link, a device, a FIFO, a socket), every method naming that
// key fails with an error wrapping ErrNotRegular, and so do List and Usage
// over it. It is not followed, read, replaced or removed, and not taken
// for a missing object. (An object and a prefix in each other's way are a
// different matter, described above.)
//
// A Backend is safe for concurrent use. Methods taking a context honour
// its cancellation where they may block.
type Backend interface {
	// OpenChunk opens the chunk object key for reading and writing. When
	// the object does not exist, it is created empty if create is true,
	// and ErrNotFound is returned otherwise.
	OpenChunk(ctx context.Context, key string, create bool) (Chunk, error)
	// ReadMeta returns the whole value of the metadata object key, or
	// ErrNotFound.
	ReadMeta(ctx context.Context, key string) ([]byte, error)
	// WriteMeta creates or atomically replaces the metadata object key with
	// data. The new value is durable when WriteMeta returns nil. WriteMeta
	// does not keep data.
	WriteMeta(ctx context.Context, key string, data []byte) error
	// ReadMetaVersion is ReadMeta that also returns the version of the
	// value read, for WriteMetaIf.
	ReadMetaVersion(ctx context.Context, key string) ([]byte, Version, error)
	// WriteMetaIf replaces the metadata object key with data, as WriteMeta
	// does, only if it is still at version ifVersion (as ReadMetaVersion
	// returned it), or, with NoVersion, only if it does not exist; it
	// returns the new version. Otherwise nothing is written and the error
	// wraps ErrConflict. A WriteMeta or Delete of the key in between makes
	// it conflict too.
	WriteMetaIf(ctx context.Context, key string, data []byte, ifVersion Version) (Version, error)
	// Delete removes the object key, of either kind, durably, or returns
	// ErrNotFound. What happens to a chunk of key still open is
	// backend-defined; callers close it first.
	Delete(ctx context.Context, key string) error
	// List returns the keys of the objects under prefix, sorted. It never
	// returns anything that is not an object, such as a backend's
	// temporary files. A prefix with no objects under it gives an empty
	// list and no error. A store that lists in no order, or has no
	// listing by prefix (RADOS), sorts and filters in the backend, so List
	// may cost time in proportion to every object of the backend: it is
	// for management, not for the data path.
	List(ctx context.Context, prefix string) ([]string, error)
	// Usage returns the bytes of backing space allocated to the objects
	// under prefix. Holes cost nothing: a sparse chunk counts the space it
	// really takes, not its size. A backend whose store reports no
	// allocation per object (RADOS) reports logical sizes instead, each
	// object counting up to its last byte, holes included; it says so in
	// its doc. Either way an object counts at least the bytes written
	// into it. Writes not yet synced may or may not be counted.
	Usage(ctx context.Context, prefix string) (int64, error)
	// Close releases the backend. Later calls return ErrClosed. Whether
	// chunks still open keep working is backend-defined; callers close
	// their chunks first.
	Close() error
}

// Version identifies one value of a metadata object (see Backend). A
// backend never gives an object that exists NoVersion.
type Version uint64

// NoVersion stands for an object that does not exist.
const NoVersion Version = 0

// A Chunk is random access to one chunk object.
//
// A Chunk is safe for concurrent use by many goroutines, as *os.File is:
// ReadAt and WriteAt may run at the same time at disjoint or overlapping
// offsets, and an implementation takes no lock of its own on that path,
// because the disk engine issues one call per block from many goroutines
// and a lock here would serialise a whole disk. Overlapping writes racing
// each other leave either one's bytes, in units the backend defines.
//
// The data path takes no context, on purpose: it is one call per block,
// like os.File, where allocating and checking a context would cost on the
// hottest path, and the caller (the FUSE request) has no deadline to
// forward. A backend that may block for long, such as a remote one, bounds
// each call itself and reports a timeout as an error.
//
// Offsets and lengths are in bytes; a negative one is an error.
type Chunk interface {
	// ReadAt fills p from offset off and returns len(p), nil; ranges never
	// written and ranges past the end read as zeros. Unlike io.ReaderAt,
	// it never returns io.EOF: n < len(p) only with an I/O error.
	ReadAt(p []byte, off int64) (n int, err error)
	// WriteAt writes p at offset off, growing the chunk as needed; the gap
	// before off, if any, reads as zeros. n < len(p) only with an error.
	WriteAt(p []byte, off int64) (n int, err error)
	// PunchHole makes n bytes from off read as zeros, freeing their
	// backing space where the backend can. It never grows the chunk.
	PunchHole(off, n int64) error
	// Sync makes every WriteAt and PunchHole completed before it durable,
	// including the existence of a chunk just created.
	Sync() error
	// Close releases the chunk; it does not sync.
	Close() error
}

// Prefetcher is a Chunk that can start reading a range into where its
// backend keeps what it read (the page cache of a local file) without
// waiting for it, so that a read of it soon after is a hit. It is a hint: a
// failure is ignored, and the data a later ReadAt returns is the same
// either way. Prefetch reports whether the hint was taken: a decorator
// implements it by passing the hint down (see the function Prefetch), and
// says false when the chunk beneath keeps nothing near the caller. A
// backend that keeps nothing near the caller does not implement it.
type Prefetcher interface {
	Prefetch(off, n int64) bool
}

// Prefetch passes a prefetch hint to c when c takes one, and reports
// whether it did. Decorators call it to pass the hint on: a decorator that
// left Prefetcher out would hide the chunk beneath from the caller, which
// then reads the whole range itself.
func Prefetch(c Chunk, off, n int64) bool {
	pf, ok := c.(Prefetcher)
	return ok && pf.Prefetch(off, n)
}

// ValidKey returns nil if key follows the key rules of Backend, and
// otherwise an error wrapping ErrInvalidKey that names the key and the
// rule.
func ValidKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w %q: longer than %d bytes", ErrInvalidKey, key, MaxKeyLen)
	}
	for seg := range strings.SplitSeq(key, "/") {
		switch {
		case seg == "":
			return fmt.Errorf("%w %q: empty segment (leading, trailing or double '/')", ErrInvalidKey, key)
		case seg[0] == '.':
			return fmt.Errorf("%w %q: segment %q starts with '.'", ErrInvalidKey, key, seg)
		case len(seg) > MaxSegmentLen:
			return fmt.Errorf("%w %q: a segment is longer than %d bytes", ErrInvalidKey, key, MaxSegmentLen)
		}
		for i := 0; i < len(seg); i++ {
			if !keyByte(seg[i]) {
				return fmt.Errorf("%w %q: byte %q is not one of [A-Za-z0-9._-]", ErrInvalidKey, key, seg[i])
			}
		}
	}
	return nil
}

// ValidPrefix is ValidKey for the prefix of List and Usage, where ""
// (everything) is valid too.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	return ValidKey(prefix)
}

func keyByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-'
}
