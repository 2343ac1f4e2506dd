// Package storagetest is the conformance suite of storage.Backend: every
// backend and every decorator runs it, so the contract written in package
// storage is checked once, in one place.
package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// Options tunes Run for what a backend can offer.
type Options struct {
	// Reopen, if set, returns a new Backend over the same stored objects
	// as b, which the suite has closed (after syncing its chunks). The
	// persistence test is skipped without it.
	Reopen func(t *testing.T, b storage.Backend) storage.Backend
	// LogicalUsage is set for a backend whose Usage reports logical sizes
	// rather than allocated space (see storage.Backend.Usage): the suite
	// then checks that holes keep sizes from growing instead of checking
	// that they cost nothing.
	LogicalUsage bool
	// Foreign, if set, puts at key's place in b's backing store something
	// the backend did not put there and must refuse (for a backend over a
	// directory: a symbolic link out of it, or a FIFO), as someone with
	// access to the store could. The test of that rule is skipped without
	// it.
	Foreign func(t *testing.T, b storage.Backend, key string)
}

// Run runs the conformance suite. open returns a new, empty Backend for
// one subtest; Run closes it at the end of that subtest. Subtests run in
// parallel, so open is called concurrently. At most one Options may be
// given.
func Run(t *testing.T, open func(t *testing.T) storage.Backend, opts ...Options) {
	require.LessOrEqual(t, len(opts), 1, "storagetest.Run takes at most one Options")
	var o Options
	if len(opts) == 1 {
		o = opts[0]
	}
	s := &suite{open: open, opts: o}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"InvalidKeys", s.invalidKeys},
		{"ValidKeys", s.validKeys},
		{"NotFound", s.notFound},
		{"Meta", s.meta},
		{"MetaAtomicReplace", s.metaAtomicReplace},
		{"MetaCompareAndSwap", s.metaCAS},
		{"MetaCompareAndSwapRace", s.metaCASRace},
		{"List", s.list},
		{"ChunkSparse", s.chunkSparse},
		{"ChunkOffsets", s.chunkOffsets},
		{"ChunkConcurrent", s.chunkConcurrent},
		{"PunchHole", s.punchHole},
		{"Delete", s.delete},
		{"Usage", s.usage},
		{"Closed", s.closed},
		{"Reopen", s.reopen},
		{"Foreign", s.foreign},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t)
		})
	}
}

type suite struct {
	open func(t *testing.T) storage.Backend
	opts Options
}

