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
	// NewSealer returns a Sealer for one goroutine's use.
	NewSealer() Sealer
	// NewOpener returns an Opener for one goroutine's use.
	NewOpener() Opener
	// Close wipes the key material the Layer holds. See Wipe for what Go
	// can and cannot clear.
	Close()
}

// Sealer is Layer.Seal for one goroutine: it seals into the same format, and
// may keep per-message set-up from one call to the next. It must not be
// copied or used by two goroutines at once, and not after its Layer's Close.
//
// For XAES-256-GCM a Sealer draws a random 192-bit nonce, then seals up to
// sealerBatch units with the nonce's second half counting up from there, so
// the first half (the one that selects the derived AES-256-GCM key) stays the
// same for the whole batch. The derived key's set-up
// (two AES blocks, a key schedule, the GHASH tables and two allocations) is
// paid once per batch instead of once per unit, which is most of the cost of
// sealing 4 KiB beyond the AES-GCM work itself. Nonces stay unique as long as
// prefixes do: see docs/FORMAT.md for the bound.
type Sealer interface {
	Seal(dst, plaintext, ad []byte) []byte
}

// Opener is Layer.Open for one goroutine. For XAES-256-GCM it keeps the
// derived key of the last nonce prefix it saw, so units sealed by one Sealer
// batch (the blocks of one large write) open without repeating the set-up.
// The same rules as for Sealer apply.
type Opener interface {
	Open(dst, sealed, ad []byte) ([]byte, error)
}

// sealerBatch is how many units an XAES-256-GCM Sealer seals under one nonce
// prefix: 4 MiB of 4 KiB blocks, one chunk's worth.
//
// Two units share a nonce only if two batches drew the same 96-bit prefix and
// counter ranges that overlap: about 2^-96 * 2*sealerBatch/2^96 per pair of
// batches, so q seals (at most q batches) stay below q^2 / 2^182.
const sealerBatch = 1024

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
	dst, nonce := l.unit(dst, len(plaintext))
	// Never fails since Go 1.24: the program crashes rather than reuse a
	// nonce.
	rand.Read(nonce)
	return l.aead.Seal(dst, nonce, plaintext, ad)
}

// unit sizes dst once for a whole sealed unit of plainLen bytes of
// plaintext, so that the AEAD's append never has to grow it a second time,
// and returns it extended by the unit's nonce, which the caller fills. It
// panics on a closed Layer, as Seal does.
func (l *aeadLayer) unit(dst []byte, plainLen int) (out, nonce []byte) {
	if l.aead == nil {
		panic("crypto: Seal on a closed Layer")
	}
	n := len(dst)
	if total := n + l.overhead + plainLen; cap(dst) < total {
		grown := make([]byte, n, total)
		copy(grown, dst)
		dst = grown
	}
	dst = dst[:n+l.nonceSize]
	return dst, dst[n:]
}

func (l *aeadLayer) Open(dst, sealed, ad []byte) ([]byte, error) {
	if err := l.checkSealed(sealed); err != nil {
		return nil, err
	}
	out, err := l.aead.Open(dst, sealed[:l.nonceSize], sealed[l.nonceSize:], ad)
	return l.opened(out, err)
}

// checkSealed refuses what Open cannot open: anything on a closed Layer, and
// a unit shorter than its overhead.
func (l *aeadLayer) checkSealed(sealed []byte) error {
	if l.aead == nil {
		return ErrClosed
	}
	if len(sealed) < l.overhead {
		return fmt.Errorf("%w: %s unit of %d bytes is shorter than its %d-byte overhead",
			ErrIntegrity, l.alg, len(sealed), l.overhead)
	}
	return nil
}

// opened turns an AEAD's Open result into Open's: a failure is an
// integrity error that names the algorithm and nothing else.
func (l *aeadLayer) opened(out []byte, err error) ([]byte, error) {
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

func (l *aeadLayer) NewSealer() Sealer {
	if x, ok := l.aead.(*xaes256gcm); ok {
		return &xaesSealer{l: l, x: x}
	}
	return l
}

func (l *aeadLayer) NewOpener() Opener {
	if x, ok := l.aead.(*xaes256gcm); ok {
		return &xaesOpener{l: l, x: x}
	}
	return l
}

// xaesSealer seals with nonce = prefix || ctr: both drawn at random at the
// start of a batch of sealerBatch units, ctr (a 96-bit big-endian number)
// incremented after each unit.
type xaesSealer struct {
	l      *aeadLayer
	x      *xaes256gcm
	gcm    cipher.AEAD // AES-256-GCM under the key derived from prefix
	prefix [gcmNonceSize]byte
	ctr    [gcmNonceSize]byte
	n      int // units sealed under prefix
}

func (s *xaesSealer) Seal(dst, plaintext, ad []byte) []byte {
	dst, nonce := s.l.unit(dst, len(plaintext))
	if s.gcm == nil || s.n == sealerBatch {
		rand.Read(s.prefix[:])
		rand.Read(s.ctr[:])
		s.gcm, s.n = s.x.cachedGCM(s.prefix[:]), 0
	}
	copy(nonce, s.prefix[:])
	copy(nonce[gcmNonceSize:], s.ctr[:])
	for i := len(s.ctr) - 1; i >= 0; i-- { // ctr++, wrapping at 2^96
		s.ctr[i]++
		if s.ctr[i] != 0 {
			break
		}
	}
	s.n++
	return s.gcm.Seal(dst, nonce[gcmNonceSize:], plaintext, ad)
}

// xaesOpener opens with the derived key of the last prefix it saw.
type xaesOpener struct {
	l      *aeadLayer
	x      *xaes256gcm
	gcm    cipher.AEAD
	prefix [gcmNonceSize]byte
}

func (o *xaesOpener) Open(dst, sealed, ad []byte) ([]byte, error) {
	if err := o.l.checkSealed(sealed); err != nil {
		return nil, err
	}
	if o.gcm == nil || [gcmNonceSize]byte(sealed[:gcmNonceSize]) != o.prefix {
		copy(o.prefix[:], sealed[:gcmNonceSize])
		o.gcm = o.x.cachedGCM(o.prefix[:])
	}
	return o.l.opened(o.gcm.Open(dst, sealed[gcmNonceSize:xaesNonceSize], sealed[xaesNonceSize:], ad))
}
