package crypto

import (
	"crypto/cipher"
	"crypto/rand"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// Algorithm names a block layer's AEAD. The names are stored in disk
// metadata, so they never change.
type Algorithm string

const (
	// AlgXAES256GCM is the first layer, under the disk's data key.
	AlgXAES256GCM Algorithm = "XAES-256-GCM"
	// AlgXChaCha20Poly1305 is the second layer of double encryption, under
	// the infrastructure key. It is a different algorithm on purpose: a
	// break of AES or GCM alone does not expose data sealed by both layers.
	AlgXChaCha20Poly1305 Algorithm = "XChaCha20-Poly1305"
)

const (
	// MinSecretSize is the shortest secret NewLayer accepts.
	MinSecretSize = 16
	// LayerNonceSize is the size of the random nonce that starts every
	// sealed unit, for both algorithms.
	LayerNonceSize = 24
)

// Layer seals and opens fixed-size units (4 KiB on a disk, though any length
// works) with a fresh random 192-bit nonce per seal. The sealed form is
// nonce || ciphertext || tag.
//
// A Layer is safe for concurrent use by many goroutines, except Close, which
// must not run while any other call on the same Layer is in flight.
type Layer interface {
	// Algorithm returns the AEAD in use.
	Algorithm() Algorithm
	// Overhead is the number of bytes a sealed unit adds: nonce plus tag.
	Overhead() int
	// Seal appends nonce || ciphertext || tag to dst and returns the
	// result. The nonce comes from crypto/rand. To seal in place, put the
	// plaintext at dst[len(dst)+LayerNonceSize:] in a buffer with room for
	// the tag; otherwise plaintext must not overlap dst's spare capacity.
	// Seal panics after Close.
	Seal(dst, plaintext, ad []byte) []byte
	// Open authenticates sealed under ad and appends its plaintext to dst.
	// Any failure, short input included, is ErrIntegrity; after Close it is
	// ErrClosed. To open in place, let n be LayerNonceSize and pass
	// dst = sealed[n:n]; the plaintext then lands at sealed[n:].
	Open(dst, sealed, ad []byte) ([]byte, error)
	// Close wipes the key material the Layer holds. See Wipe for what Go
	// can and cannot clear.
	Close()
}

// NewLayer returns a Layer for alg keyed from secret. The working key is
// HKDF-SHA256(secret, salt, "hostcrypt v1 layer " + alg), so the raw data key
// is never a cipher key itself and the two layers never share a key even if
// they were given the same secret. NewLayer keeps no reference to secret;
// the caller may wipe it afterwards.
func NewLayer(alg Algorithm, secret, salt []byte) (Layer, error) {
	if alg != AlgXAES256GCM && alg != AlgXChaCha20Poly1305 {
		return nil, fmt.Errorf("%w: layer %q", ErrUnsupported, alg)
	}
	if len(secret) < MinSecretSize {
		return nil, fmt.Errorf("crypto: layer secret is %d bytes, want at least %d", len(secret), MinSecretSize)
	}
	key, err := DeriveKey(secret, salt, labelLayer+string(alg), KeySize)
	if err != nil {
		return nil, err
	}
	// Both constructors copy the key into their own state.
	defer Wipe(key)

	l := &aeadLayer{alg: alg}
	switch alg {
	case AlgXAES256GCM:
		x, err := newXAES(key)
		if err != nil {
			return nil, err
		}
		l.aead, l.wipe = x, x.wipe
	case AlgXChaCha20Poly1305:
		a, err := chacha20poly1305.NewX(key)
		if err != nil {
			return nil, err
		}
		// x/crypto keeps its key copy unexported; it goes with the object.
		l.aead, l.wipe = a, func() {}
	}
	l.nonceSize = l.aead.NonceSize() // LayerNonceSize for both
	l.overhead = l.nonceSize + l.aead.Overhead()
	return l, nil
}

type aeadLayer struct {
	alg       Algorithm
	aead      cipher.AEAD // nil once closed
	wipe      func()
	nonceSize int
	overhead  int
}

func (l *aeadLayer) Algorithm() Algorithm { return l.alg }
func (l *aeadLayer) Overhead() int        { return l.overhead }

func (l *aeadLayer) Seal(dst, plaintext, ad []byte) []byte {
	if l.aead == nil {
		panic("crypto: Seal on a closed Layer")
	}
	// Size dst once for the whole unit so the AEAD's append never has to
	// grow it a second time.
	n := len(dst)
	total := n + l.overhead + len(plaintext)
	if cap(dst) < total {
		grown := make([]byte, n, total)
		copy(grown, dst)
		dst = grown
	}
	dst = dst[:n+l.nonceSize]
	nonce := dst[n:]
	// Never fails since Go 1.24: the program crashes rather than reuse a
	// nonce.
	rand.Read(nonce)
	return l.aead.Seal(dst, nonce, plaintext, ad)
}

func (l *aeadLayer) Open(dst, sealed, ad []byte) ([]byte, error) {
	if l.aead == nil {
		return nil, ErrClosed
	}
	if len(sealed) < l.overhead {
		return nil, fmt.Errorf("%w: %s unit of %d bytes is shorter than its %d-byte overhead",
			ErrIntegrity, l.alg, len(sealed), l.overhead)
	}
	out, err := l.aead.Open(dst, sealed[:l.nonceSize], sealed[l.nonceSize:], ad)
	if err != nil {
		return nil, fmt.Errorf("%w: %s authentication failed", ErrIntegrity, l.alg)
	}
	return out, nil
}

func (l *aeadLayer) Close() {
	if l.aead == nil {
		return
	}
	l.wipe()
	l.aead = nil
}
