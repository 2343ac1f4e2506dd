package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"math"
)

// AES key wrap (RFC 3394) and AES key wrap with padding (RFC 5649), for
// wrapping data keys under a platform key. Both are deterministic: wrapping
// the same key twice gives the same bytes, which is what a key wrap is for
// (the wrapped value is a key, not a message, so there is nothing to hide
// about equality). The KEK may be 16, 24 or 32 bytes.

// kwIV is the RFC 3394 section 2.2.3.1 default initial value.
var kwIV = [8]byte{0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6}

// kwpICV is the RFC 5649 section 3 alternative initial value prefix; the
// other four bytes of the AIV carry the key's length.
var kwpICV = [4]byte{0xA6, 0x59, 0x59, 0xA6}

// WrapAESKW wraps key (a multiple of 8 bytes, at least 16) under kek with
// the RFC 3394 algorithm. The result is 8 bytes longer than key.
func WrapAESKW(kek, key []byte) ([]byte, error) {
	if len(key) < 16 || len(key)%8 != 0 {
		return nil, fmt.Errorf("crypto: AES-KW key data is %d bytes, want a multiple of 8 and at least 16", len(key))
	}
	b, err := kwCipher(kek)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 8+len(key))
	copy(out, kwIV[:])
	copy(out[8:], key)
	kwWrap(b, out)
	return out, nil
}

// UnwrapAESKW reverses WrapAESKW. A wrapped key that fails the integrity
// check, which is what a wrong KEK produces, is ErrWrongKey.
func UnwrapAESKW(kek, wrapped []byte) ([]byte, error) {
	if len(wrapped) < 24 || len(wrapped)%8 != 0 {
		return nil, fmt.Errorf("crypto: AES-KW wrapped key is %d bytes, want a multiple of 8 and at least 24", len(wrapped))
	}
	b, err := kwCipher(kek)
	if err != nil {
		return nil, err
	}
	buf := append([]byte(nil), wrapped...)
	kwUnwrap(b, buf)
	if subtle.ConstantTimeCompare(buf[:8], kwIV[:]) != 1 {
		Wipe(buf)
		return nil, fmt.Errorf("%w: AES-KW integrity check failed", ErrWrongKey)
	}
	return buf[8:], nil
}

// WrapAESKWP wraps key (any length from 1 byte) under kek with the RFC 5649
// algorithm. The result is the key padded to a multiple of 8, plus 8.
func WrapAESKWP(kek, key []byte) ([]byte, error) {
	if len(key) < 1 || uint64(len(key)) > math.MaxUint32 {
		return nil, fmt.Errorf("crypto: AES-KWP key data is %d bytes, want 1 to 2^32-1", len(key))
	}
	b, err := kwCipher(kek)
	if err != nil {
		return nil, err
	}
	padded := (len(key) + 7) / 8 * 8
	out := make([]byte, 8+padded) // zero padding comes with make
	copy(out, kwpICV[:])
	binary.BigEndian.PutUint32(out[4:8], uint32(len(key)))
	copy(out[8:], key)
	if padded == 8 {
		// A single 64-bit block is encrypted as one AES block (RFC 5649
		// section 4.1, step 2).
		b.Encrypt(out, out)
	} else {
		kwWrap(b, out)
	}
	return out, nil
}

// UnwrapAESKWP reverses WrapAESKWP. A wrapped key whose initial value,
// length or padding does not check out is ErrWrongKey.
func UnwrapAESKWP(kek, wrapped []byte) ([]byte, error) {
	if len(wrapped) < 16 || len(wrapped)%8 != 0 {
		return nil, fmt.Errorf("crypto: AES-KWP wrapped key is %d bytes, want a multiple of 8 and at least 16", len(wrapped))
	}
	b, err := kwCipher(kek)
	if err != nil {
		return nil, err
	}
	buf := append([]byte(nil), wrapped...)
	if len(buf) == 16 {
		b.Decrypt(buf, buf)
	} else {
		kwUnwrap(b, buf)
	}

	// Check everything before deciding, so that the time taken does not
	// say which check failed.
	padded := uint64(len(buf) - 8)
	mli := uint64(binary.BigEndian.Uint32(buf[4:8]))
	ok := subtle.ConstantTimeCompare(buf[:4], kwpICV[:])
	ok &= boolToInt(mli > padded-8) & boolToInt(mli <= padded)
	// The padding is the bytes of the last 8-byte block at or past mli;
	// all must be zero.
	var pad byte
	for i := padded - 8; i < padded; i++ {
		pad |= buf[8+i] & byte(-boolToInt(i >= mli))
	}
	ok &= subtle.ConstantTimeByteEq(pad, 0)
	if ok != 1 {
		Wipe(buf)
		return nil, fmt.Errorf("%w: AES-KWP integrity check failed", ErrWrongKey)
	}
	return buf[8 : 8+mli : 8+mli], nil
}

func kwCipher(kek []byte) (cipher.Block, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("crypto: key-encryption key: %w", err)
	}
	return b, nil
}

// kwWrap is the RFC 3394 wrapping process W (the index-based form of
// section 2.2.1) applied in place to buf = A || R[1] || ... || R[n].
func kwWrap(b cipher.Block, buf []byte) {
	n := len(buf)/8 - 1
	var blk [16]byte // A || R[i], then B = AES(K, A || R[i])
	copy(blk[:8], buf[:8])
	for j := range 6 {
		for i := 1; i <= n; i++ {
			r := buf[8*i : 8*i+8]
			copy(blk[8:], r)
			b.Encrypt(blk[:], blk[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(blk[:8], binary.BigEndian.Uint64(blk[:8])^t)
			copy(r, blk[8:])
		}
	}
	copy(buf[:8], blk[:8])
	Wipe(blk[:])
}

// kwUnwrap is the RFC 3394 unwrapping process W^-1 (section 2.2.2) applied
// in place; the caller checks the recovered A in buf[:8].
func kwUnwrap(b cipher.Block, buf []byte) {
	n := len(buf)/8 - 1
	var blk [16]byte
	copy(blk[:8], buf[:8])
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			r := buf[8*i : 8*i+8]
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(blk[:8], binary.BigEndian.Uint64(blk[:8])^t)
			copy(blk[8:], r)
			b.Decrypt(blk[:], blk[:])
			copy(r, blk[8:])
		}
	}
	copy(buf[:8], blk[:8])
	Wipe(blk[:])
}

func boolToInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