// backend opens a fresh backend closed at the end of t.
func (s *suite) backend(t *testing.T) storage.Backend {
	b := s.open(t)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func chunk(t *testing.T, b storage.Backend, key string) storage.Chunk {
	c, err := b.OpenChunk(t.Context(), key, true)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func random(t testing.TB, n int) []byte {
	p := make([]byte, n)
	_, err := rand.Read(p)
	require.NoError(t, err)
	return p
}

func readAt(t *testing.T, c storage.Chunk, off int64, n int) []byte {
	p := bytes.Repeat([]byte{0xAA}, n) // not zeros: a read must overwrite it
	m, err := c.ReadAt(p, off)
	require.NoError(t, err)
	require.Equal(t, n, m)
	return p
}

func isZero(p []byte) bool { return !slices.ContainsFunc(p, func(b byte) bool { return b != 0 }) }

var badKeys = []struct{ key, why string }{
	{"", "empty"},
	{"/a", "leading slash"},
	{"a/", "trailing slash"},
	{"a//b", "empty segment"},
	{".", "dot"},
	{"..", "dot dot"},
	{"a/./b", "dot segment"},
	{"a/../b", "dot dot segment"},
	{"../a", "escapes upward"},
	{".hidden", "segment starts with a dot"},
	{"a/.tmp-x", "inner segment starts with a dot"},
	{"a b", "space"},
	{`a\b`, "backslash"},
	{"a:b", "colon"},
	{"a\x00b", "NUL"},
	{"é", "non-ASCII"},
	{"a/*", "glob"},
	{strings.Repeat("a", storage.MaxSegmentLen+1), "segment too long"},
	{strings.Repeat("abcdefg/", storage.MaxKeyLen/8) + "a", "key too long"},
}

// goodKeys are all valid and can live side by side in one backend.
var goodKeys = []string{
	"a",
	"Z",
	"A-Z_0.9",
	"x.",
	"a..b",
	"-_-",
	"disks/d1/chunks/00000000",
	"disks/d1/meta",
	"disks/d10/meta",
	"disks/d1-x",
	strings.Repeat("k", storage.MaxSegmentLen),
	// Exactly MaxKeyLen bytes.
	"long/" + strings.Repeat("s", 250) + "/" + strings.Repeat("t", 250) + "/uuuuu",
}

func (s *suite) invalidKeys(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	for _, tc := range badKeys {
		t.Run(tc.why, func(t *testing.T) {
			check := func(method string, err error) {
				t.Helper()
				require.ErrorIs(t, err, storage.ErrInvalidKey, "%s(%q)", method, tc.key)
				if tc.key != "" {
					assert.Contains(t, err.Error(), fmt.Sprintf("%q", tc.key), "%s: the error names the key", method)
				}
			}
			for _, create := range []bool{false, true} {
				c, err := b.OpenChunk(ctx, tc.key, create)
				require.Nil(t, c)
				check("OpenChunk", err)
			}
			_, err := b.ReadMeta(ctx, tc.key)
			check("ReadMeta", err)
			check("WriteMeta", b.WriteMeta(ctx, tc.key, []byte("x")))
			_, _, err = b.ReadMetaVersion(ctx, tc.key)
			check("ReadMetaVersion", err)
			_, err = b.WriteMetaIf(ctx, tc.key, []byte("x"), storage.NoVersion)
			check("WriteMetaIf", err)
			check("Delete", b.Delete(ctx, tc.key))
			if tc.key != "" { // "" is the whole backend for List and Usage
				_, err = b.List(ctx, tc.key)
				check("List", err)
				_, err = b.Usage(ctx, tc.key)
				check("Usage", err)
			}
		})
	}
	keys, err := b.List(ctx, "")
	require.NoError(t, err)
	require.Empty(t, keys, "a rejected key must leave nothing behind")
}

func (s *suite) validKeys(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	for i, key := range goodKeys {
		require.NoError(t, storage.ValidKey(key))
		if i%2 == 0 {
			require.NoError(t, b.WriteMeta(ctx, key, []byte(key)), key)
		} else {
			c, err := b.OpenChunk(ctx, key, true)
			require.NoError(t, err, key)
			_, err = c.WriteAt([]byte(key), 0)
			require.NoError(t, err)
			require.NoError(t, c.Close())
		}
	}
	for _, key := range goodKeys {
		got, err := b.ReadMeta(ctx, key) // either kind reads back whole
		require.NoError(t, err, key)
		require.Equal(t, key, string(got))
		_, err = b.List(ctx, key)
		require.NoError(t, err, key)
		_, err = b.Usage(ctx, key)
		require.NoError(t, err, key)
	}
	keys, err := b.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, slices.Sorted(slices.Values(goodKeys)), keys)
	for _, key := range goodKeys {
		require.NoError(t, b.Delete(ctx, key), key)
	}
	keys, err = b.List(ctx, "")
	require.NoError(t, err)
	require.Empty(t, keys)
}

func (s *suite) notFound(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	require.NoError(t, b.WriteMeta(ctx, "dir/meta", []byte("m")))
	// Missing names, a prefix that is no object, and a name below an object.
	for _, key := range []string{"missing", "dir", "dir/missing", "dir/meta/below", "other/deeper/missing"} {
		c, err := b.OpenChunk(ctx, key, false)
		require.ErrorIs(t, err, storage.ErrNotFound, "OpenChunk(%q)", key)
		require.Nil(t, c)
		_, err = b.ReadMeta(ctx, key)
		require.ErrorIs(t, err, storage.ErrNotFound, "ReadMeta(%q)", key)
		require.ErrorIs(t, b.Delete(ctx, key), storage.ErrNotFound, "Delete(%q)", key)
		if key != "dir" {
			keys, err := b.List(ctx, key)
			require.NoError(t, err, "List(%q)", key)
			require.Empty(t, keys)
			u, err := b.Usage(ctx, key)
			require.NoError(t, err, "Usage(%q)", key)
			require.Zero(t, u)
		}
	}
	got, err := b.ReadMeta(ctx, "dir/meta")
	require.NoError(t, err)
	require.Equal(t, "m", string(got), "failed lookups must not disturb the object")
	keys, err := b.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, []string{"dir/meta"}, keys, "failed lookups must create nothing")
}

