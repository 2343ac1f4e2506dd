package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"testing"
)

func BenchmarkLayerSeal(b *testing.B) {
	benchSeal(b, func(l Layer) Sealer { return l })
}

// benchSeal seals one unit per iteration with the Sealer sealer returns
// for each algorithm's Layer.
func benchSeal(b *testing.B, sealer func(Layer) Sealer) {
	for _, alg := range layerAlgs {
		b.Run(string(alg), func(b *testing.B) {
			l := newTestLayer(b, alg, NewDataKey())
			s := sealer(l)
			pt, ad := pattern(unitSize), blockAD(1)
			out := make([]byte, 0, unitSize+l.Overhead())
			b.SetBytes(unitSize)
			b.ReportAllocs()
			for b.Loop() {
				out = s.Seal(out[:0], pt, ad)
			}
		})
	}
}

func BenchmarkLayerOpen(b *testing.B) {
	for _, alg := range layerAlgs {
		b.Run(string(alg), func(b *testing.B) {
			l := newTestLayer(b, alg, NewDataKey())
			ad := blockAD(1)
			sealed := l.Seal(nil, pattern(unitSize), ad)
			out := make([]byte, 0, unitSize)
			b.SetBytes(unitSize)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if out, err = l.Open(out[:0], sealed, ad); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLayerSealer is BenchmarkLayerSeal through a Sealer, which keeps
// XAES-256-GCM's derived key for a batch of units.
func BenchmarkLayerSealer(b *testing.B) {
	benchSeal(b, Layer.NewSealer)
}

// BenchmarkXAES compares XAES-256-GCM with plain AES-256-GCM under a fixed
// key, to show what the per-message subkey costs.
func BenchmarkXAES(b *testing.B) {
	key := NewDataKey()
	x, err := NewXAES256GCM(key)
	if err != nil {
		b.Fatal(err)
	}
	blk, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(blk)
	for _, tc := range []struct {
		name string
		aead cipher.AEAD
	}{{"XAES-256-GCM", x}, {"AES-256-GCM", g}} {
		b.Run(tc.name+"/Seal", func(b *testing.B) {
			nonce, pt := make([]byte, tc.aead.NonceSize()), pattern(unitSize)
			out := make([]byte, 0, unitSize+16)
			b.SetBytes(unitSize)
			b.ReportAllocs()
			for b.Loop() {
				out = tc.aead.Seal(out[:0], nonce, pt, nil)
			}
		})
		b.Run(tc.name+"/Open", func(b *testing.B) {
			nonce := make([]byte, tc.aead.NonceSize())
			ct := tc.aead.Seal(nil, nonce, pattern(unitSize), nil)
			out := make([]byte, 0, unitSize)
			b.SetBytes(unitSize)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if out, err = tc.aead.Open(out[:0], nonce, ct, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkWrapAESKW(b *testing.B) {
	kek, key := NewDataKey(), NewDataKey()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := WrapAESKW(kek, key); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnwrapRSA(b *testing.B) {
	for _, bits := range []int{2048, 3072, 4096} {
		b.Run(fmt.Sprintf("%s/%d", WrapRSAOAEP256, bits), func(b *testing.B) {
			priv, err := rsa.GenerateKey(rand.Reader, bits)
			if err != nil {
				b.Fatal(err)
			}
			w, err := WrapRSA(WrapRSAOAEP256, &priv.PublicKey, NewDataKey())
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := UnwrapRSA(WrapRSAOAEP256, priv, w); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLayerSealParallel seals from GOMAXPROCS goroutines at once through
// one Layer, as a disk's many I/O goroutines do; it shows the shared Layer
// does not serialise them.
func BenchmarkLayerSealParallel(b *testing.B) {
	for _, alg := range layerAlgs {
		b.Run(string(alg), func(b *testing.B) {
			l := newTestLayer(b, alg, NewDataKey())
			b.SetBytes(unitSize)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				pt, ad := pattern(unitSize), blockAD(1)
				out := make([]byte, 0, unitSize+l.Overhead())
				for pb.Next() {
					out = l.Seal(out[:0], pt, ad)
				}
			})
		})
	}
}
