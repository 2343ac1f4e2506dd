package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"fmt"
	"sync"
	"sync/atomic"
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
//
// Deriving a subkey and setting up AES-256-GCM under it is most of what a
// 4 KiB message costs beyond the AES-GCM itself, and Go's crypto/aes and
// crypto/cipher allocate 1.3 KiB for it (a cipher cannot be re-keyed). A
// Sealer keeps one nonce prefix for a batch of units, so the blocks of a
// disk share far fewer prefixes than there are blocks; derived keeps the
// AES-256-GCM of the prefixes met last, so that opening a unit under one of
// them derives nothing. It is a cache of a deterministic function of the key
// and the prefix: the same subkeys, nonces and ciphertexts as without it.
type xaes256gcm struct {
	block   cipher.Block // AES-256 under the input key
	k1      [aes.BlockSize]byte
	derived [derivedSlots]atomic.Pointer[derivedGCM]
}

// derivedSlots is how many derived keys an XAES-256-GCM key keeps, one per
// slot of a direct-mapped table indexed by the prefix: at most about
// 1.3 KiB each, 1.3 MiB when all are filled.
const derivedSlots = 1024

// derivedGCM is AES-256-GCM under the subkey of one nonce prefix.
type derivedGCM struct {
	prefix [gcmNonceSize]byte
	gcm    cipher.AEAD
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

// slot returns the table slot of a nonce prefix. Prefixes are random, so
// folding their words together spreads them over the table; one a writer
// chose to collide only costs itself derivations.
func (x *xaes256gcm) slot(prefix []byte) *atomic.Pointer[derivedGCM] {
	_ = prefix[gcmNonceSize-1]
	h := uint32(prefix[0]) | uint32(prefix[1])<<8 | uint32(prefix[2])<<16 | uint32(prefix[3])<<24
	h ^= uint32(prefix[4]) | uint32(prefix[5])<<8 | uint32(prefix[6])<<16 | uint32(prefix[7])<<24
	h ^= uint32(prefix[8]) | uint32(prefix[9])<<8 | uint32(prefix[10])<<16 | uint32(prefix[11])<<24
	return &x.derived[h%derivedSlots]
}

// cachedGCM is gcm for nonce[:12], from the table of derived keys when the
// prefix is there, else derived and kept in the table.
func (x *xaes256gcm) cachedGCM(nonce []byte) cipher.AEAD {
	s := x.slot(nonce)
	if e := s.Load(); e != nil && [gcmNonceSize]byte(nonce[:gcmNonceSize]) == e.prefix {
		return e.gcm
	}
	g := x.gcm(nonce)
	s.Store(&derivedGCM{prefix: [gcmNonceSize]byte(nonce[:gcmNonceSize]), gcm: g})
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
	out, err := x.cachedGCM(nonce).Open(dst, nonce[gcmNonceSize:], ciphertext, ad)
	if err != nil {
		return nil, ErrIntegrity
	}
	return out, nil
}

// wipe clears K1 and drops the derived keys. The AES key schedules inside
// x.block and the derived AES-GCMs are stdlib memory and cannot be cleared;
// dropping them lets the collector reclaim them.
func (x *xaes256gcm) wipe() {
	Wipe(x.k1[:])
	x.block = nil
	for i := range x.derived {
		x.derived[i].Store(nil)
	}
}