func (s *suite) meta(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	for _, data := range [][]byte{[]byte("first"), {}, random(t, 64*kib), []byte("short again")} {
		require.NoError(t, b.WriteMeta(ctx, "m", data))
		got, err := b.ReadMeta(ctx, "m")
		require.NoError(t, err)
		require.Equal(t, len(data), len(got))
		require.True(t, bytes.Equal(data, got), "read back what was written")
	}
	// WriteMeta must not keep the caller's buffer.
	buf := []byte("kept?")
	require.NoError(t, b.WriteMeta(ctx, "m", buf))
	copy(buf, "XXXXX")
	got, err := b.ReadMeta(ctx, "m")
	require.NoError(t, err)
	require.Equal(t, "kept?", string(got))
}

func (s *suite) metaAtomicReplace(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	// Values of different lengths and bytes: a mix of two would show.
	values := [][]byte{bytes.Repeat([]byte{'a'}, 1000), bytes.Repeat([]byte{'b'}, 5000), bytes.Repeat([]byte{'c'}, 17)}
	require.NoError(t, b.WriteMeta(ctx, "m", values[0]))
	var writers, readers sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		writers.Go(func() {
			for i := range 20 {
				assert.NoError(t, b.WriteMeta(ctx, "m", values[(w+i)%len(values)]))
			}
		})
	}
	for range 4 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := b.ReadMeta(ctx, "m")
				if !assert.NoError(t, err) {
					return
				}
				if !assert.True(t, slices.ContainsFunc(values, func(v []byte) bool { return bytes.Equal(v, got) }),
					"read a value never written whole (len %d)", len(got)) {
					return
				}
			}
		})
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	keys, err := b.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, []string{"m"}, keys, "no temporary object may show")
}

