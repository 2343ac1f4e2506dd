package freeze_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/freeze"
	"hostcrypt/storage/local"
)

const objSize = 256 << 10

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// Writers hammer the objects while the copier runs; every saved copy must be
// exactly the content at the freeze, and each object is saved once. (What
// a write in flight at the freeze instant leaves is either side's; the
// engine tests check that through snapshots of a disk in use.)
func TestCopiesAreThePointInTime(t *testing.T) {
	ctx := context.Background()
	be, err := local.Open(t.TempDir())
	require.NoError(t, err)
	fb := freeze.New(be)

	const n = 8
	before := map[string][]byte{}
	chunks := map[string]storage.Chunk{}
	for i := range n {
		key := fmt.Sprintf("d/chunks/%02d", i)
		c, err := fb.OpenChunk(ctx, key, true)
		require.NoError(t, err)
		defer c.Close()
		before[key] = randBytes(objSize)
		_, err = c.WriteAt(before[key], 0)
		require.NoError(t, err)
		chunks[key] = c
	}
	require.NoError(t, be.WriteMeta(ctx, "d/meta.json", []byte("v1")))

	var mu sync.Mutex
	saved := map[string][]byte{}
	save := func(ctx context.Context, key string, src storage.Chunk, meta []byte) error {
		var v []byte
		if src != nil {
			v = make([]byte, objSize)
			if _, err := src.ReadAt(v, 0); err != nil {
				return err
			}
		} else {
			v = bytes.Clone(meta)
		}
		mu.Lock()
		defer mu.Unlock()
		if _, dup := saved[key]; dup {
			return fmt.Errorf("%s saved twice", key)
		}
		saved[key] = v
		return nil
	}

	// The writers start at the freeze (what they wrote before it would
	// belong to the frozen content) and race the copier from then on.
	start, stop := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	keys := make([]string, 0, n)
	for k := range chunks {
		keys = append(keys, k)
	}
	for w := range 4 {
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(uint64(w), 1))
			<-start
			for {
				select {
				case <-stop:
					return
				default:
				}
				c := chunks[keys[r.IntN(len(keys))]]
				off := r.Int64N(objSize - 4096)
				if r.IntN(8) == 0 {
					assert.NoError(t, c.PunchHole(off, 4096))
				} else {
					_, err := c.WriteAt(randBytes(4096), off)
					assert.NoError(t, err)
				}
			}
		})
	}

	s, err := fb.Freeze(ctx, "d", []string{"d/meta.json"}, save)
	require.NoError(t, err)
	close(start)
	t.Logf("writes held back for %v", s.Pause())
	require.NoError(t, fb.WriteMeta(ctx, "d/meta.json", []byte("v2")))
	late, err := fb.OpenChunk(ctx, "d/chunks/99", true) // after the freeze: not part of it
	require.NoError(t, err)
	_, err = late.WriteAt([]byte("late"), 0)
	require.NoError(t, err)
	late.Close()
	for _, k := range s.Keys() {
		require.NoError(t, s.Preserve(ctx, k))
	}
	close(stop)
	wg.Wait()
	require.NoError(t, s.End())

	require.Len(t, saved, n+1)
	for k, want := range before {
		assert.True(t, bytes.Equal(want, saved[k]), "%s is not its content at the freeze", k)
	}
	assert.Equal(t, []byte("v1"), saved["d/meta.json"])
	v, err := be.ReadMeta(ctx, "d/meta.json")
	require.NoError(t, err)
	assert.Equal(t, []byte("v2"), v)

	// After End nothing is copied any more.
	_, err = chunks[keys[0]].WriteAt([]byte("x"), 0)
	require.NoError(t, err)
	require.Len(t, saved, n+1)
}

// A save that fails stops the mutation that needed it: the frozen content
// is never overwritten uncopied.
func TestFailedSaveStopsTheWrite(t *testing.T) {
	ctx := context.Background()
	be, err := local.Open(t.TempDir())
	require.NoError(t, err)
	fb := freeze.New(be)
	c, err := fb.OpenChunk(ctx, "d/chunks/00", true)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.WriteAt([]byte("old"), 0)
	require.NoError(t, err)
	s, err := fb.Freeze(ctx, "d", nil, func(context.Context, string, storage.Chunk, []byte) error {
		return fmt.Errorf("target full")
	})
	require.NoError(t, err)
	_, err = fb.Freeze(ctx, "d", nil, nil)
	assert.Error(t, err, "one session at a time")
	_, err = c.WriteAt([]byte("new"), 0)
	require.Error(t, err)
	got := make([]byte, 3)
	_, err = c.ReadAt(got, 0)
	require.NoError(t, err)
	assert.Equal(t, "old", string(got))
	assert.ErrorContains(t, s.End(), "target full")
}
