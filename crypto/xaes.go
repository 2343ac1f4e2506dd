package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"fmt"
	"sync"
)

// XAES-256-GCM sizes (c2sp.org/XAES-256-GCM).
const (
	xaesNonceSize = 24
	gcmNonceSize  = 12
	gcmTagSize    = 16
)

// xaes256gcm implements XAES-256-GCM: AES-256-GCM under a subkey derived
// per message from the key and the first half of a 192-bit nonce with the
// NIST SP 800-108r1 counter KDF over CMAC-AES-256. The 192-bit nonce is what
// makes random nonces safe for a virtually unlimited number of messages.
//
// Everything that depends on the key alone (the AES key schedule, L and the
// CMAC subkey K1) is computed once here, so a message costs two AES block
// encryptions for the subkey plus the AES-256-GCM set-up and the data.
type xaes256gcm struct {
	block cipher.Block // AES-256 under the input key
	k1    [aes.BlockSize]byte
}

// NewXAES256GCM returns XAES-256-GCM under a KeySize-byte key, as specified by
// c2sp.org/XAES-256-GCM: 24-byte nonces, 16-byte tags. It is safe for
// concurrent use. Open failures are reported as ErrIntegrity.
func NewXAES256GCM(key []byte) (cipher.AEAD, error) {
	return newXAES(key)
}

func newXAES(key []byte) (*xaes256gcm, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("crypto: XAES-256-GCM key is %d bytes, want %d", len(key), KeySize)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	x := &xaes256gcm{block: b}

	// Spec steps 1 and 2, the CMAC subkey generation of SP 800-38B 6.1:
	// L = AES-256_K(0^128); K1 = L << 1, reduced by 0x87 if the top bit of
	// L was set. The reduction is masked rather than branched on, since L
	// is secret.
	var l [aes.BlockSize]byte
	b.Encrypt(l[:], l[:])
	for i := 0; i < len(l)-1; i++ {
		x.k1[i] = l[i]<<1 | l[i+1]>>7
	}
	msb := l[0] >> 7
	x.k1[len(l)-1] = l[len(l)-1]<<1 ^ 0x87&-msb
	Wipe(l[:])
	return x, nil
}

func (x *xaes256gcm) NonceSize() int { return xaesNonceSize }
func (x *xaes256gcm) Overhead() int  { return gcmTagSize }

// subkeyPool recycles the 32-byte buffers that hold M1 || M2 and then the
// derived key. cipher.Block.Encrypt is an interface call, so a stack buffer
// passed to it escapes; the pool saves that allocation on every message.
var subkeyPool = sync.Pool{New: func() any { return new([2 * aes.BlockSize]byte) }}

// gcm returns AES-256-GCM under the subkey for nonce[:12] (spec steps 3 to 5).
func (x *xaes256gcm) gcm(nonce []byte) cipher.AEAD {
	kx := subkeyPool.Get().(*[2 * aes.BlockSize]byte)
	m1, m2 := kx[:aes.BlockSize], kx[aes.BlockSize:]
	// M_i = 0x00 || i || "X" || 0x00 || N[:12]: the SP 800-108r1 counter,
	// label and separator, with the first nonce half as the context.
	m1[0], m1[1], m1[2], m1[3] = 0, 1, 'X', 0
	m2[0], m2[1], m2[2], m2[3] = 0, 2, 'X', 0
	copy(m1[4:], nonce[:gcmNonceSize])
	copy(m2[4:], nonce[:gcmNonceSize])
	// Each M_i is one complete block, so CMAC is a single AES call on
	// M_i xor K1.
	subtle.XORBytes(m1, m1, x.k1[:])
	subtle.XORBytes(m2, m2, x.k1[:])
	x.block.Encrypt(m1, m1)
	x.block.Encrypt(m2, m2)

	b, err := aes.NewCipher(kx[:])
	Wipe(kx[:])
	subkeyPool.Put(kx)
	if err != nil {
		panic("crypto: XAES-256-GCM subkey: " + err.Error()) // a 32-byte key cannot fail
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic("crypto: XAES-256-GCM: " + err.Error())
	}
	return g
}

// Seal encrypts and authenticates plaintext and ad under a 24-byte nonce and
// appends the ciphertext and tag to dst, following the cipher.AEAD rules.
func (x *xaes256gcm) Seal(dst, nonce, plaintext, ad []byte) []byte {
	if len(nonce) != xaesNonceSize {
		panic("crypto: XAES-256-GCM: incorrect nonce length")
	}
	return x.gcm(nonce).Seal(dst, nonce[gcmNonceSize:], plaintext, ad)
}

// Open authenticates and decrypts ciphertext and ad and appends the plaintext
// to dst. Any failure is ErrIntegrity.
func (x *xaes256gcm) Open(dst, nonce, ciphertext, ad []byte) ([]byte, error) {
	if len(nonce) != xaesNonceSize {
		panic("crypto: XAES-256-GCM: incorrect nonce length")
	}
	out, err := x.gcm(nonce).Open(dst, nonce[gcmNonceSize:], ciphertext, ad)
	if err != nil {
		return nil, ErrIntegrity
	}
	return out, nil
}

// wipe clears K1. The AES key schedule inside x.block is stdlib memory and
// cannot be cleared; dropping x lets the collector reclaim it.
func (x *xaes256gcm) wipe() {
	Wipe(x.k1[:])
	x.block = nil
}