// metaCAS checks compare-and-swap on one writer: a write from the version
// read succeeds and returns the new version; a write from a version no
// longer current, or to create what exists, or over what was deleted,
// changes nothing and wraps ErrConflict.
func (s *suite) metaCAS(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	_, _, err := b.ReadMetaVersion(ctx, "c/rec")
	require.ErrorIs(t, err, storage.ErrNotFound)
	v1, err := b.WriteMetaIf(ctx, "c/rec", []byte("one"), storage.NoVersion)
	require.NoError(t, err, "creating an object that does not exist")
	require.NotEqual(t, storage.NoVersion, v1)
	_, err = b.WriteMetaIf(ctx, "c/rec", []byte("again"), storage.NoVersion)
	require.ErrorIs(t, err, storage.ErrConflict, "creating an object that exists")

	data, v, err := b.ReadMetaVersion(ctx, "c/rec")
	require.NoError(t, err)
	require.Equal(t, "one", string(data))
	require.Equal(t, v1, v, "the version WriteMetaIf returned is the one read")
	v2, err := b.WriteMetaIf(ctx, "c/rec", []byte("two"), v1)
	require.NoError(t, err)
	require.NotEqual(t, v1, v2)
	_, err = b.WriteMetaIf(ctx, "c/rec", []byte("stale"), v1)
	require.ErrorIs(t, err, storage.ErrConflict, "a version no longer current")
	got, err := b.ReadMeta(ctx, "c/rec")
	require.NoError(t, err)
	require.Equal(t, "two", string(got), "a conflict writes nothing")

	// A plain write in between makes a compare-and-swap from before it
	// conflict, and so does a delete.
	_, v, err = b.ReadMetaVersion(ctx, "c/rec")
	require.NoError(t, err)
	require.NoError(t, b.WriteMeta(ctx, "c/rec", []byte("three")))
	_, err = b.WriteMetaIf(ctx, "c/rec", []byte("lost"), v)
	require.ErrorIs(t, err, storage.ErrConflict, "after a plain write")
	_, v, err = b.ReadMetaVersion(ctx, "c/rec")
	require.NoError(t, err)
	require.NoError(t, b.Delete(ctx, "c/rec"))
	_, err = b.WriteMetaIf(ctx, "c/rec", []byte("resurrected"), v)
	require.ErrorIs(t, err, storage.ErrConflict, "after a delete")
	_, err = b.ReadMeta(ctx, "c/rec")
	require.ErrorIs(t, err, storage.ErrNotFound, "a conflict over a deleted object creates nothing")

	// WriteMetaIf must not keep the caller's buffer either.
	buf := []byte("kept?")
	_, err = b.WriteMetaIf(ctx, "c/rec", buf, storage.NoVersion)
	require.NoError(t, err)
	copy(buf, "XXXXX")
	got, err = b.ReadMeta(ctx, "c/rec")
	require.NoError(t, err)
	require.Equal(t, "kept?", string(got))
	keys, err := b.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, []string{"c/rec"}, keys, "no temporary object may show")
}

// metaCASRace checks that of writers racing from one version exactly one
// wins, and that increments made by compare-and-swap loops are never lost.
func (s *suite) metaCASRace(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	v0, err := b.WriteMetaIf(ctx, "race", []byte("0"), storage.NoVersion)
	require.NoError(t, err)
	const writers = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for w := range writers {
		wg.Go(func() {
			_, err := b.WriteMetaIf(ctx, "race", []byte(fmt.Sprintf("w%d", w)), v0)
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
				return
			}
			assert.ErrorIs(t, err, storage.ErrConflict)
		})
	}
	wg.Wait()
	require.Equal(t, 1, wins, "exactly one writer from one version wins")

	// A counter incremented by compare-and-swap loops loses nothing.
	_, err = b.WriteMetaIf(ctx, "counter", []byte("0"), storage.NoVersion)
	require.NoError(t, err)
	const each = 10
	for range 4 {
		wg.Go(func() {
			for range each {
				for {
					data, v, err := b.ReadMetaVersion(ctx, "counter")
					if !assert.NoError(t, err) {
						return
					}
					var n int
					fmt.Sscan(string(data), &n)
					_, err = b.WriteMetaIf(ctx, "counter", []byte(fmt.Sprint(n+1)), v)
					if err == nil {
						break
					}
					if !assert.ErrorIs(t, err, storage.ErrConflict) {
						return
					}
				}
			}
		})
	}
	wg.Wait()
	got, err := b.ReadMeta(ctx, "counter")
	require.NoError(t, err)
	require.Equal(t, fmt.Sprint(4*each), string(got))
}

