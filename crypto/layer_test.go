package crypto

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var layerAlgs = []Algorithm{AlgXAES256GCM, AlgXChaCha20Poly1305}

const unitSize = 4096

// blockAD is additional data as a disk would bind it: disk id and index.
func blockAD(index uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("disk-0001/"), index)
}

func newTestLayer(t testing.TB, alg Algorithm, secret []byte) Layer {
	t.Helper()
	l, err := NewLayer(alg, secret, []byte("salt"))
	require.NoError(t, err)
	t.Cleanup(l.Close)
	return l
}

func pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + 3)
	}
	return p
}

func TestLayerRoundTrip(t *testing.T) {
	for _, alg := range layerAlgs {
		t.Run(string(alg), func(t *testing.T) {
			l := newTestLayer(t, alg, NewDataKey())
			assert.Equal(t, alg, l.Algorithm())
			assert.Equal(t, 40, l.Overhead())
			for _, n := range []int{0, 1, 15, 16, 17, 512, unitSize, 3*unitSize + 5} {
				pt := pattern(n)
				sealed := l.Seal([]byte("hdr"), pt, blockAD(7))
				require.Len(t, sealed, 3+n+l.Overhead(), "n=%d", n)
				assert.Equal(t, []byte("hdr"), sealed[:3])
				got, err := l.Open([]byte("out:"), sealed[3:], blockAD(7))
				require.NoError(t, err, "n=%d", n)
				assert.True(t, bytes.Equal(append([]byte("out:"), pt...), got), "n=%d", n)
			}
		})
	}
}

func TestLayerSealInPlace(t *testing.T) {
	for _, alg := range layerAlgs {
		l := newTestLayer(t, alg, NewDataKey())
		pt := pattern(unitSize)
		buf := make([]byte, unitSize+l.Overhead())
		copy(buf[LayerNonceSize:], pt)
		sealed := l.Seal(buf[:0], buf[LayerNonceSize:LayerNonceSize+unitSize], nil)
		assert.Equal(t, &buf[0], &sealed[0], "%s: sealed into the caller's buffer", alg)
		assert.Len(t, sealed, len(buf))
		got, err := l.Open(sealed[LayerNonceSize:LayerNonceSize], sealed, nil)
		require.NoError(t, err)
		assert.Equal(t, &buf[LayerNonceSize], &got[0], "%s: opened in place", alg)
		assert.Equal(t, pt, got)
	}
}

func TestLayerRejects(t *testing.T) {
	for _, alg := range layerAlgs {
		t.Run(string(alg), func(t *testing.T) {
			secret := NewDataKey()
			l := newTestLayer(t, alg, secret)
			pt := pattern(unitSize)
			sealed := l.Seal(nil, pt, blockAD(1))

			// Every single-bit flip, in nonce, ciphertext and tag, fails.
			for i := range sealed {
				for bit := range 8 {
					sealed[i] ^= 1 << bit
					_, err := l.Open(nil, sealed, blockAD(1))
					require.ErrorIs(t, err, ErrIntegrity, "byte %d bit %d", i, bit)
					sealed[i] ^= 1 << bit
				}
			}

			other := newTestLayer(t, alg, NewDataKey())
			otherSalt, err := NewLayer(alg, secret, []byte("other salt"))
			require.NoError(t, err)
			defer otherSalt.Close()
			otherAlg := AlgXAES256GCM
			if alg == AlgXAES256GCM {
				otherAlg = AlgXChaCha20Poly1305
			}
			sameSecretOtherAlg := newTestLayer(t, otherAlg, secret)

			tests := []struct {
				name   string
				layer  Layer
				sealed []byte
				ad     []byte
			}{
				{"moved to another block index", l, sealed, blockAD(2)},
				{"copied from another disk", l, sealed, append([]byte("disk-0002/"), blockAD(1)[10:]...)},
				{"missing ad", l, sealed, nil},
				{"another secret", other, sealed, blockAD(1)},
				{"another salt", otherSalt, sealed, blockAD(1)},
				{"the other algorithm, same secret", sameSecretOtherAlg, sealed, blockAD(1)},
				{"torn: truncated", l, sealed[:len(sealed)-1], blockAD(1)},
				{"torn: extended", l, append(append([]byte(nil), sealed...), 0), blockAD(1)},
				{"shorter than overhead", l, sealed[:39], blockAD(1)},
				{"empty", l, nil, blockAD(1)},
				{"zeros", l, make([]byte, len(sealed)), blockAD(1)},
			}
			for _, tc := range tests {
				got, err := tc.layer.Open(nil, tc.sealed, tc.ad)
				assert.ErrorIs(t, err, ErrIntegrity, tc.name)
				assert.Nil(t, got, tc.name)
			}

			// The genuine unit still opens.
			got, err := l.Open(nil, sealed, blockAD(1))
			require.NoError(t, err)
			assert.Equal(t, pt, got)
		})
	}
}

func TestLayerFreshNonces(t *testing.T) {
	for _, alg := range layerAlgs {
		l := newTestLayer(t, alg, NewDataKey())
		pt := pattern(unitSize)
		seen := map[string]bool{}
		for range 100 {
			s := l.Seal(nil, pt, blockAD(0))
			assert.False(t, seen[string(s[:24])], "%s: repeated nonce", alg)
			assert.False(t, seen[string(s)], "%s: repeated unit", alg)
			seen[string(s[:24])], seen[string(s)] = true, true
		}
	}
}

