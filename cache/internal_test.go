package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage/local"
)

// TestFlushedPageKeepsItsSlotUntilCommit covers the window inside a flush
// between marking pages clean and committing the index without them: a
// clean page still named by the committed index must not be evicted into
// another page's hands, or a crash then would write the other page's
// bytes in its place.
func TestFlushedPageKeepsItsSlotUntilCommit(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	remote, err := local.Open(filepath.Join(root, "store"))
	require.NoError(t, err)
	dir := filepath.Join(root, "cache")
	c, err := New(ctx, remote, Options{Mode: ReadWrite, Dir: dir, MaxBytes: MinBytes, FlushInterval: time.Hour,
		SequentialCutoff: -1, SlowStorage: -1})
	require.NoError(t, err)
	ch, err := c.OpenChunk(ctx, "k", true)
	require.NoError(t, err)
	a := make([]byte, PageSize)
	rand.Read(a)
	_, err = ch.WriteAt(a, 0)
	require.NoError(t, err)
	require.NoError(t, ch.Sync()) // the index names page 0

	// Write page 0 back and mark it clean, as a flush does before it commits.
	o := ch.(*chunk).o
	c.mu.Lock()
	pgs := slices.Collect(func(yield func(*page) bool) {
		for _, pg := range o.dirty {
			yield(pg)
		}
	})
	c.mu.Unlock()
	_, err = c.writeBack(o, pgs)
	require.NoError(t, err)
	// Fill every other slot with clean pages, then ask for one more slot:
	// only page 0 is clean and idle, but it is pinned.
	big := make([]byte, (MinBytes/PageSize-1)*PageSize)
	_, err = ch.ReadAt(big, 1*PageSize)
	require.NoError(t, err)
	// Evict some of those and write another page in their place.
	b := bytes.Repeat([]byte{0xEE}, PageSize)
	_, err = ch.WriteAt(b, 1<<20)
	require.NoError(t, err)
	c.mu.Lock()
	require.Same(t, c.slots[pgs[0].slot].owner, pgs[0], "page 0 kept its slot")
	c.mu.Unlock()
	// Crash now: recovery writes page 0 back from its slot.
	remote2, err := local.Open(filepath.Join(root, "store"))
	require.NoError(t, err)
	c2, err := New(ctx, remote2, Options{Mode: ReadWrite, Dir: dir, MaxBytes: MinBytes})
	require.NoError(t, err)
	defer c2.Close()
	ch2, err := c2.OpenChunk(ctx, "k", false)
	require.NoError(t, err)
	got := make([]byte, PageSize)
	_, err = ch2.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, a, got)
}

func FuzzDecodeIndex(f *testing.F) {
	f.Add(encodeIndex([]entry{{key: "disks/d/chunks/00000000", n: 3, slot: 7, lo: 0, hi: PageSize}}))
	f.Add(encodeIndex([]entry{{key: "a", n: 0, slot: 0, lo: 1, hi: 2}, {key: "b", n: 1 << 40, slot: 1<<31 - 1, lo: 4000, hi: 4096}}))
	f.Add([]byte(indexMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := decodeIndex(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes.
		require.Equal(t, b, encodeIndex(es))
	})
}