func (s *suite) list(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	keys := []string{"a-b", "a/b", "a/c/d", "a/c/e", "a0", "b", "ab/x", "a/cc"}
	for i, k := range keys {
		if i%2 == 0 {
			require.NoError(t, b.WriteMeta(ctx, k, []byte(k)))
		} else {
			require.NoError(t, chunk(t, b, k).Sync())
		}
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a-b", "a/b", "a/c/d", "a/c/e", "a/cc", "a0", "ab/x", "b"}},
		{"a", []string{"a/b", "a/c/d", "a/c/e", "a/cc"}}, // not "a-b", "a0" or "ab/x"
		{"a/c", []string{"a/c/d", "a/c/e"}},              // not "a/cc"
		{"a/c/d", []string{}},                            // an object has nothing under it
		{"ab", []string{"ab/x"}},
		{"b", []string{}},
		{"nothing", []string{}},
		{"nothing/deeper", []string{}},
	} {
		got, err := b.List(ctx, tc.prefix)
		require.NoError(t, err, "List(%q)", tc.prefix)
		require.Equal(t, tc.want, got, "List(%q)", tc.prefix)
	}
}

func (s *suite) chunkSparse(t *testing.T) {
	b := s.backend(t)
	c := chunk(t, b, "c")
	require.True(t, isZero(readAt(t, c, 0, 64*kib)), "a new chunk reads as zeros")
	require.True(t, isZero(readAt(t, c, 1<<40, 4*kib)), "far past the end reads as zeros")

	data := random(t, 4*kib)
	_, err := c.WriteAt(data, 1*mib)
	require.NoError(t, err)
	require.True(t, isZero(readAt(t, c, 0, 1*mib)), "the gap before a write reads as zeros")
	// A read straddling the end: data, then zeros.
	got := readAt(t, c, 1*mib+2*kib, 8*kib)
	require.Equal(t, data[2*kib:], got[:2*kib])
	require.True(t, isZero(got[2*kib:]))
	require.True(t, isZero(readAt(t, c, 1*mib+4*kib, 1)))
	n, err := c.ReadAt(nil, 5)
	require.NoError(t, err)
	require.Zero(t, n)

	_, err = c.ReadAt(make([]byte, 1), -1)
	require.Error(t, err, "negative offset")
	_, err = c.WriteAt([]byte{1}, -1)
	require.Error(t, err, "negative offset")
	require.Error(t, c.PunchHole(-1, 1), "negative offset")
	require.Error(t, c.PunchHole(0, -1), "negative length")
}

func (s *suite) chunkOffsets(t *testing.T) {
	b := s.backend(t)
	c := chunk(t, b, "c")
	model := make([]byte, 3*mib) // what the chunk must hold
	for _, tc := range []struct {
		off int64
		n   int
	}{
		{0, 4 * kib},
		{4 * kib, 4 * kib},
		{1, 1},
		{511, 513},
		{4095, 2},
		{12345, 70000},
		{2*mib - 3, 1*mib + 3},
		{8 * kib, 0},
		{100, 4 * kib}, // overwrites earlier writes in part
	} {
		p := random(t, tc.n)
		n, err := c.WriteAt(p, tc.off)
		require.NoError(t, err)
		require.Equal(t, tc.n, n)
		copy(model[tc.off:], p)
		require.True(t, bytes.Equal(p, readAt(t, c, tc.off, tc.n)), "read back at %d+%d", tc.off, tc.n)
	}
	require.True(t, bytes.Equal(model, readAt(t, c, 0, len(model))), "whole chunk")
	require.NoError(t, c.Sync())

	// Other handles on the same object see the same bytes; opening with
	// create set must not truncate an existing chunk.
	for _, create := range []bool{false, true} {
		c2, err := b.OpenChunk(t.Context(), "c", create)
		require.NoError(t, err)
		require.True(t, bytes.Equal(model, readAt(t, c2, 0, len(model))), "second handle, create=%v", create)
		require.NoError(t, c2.Close())
	}
}