// TestLayerNested seals with the data-key layer, then with the
// infrastructure-key layer over the result, as double encryption does.
func TestLayerNested(t *testing.T) {
	inner := newTestLayer(t, AlgXAES256GCM, NewDataKey())
	outer := newTestLayer(t, AlgXChaCha20Poly1305, NewDataKey())
	pt := bytes.Repeat([]byte("PLAINTEXT-PATTERN"), unitSize/17+1)[:unitSize]
	ad := blockAD(42)

	sealed := outer.Seal(nil, inner.Seal(nil, pt, ad), ad)
	require.Len(t, sealed, unitSize+inner.Overhead()+outer.Overhead())

	mid, err := outer.Open(nil, sealed, ad)
	require.NoError(t, err)
	// With layer 2 removed, the bytes are still layer-1 ciphertext: no
	// 16-byte window of the plaintext appears in them.
	for i := 0; i+16 <= len(pt); i += 16 {
		assert.False(t, bytes.Contains(mid, pt[i:i+16]), "plaintext window at %d", i)
	}
	for i := 0; i+16 <= len(pt); i += 16 {
		require.False(t, bytes.Contains(sealed, pt[i:i+16]))
	}
	got, err := inner.Open(nil, mid, ad)
	require.NoError(t, err)
	assert.Equal(t, pt, got)

	_, err = inner.Open(nil, sealed, ad)
	assert.ErrorIs(t, err, ErrIntegrity, "the inner layer cannot skip the outer one")
}

func TestLayerConcurrent(t *testing.T) {
	for _, alg := range layerAlgs {
		l := newTestLayer(t, alg, NewDataKey())
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				pt := pattern(unitSize)
				pt[0] = byte(g)
				for i := range 50 {
					ad := blockAD(uint64(i))
					got, err := l.Open(nil, l.Seal(nil, pt, ad), ad)
					if !assert.NoError(t, err) || !assert.Equal(t, pt, got) {
						return
					}
				}
			})
		}
		wg.Wait()
	}
}

func TestNewLayerErrors(t *testing.T) {
	_, err := NewLayer("AES-128-ECB", NewDataKey(), nil)
	assert.ErrorIs(t, err, ErrUnsupported)
	_, err = NewLayer(AlgXAES256GCM, make([]byte, MinSecretSize-1), nil)
	assert.Error(t, err)
}

func TestLayerSecretNotKept(t *testing.T) {
	for _, alg := range layerAlgs {
		secret := NewDataKey()
		keep := append([]byte(nil), secret...)
		l, err := NewLayer(alg, secret, nil)
		require.NoError(t, err)
		sealed := l.Seal(nil, pattern(100), nil)
		Wipe(secret)
		got, err := l.Open(nil, sealed, nil)
		require.NoError(t, err, "%s: the layer works after the caller wipes the secret", alg)
		assert.Equal(t, pattern(100), got)
		l.Close()

		l2, err := NewLayer(alg, keep, nil)
		require.NoError(t, err)
		_, err = l2.Open(nil, sealed, nil)
		assert.NoError(t, err, "%s: derivation is deterministic", alg)
		l2.Close()
	}
}

func TestLayerClose(t *testing.T) {
	for _, alg := range layerAlgs {
		l, err := NewLayer(alg, NewDataKey(), nil)
		require.NoError(t, err)
		sealed := l.Seal(nil, []byte("x"), nil)
		if x, ok := l.(*aeadLayer).aead.(*xaes256gcm); ok {
			l.Close()
			assert.Equal(t, [16]byte{}, x.k1, "K1 wiped")
		} else {
			l.Close()
		}
		l.Close() // idempotent
		_, err = l.Open(nil, sealed, nil)
		assert.ErrorIs(t, err, ErrClosed)
		assert.Panics(t, func() { l.Seal(nil, []byte("x"), nil) })
	}
}

// TestSealerOpener: a Sealer's units open with Layer.Open and an Opener, and
// an Opener opens Layer.Seal's; nonces never repeat, and an XAES-256-GCM
// Sealer moves to a fresh random prefix after sealerBatch units.
func TestSealerOpener(t *testing.T) {
	for _, alg := range layerAlgs {
		t.Run(string(alg), func(t *testing.T) {
			l := newTestLayer(t, alg, NewDataKey())
			s, o := l.NewSealer(), l.NewOpener()
			pt := pattern(unitSize)
			seen := map[string]bool{}
			prefixes := map[string]int{}
			for i := range 2*sealerBatch + 3 {
				u := s.Seal([]byte("hdr"), pt, blockAD(uint64(i)))
				require.Equal(t, []byte("hdr"), u[:3])
				u = u[3:]
				require.Len(t, u, unitSize+l.Overhead())
				require.False(t, seen[string(u[:24])], "repeated nonce at %d", i)
				seen[string(u[:24])] = true
				prefixes[string(u[:12])]++
				got, err := l.Open(nil, u, blockAD(uint64(i)))
				require.NoError(t, err)
				require.Equal(t, pt, got)
				got, err = o.Open(got[:0], u, blockAD(uint64(i)))
				require.NoError(t, err)
				require.Equal(t, pt, got)
				_, err = o.Open(nil, u, blockAD(uint64(i+1)))
				require.ErrorIs(t, err, ErrIntegrity)
				if i%100 == 0 {
					// Units of Layer.Seal (another prefix) interleaved.
					v := l.Seal(nil, pt, blockAD(9))
					got, err := o.Open(nil, v, blockAD(9))
					require.NoError(t, err)
					require.Equal(t, pt, got)
				}
			}
			if alg == AlgXAES256GCM {
				require.Len(t, prefixes, 3)
				for _, n := range prefixes {
					require.LessOrEqual(t, n, sealerBatch)
				}
			}
			_, err := o.Open(nil, make([]byte, 10), nil)
			require.ErrorIs(t, err, ErrIntegrity)
			l.Close()
			assert.Panics(t, func() { s.Seal(nil, pt, nil) })
			_, err = o.Open(nil, make([]byte, 100), nil)
			require.ErrorIs(t, err, ErrClosed)
		})
	}
}
