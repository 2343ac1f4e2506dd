package crypto

import (
	"bytes"
	"testing"
)

// fuzzSecret keys the layers under fuzz; fixed so failures reproduce.
var fuzzSecret = bytes.Repeat([]byte{0x5a}, KeySize)

// FuzzLayerOpen feeds arbitrary bytes to Open: it must never panic and never
// authenticate, since a fuzzer cannot forge a tag.
func FuzzLayerOpen(f *testing.F) {
	for _, v := range loadXAES(f).Vectors {
		// nonce || ciphertext || tag: the shape of a sealed unit.
		f.Add(append([]byte(v.Nonce), unhex(f, v.Ciphertext)...), []byte(v.AAD))
	}
	f.Add([]byte{}, []byte{})
	f.Add(make([]byte, 40), blockAD(0))
	f.Add(make([]byte, 40+unitSize), blockAD(1))

	layers := make([]Layer, 0, len(layerAlgs))
	for _, alg := range layerAlgs {
		l, err := NewLayer(alg, fuzzSecret, nil)
		if err != nil {
			f.Fatal(err)
		}
		layers = append(layers, l)
	}
	f.Fuzz(func(t *testing.T, sealed, ad []byte) {
		for _, l := range layers {
			out, err := l.Open(nil, sealed, ad)
			if err == nil || out != nil {
				t.Fatalf("%s: arbitrary input authenticated", l.Algorithm())
			}
		}
	})
}

// FuzzXAESRoundTrip checks Open(Seal(x)) == x for any key, nonce, plaintext
// and ad, and that a changed ciphertext never opens.
func FuzzXAESRoundTrip(f *testing.F) {
	for _, v := range loadXAES(f).Vectors {
		f.Add(unhex(f, v.Key), []byte(v.Nonce), []byte(v.Plaintext), []byte(v.AAD), uint16(0))
	}
	f.Fuzz(func(t *testing.T, key, nonce, pt, ad []byte, flipAt uint16) {
		key = fit(key, KeySize)
		nonce = fit(nonce, xaesNonceSize)
		a, err := NewXAES256GCM(key)
		if err != nil {
			t.Fatal(err)
		}
		ct := a.Seal(nil, nonce, pt, ad)
		if len(ct) != len(pt)+a.Overhead() {
			t.Fatalf("ciphertext is %d bytes for %d of plaintext", len(ct), len(pt))
		}
		got, err := a.Open(nil, nonce, ct, ad)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("round trip failed: %v", err)
		}
		bad := append([]byte(nil), ct...)
		bad[int(flipAt)%len(bad)] ^= 0x80
		if _, err := a.Open(nil, nonce, bad, ad); err == nil {
			t.Fatal("a flipped ciphertext opened")
		}
	})
}

// FuzzUnwrapAESKW: arbitrary input never panics, and whatever unwraps is a
// genuine wrap: wrapping the result again gives the same bytes back (the
// wrap is deterministic), so the integrity check was not bypassed.
func FuzzUnwrapAESKW(f *testing.F) {
	kw, _ := loadKW(f)
	for _, v := range kw {
		f.Add(unhex(f, v.KEK), unhex(f, v.Wrapped))
	}
	f.Add(make([]byte, 16), make([]byte, 24))
	f.Fuzz(func(t *testing.T, kek, wrapped []byte) {
		fuzzUnwrap(t, kek, wrapped, WrapAESKW, UnwrapAESKW)
	})
}

// FuzzUnwrapAESKWP is FuzzUnwrapAESKW for the padded variant.
func FuzzUnwrapAESKWP(f *testing.F) {
	_, kwp := loadKW(f)
	for _, v := range kwp {
		f.Add(unhex(f, v.KEK), unhex(f, v.Wrapped))
	}
	f.Add(make([]byte, 16), make([]byte, 16))
	f.Fuzz(func(t *testing.T, kek, wrapped []byte) {
		fuzzUnwrap(t, kek, wrapped, WrapAESKWP, UnwrapAESKWP)
	})
}

func fuzzUnwrap(t *testing.T, kek, wrapped []byte,
	wrap func(kek, key []byte) ([]byte, error),
	unwrap func(kek, wrapped []byte) ([]byte, error),
) {
	// Only valid AES key sizes reach the algorithm; keep the KEK the
	// fuzzer gave when it is one, else fit it to 16 bytes.
	switch len(kek) {
	case 16, 24, 32:
	default:
		kek = fit(kek, 16)
	}
	key, err := unwrap(kek, wrapped)
	if err != nil {
		return
	}
	again, err := wrap(kek, key)
	if err != nil || !bytes.Equal(again, wrapped) {
		t.Fatalf("unwrapped %x from input that is not its wrap (%v)", key, err)
	}
}

// fit returns b cut or zero-extended to n bytes.
func fit(b []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, b)
	return out
}