func (s *suite) chunkConcurrent(t *testing.T) {
	b := s.backend(t)
	c := chunk(t, b, "c")
	const (
		workers = 16
		blocks  = 32 // per worker
		bs      = 4 * kib
	)
	// Block i belongs to worker i%workers: writers interleave across the
	// whole chunk, each on its own disjoint blocks.
	data := random(t, workers*blocks*bs)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for j := range blocks {
				off := int64((j*workers + w) * bs)
				_, err := c.WriteAt(data[off:off+bs], off)
				assert.NoError(t, err)
				// A read overlapping a neighbour's block, racing its writer:
				// only the error matters, the bytes may be either version.
				_, err = c.ReadAt(make([]byte, 2*bs), max(0, off-bs/2))
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	require.NoError(t, c.Sync())
	for w := range workers {
		wg.Go(func() {
			for j := range blocks {
				off := int64((j*workers + w) * bs)
				p := make([]byte, bs)
				n, err := c.ReadAt(p, off)
				assert.NoError(t, err)
				assert.Equal(t, bs, n)
				assert.True(t, bytes.Equal(data[off:off+bs], p), "block at %d", off)
			}
		})
	}
	wg.Wait()
}

func (s *suite) punchHole(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	c := chunk(t, b, "p/c")
	data := random(t, 8*mib)
	_, err := c.WriteAt(data, 0)
	require.NoError(t, err)
	require.NoError(t, c.Sync())
	before, err := b.Usage(ctx, "p")
	require.NoError(t, err)
	require.GreaterOrEqual(t, before, int64(8*mib))

	// Unaligned edges: the bytes just outside the hole must survive.
	off, n := int64(1*mib+100), int64(6*mib)
	require.NoError(t, c.PunchHole(off, n))
	require.NoError(t, c.Sync())
	got := readAt(t, c, 0, len(data))
	require.True(t, bytes.Equal(data[:off], got[:off]), "before the hole")
	require.True(t, isZero(got[off:off+n]), "the hole reads as zeros")
	require.True(t, bytes.Equal(data[off+n:], got[off+n:]), "after the hole")

	after, err := b.Usage(ctx, "p")
	require.NoError(t, err)
	if s.opts.LogicalUsage {
		require.LessOrEqual(t, after, before, "a hole does not grow the chunk")
	} else {
		require.LessOrEqual(t, after, before-5*mib, "a large hole frees its space")
	}

	// Punching at or past the end neither fails nor grows the chunk.
	require.NoError(t, c.PunchHole(int64(len(data))-10, 1*mib))
	require.NoError(t, c.PunchHole(1<<30, 1*mib))
	require.NoError(t, c.PunchHole(0, 0))
	got = readAt(t, c, int64(len(data))-20, 40)
	require.Equal(t, data[len(data)-20:len(data)-10], got[:10])
	require.True(t, isZero(got[10:]))
	u, err := b.Usage(ctx, "p")
	require.NoError(t, err)
	if s.opts.LogicalUsage {
		require.LessOrEqual(t, u, before, "punching past the end does not grow the chunk")
	} else {
		require.Less(t, u, int64(4*mib), "punching past the end allocates nothing")
	}
}

func (s *suite) delete(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	require.NoError(t, b.WriteMeta(ctx, "d/meta", []byte("m")))
	c := chunk(t, b, "d/chunks/0")
	_, err := c.WriteAt([]byte("data"), 0)
	require.NoError(t, err)
	require.NoError(t, c.Sync())
	require.NoError(t, c.Close())

	require.ErrorIs(t, b.Delete(ctx, "d"), storage.ErrNotFound, "a prefix is not an object")
	require.ErrorIs(t, b.Delete(ctx, "d/chunks"), storage.ErrNotFound, "a prefix is not an object")

	require.NoError(t, b.Delete(ctx, "d/chunks/0"))
	_, err = b.OpenChunk(ctx, "d/chunks/0", false)
	require.ErrorIs(t, err, storage.ErrNotFound)
	require.ErrorIs(t, b.Delete(ctx, "d/chunks/0"), storage.ErrNotFound, "twice")
	keys, err := b.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, []string{"d/meta"}, keys)

	require.NoError(t, b.Delete(ctx, "d/meta"))
	_, err = b.ReadMeta(ctx, "d/meta")
	require.ErrorIs(t, err, storage.ErrNotFound)
	keys, err = b.List(ctx, "")
	require.NoError(t, err)
	require.Empty(t, keys)

	// A deleted chunk comes back empty, not with its old bytes, and a
	// key's parents can be made again after everything under them went.
	c = chunk(t, b, "d/chunks/0")
	require.True(t, isZero(readAt(t, c, 0, 4)))
	require.NoError(t, b.WriteMeta(ctx, "d/meta", []byte("again")))
}

