package cache_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	mrand "math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/disk"
	"hostcrypt/storage/local"
)

// testKEK wraps data keys with AES-256-GCM in memory, standing in for a
// key store.
type testKEK struct{ key []byte }

func (k testKEK) aead() cipher.AEAD {
	b, _ := aes.NewCipher(k.key)
	g, _ := cipher.NewGCM(b)
	return g
}

func (k testKEK) WrapKey(_ context.Context, dek []byte) (disk.WrappedKey, error) {
	g := k.aead()
	nonce := make([]byte, g.NonceSize())
	rand.Read(nonce)
	return disk.WrappedKey{KeyID: "test", Algorithm: "A256GCM", Value: g.Seal(nonce, nonce, dek, nil)}, nil
}

func (k testKEK) UnwrapKey(_ context.Context, w disk.WrappedKey) ([]byte, error) {
	g := k.aead()
	if len(w.Value) < g.NonceSize() {
		return nil, errors.New("short wrap")
	}
	return g.Open(nil, w.Value[:g.NonceSize()], w.Value[g.NonceSize():], nil)
}

// TestEngineOverCache runs the disk engine over each cache mode: writes
// from many goroutines, Sync, and for ReadWrite a crash (the cache and the
// disk dropped unclosed). The disk opened straight on the remote store
// afterwards must read back every synced write. On shared storage the
// crash takes the cache directory too: nothing is recovered from it.
func TestEngineOverCache(t *testing.T) {
	for _, tc := range []struct {
		mode   cache.Mode
		shared bool
	}{{cache.ReadOnly, false}, {cache.ReadWrite, false}, {cache.ReadWrite, true}} {
		mode := tc.mode
		name := string(mode)
		if tc.shared {
			name += "-shared"
		}
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			e := newEnv(t)
			e.shared = tc.shared
			c := e.open(t, mode, cache.MinBytes) // smaller than the disk
			kek := testKEK{key: random(t, 32)}
			const size = 4 * mib
			d, err := disk.Create(ctx, c, "disks/d", disk.CreateOptions{
				Size: size, ChunkBlocks: 64, Layers: []disk.KeyWrapper{kek},
			})
			require.NoError(t, err)
			model := make([]byte, size)
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Go(func() {
					r := mrand.New(mrand.NewPCG(uint64(w), 4))
					for range 60 {
						// Each writer owns the 64 KiB stripes w, w+8, …
						stripe := r.IntN(size/(64*kib)/8)*8 + w
						off := stripe*64*kib + r.IntN(64*kib/512-16)*512
						p := random(t, (1+r.IntN(16))*512)
						_, err := d.WriteAt(p, int64(off))
						assert.NoError(t, err)
						copy(model[off:], p)
						q := make([]byte, len(p))
						_, err = d.ReadAt(q, int64(off))
						assert.NoError(t, err)
						assert.Equal(t, p, q)
					}
				})
			}
			wg.Wait()
			require.NoError(t, d.Sync())
			got := make([]byte, size)
			_, err = d.ReadAt(got, 0)
			require.NoError(t, err)
			require.Equal(t, model, got, "through the cache")
			// Drop d and c without closing either.

			switch {
			case tc.shared:
				require.NoError(t, os.RemoveAll(e.cacheDir))
			case mode == cache.ReadWrite:
				e.reopenRemote(t)
				c2 := e.open(t, mode, cache.MinBytes) // recovers
				require.NoError(t, c2.Close())
			}
			store, err := local.Open(e.storeDir)
			require.NoError(t, err)
			d2, err := disk.Open(ctx, store, "disks/d", kek)
			require.NoError(t, err)
			defer d2.Close()
			clear(got)
			_, err = d2.ReadAt(got, 0)
			require.NoError(t, err)
			require.Equal(t, model, got, "straight from the store")
		})
	}
}