func (s *suite) usage(t *testing.T) {
	b := s.backend(t)
	ctx := t.Context()
	u0, err := b.Usage(ctx, "")
	require.NoError(t, err)
	require.Less(t, u0, int64(64*kib), "an empty backend")

	c := chunk(t, b, "dense/c")
	_, err = c.WriteAt(random(t, 2*mib), 0)
	require.NoError(t, err)
	require.NoError(t, c.Sync())
	dense, err := b.Usage(ctx, "dense")
	require.NoError(t, err)
	require.GreaterOrEqual(t, dense, int64(2*mib))

	sp := chunk(t, b, "sparse/c")
	_, err = sp.WriteAt(random(t, 4*kib), 100*mib)
	require.NoError(t, err)
	require.NoError(t, sp.Sync())
	require.True(t, isZero(readAt(t, sp, 0, 64*kib)))
	sparse, err := b.Usage(ctx, "sparse")
	require.NoError(t, err)
	require.Positive(t, sparse)
	if s.opts.LogicalUsage {
		require.Equal(t, int64(100*mib+4*kib), sparse, "a sparse chunk counts up to its last byte")
	} else {
		require.Less(t, sparse, int64(1*mib), "holes cost nothing")
	}

	all, err := b.Usage(ctx, "")
	require.NoError(t, err)
	require.GreaterOrEqual(t, all, dense+sparse, "the whole backend counts every prefix")

	// More data, more usage.
	_, err = c.WriteAt(random(t, 2*mib), 2*mib)
	require.NoError(t, err)
	require.NoError(t, c.Sync())
	grown, err := b.Usage(ctx, "dense")
	require.NoError(t, err)
	require.GreaterOrEqual(t, grown, dense+2*mib)
}

func (s *suite) closed(t *testing.T) {
	b := s.open(t)
	ctx := t.Context()
	require.NoError(t, b.Close())
	_, err := b.OpenChunk(ctx, "c", true)
	require.ErrorIs(t, err, storage.ErrClosed)
	_, err = b.ReadMeta(ctx, "m")
	require.ErrorIs(t, err, storage.ErrClosed)
	require.ErrorIs(t, b.WriteMeta(ctx, "m", nil), storage.ErrClosed)
	_, _, err = b.ReadMetaVersion(ctx, "m")
	require.ErrorIs(t, err, storage.ErrClosed)
	_, err = b.WriteMetaIf(ctx, "m", nil, storage.NoVersion)
	require.ErrorIs(t, err, storage.ErrClosed)
	require.ErrorIs(t, b.Delete(ctx, "m"), storage.ErrClosed)
	_, err = b.List(ctx, "")
	require.ErrorIs(t, err, storage.ErrClosed)
	_, err = b.Usage(ctx, "")
	require.ErrorIs(t, err, storage.ErrClosed)

	// A cancelled context is honoured too.
	b = s.backend(t)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err = b.WriteMeta(cctx, "m", []byte("x"))
	require.True(t, errors.Is(err, context.Canceled), "WriteMeta with a cancelled context: %v", err)
}

func (s *suite) reopen(t *testing.T) {
	if s.opts.Reopen == nil {
		t.Skip("no Reopen given")
	}
	b := s.open(t)
	ctx := t.Context()
	meta := random(t, 300)
	data := random(t, 64*kib)
	require.NoError(t, b.WriteMeta(ctx, "r/meta", meta))
	c, err := b.OpenChunk(ctx, "r/chunk", true)
	require.NoError(t, err)
	_, err = c.WriteAt(data, 10*mib)
	require.NoError(t, err)
	require.NoError(t, c.PunchHole(10*mib, 4*kib))
	require.NoError(t, c.Sync())
	require.NoError(t, c.Close())
	require.NoError(t, b.Close())

	b2 := s.opts.Reopen(t, b)
	t.Cleanup(func() { _ = b2.Close() })
	keys, err := b2.List(ctx, "")
	require.NoError(t, err)
	require.Equal(t, []string{"r/chunk", "r/meta"}, keys)
	got, err := b2.ReadMeta(ctx, "r/meta")
	require.NoError(t, err)
	require.Equal(t, meta, got)
	c2, err := b2.OpenChunk(ctx, "r/chunk", false)
	require.NoError(t, err)
	defer c2.Close()
	want := slices.Clone(data)
	clear(want[:4*kib])
	require.True(t, bytes.Equal(want, readAt(t, c2, 10*mib, len(data))))
	require.True(t, isZero(readAt(t, c2, 0, 64*kib)))
}

// foreign checks that something foreign at an object's place, or at a
// directory's on the way to one, is refused by every method naming it,
// without blocking, and leaves the other objects alone.
func (s *suite) foreign(t *testing.T) {
	if s.opts.Foreign == nil {
		t.Skip("no Foreign given")
	}
	b := s.backend(t)
	ctx := t.Context()
	require.NoError(t, b.WriteMeta(ctx, "f/ok", []byte("ok")))
	require.NoError(t, b.WriteMeta(ctx, "g/ok", []byte("ok")))
	s.opts.Foreign(t, b, "f/x")   // at an object's place
	s.opts.Foreign(t, b, "g/sub") // at a directory's: "g/sub/y" is below it

	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, tc := range []struct{ key, named string }{{"f/x", "f/x"}, {"g/sub/y", "g/sub"}} {
			check := func(method string, err error) {
				if assert.ErrorIs(t, err, storage.ErrNotRegular, "%s(%q)", method, tc.key) {
					assert.Contains(t, err.Error(), tc.named, "%s(%q): the error names the key", method, tc.key)
				}
			}
			for _, create := range []bool{false, true} {
				c, err := b.OpenChunk(ctx, tc.key, create)
				if err == nil {
					c.Close()
				}
				check(fmt.Sprintf("OpenChunk(create=%v)", create), err)
			}
			_, err := b.ReadMeta(ctx, tc.key)
			check("ReadMeta", err)
			check("WriteMeta", b.WriteMeta(ctx, tc.key, []byte("x")))
			_, _, err = b.ReadMetaVersion(ctx, tc.key)
			check("ReadMetaVersion", err)
			_, err = b.WriteMetaIf(ctx, tc.key, []byte("x"), storage.NoVersion)
			check("WriteMetaIf", err)
			check("Delete", b.Delete(ctx, tc.key))
		}
		for _, prefix := range []string{"", "f", "g", "g/sub"} {
			_, err := b.List(ctx, prefix)
			assert.ErrorIs(t, err, storage.ErrNotRegular, "List(%q)", prefix)
			_, err = b.Usage(ctx, prefix)
			assert.ErrorIs(t, err, storage.ErrNotRegular, "Usage(%q)", prefix)
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		// A guard against a call that never returns, not a speed goal.
		t.Fatal("a call blocked on what is at a foreign key")
	}
	for _, key := range []string{"f/ok", "g/ok"} {
		got, err := b.ReadMeta(ctx, key)
		require.NoError(t, err, "the other objects are still there")
		require.Equal(t, "ok", string(got))
	}
	keys, err := b.List(ctx, "f/ok")
	require.NoError(t, err, "a prefix beside the foreign thing lists")
	require.Empty(t, keys)
}
