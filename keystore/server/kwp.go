package server

import (
	"crypto/aes"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"math/big"
)

// AES key wrap with padding (RFC 5649) for platform keys. It will move to
// the shared crypto package; keep the signatures.

var kwpIV = [4]byte{0xa6, 0x59, 0x59, 0xa6}

func wrapKWP(kek, plain []byte) ([]byte, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(plain) == 0 {
		return nil, errors.New("kwp: empty input")
	}
	padded := (len(plain) + 7) / 8 * 8
	var a [8]byte
	copy(a[:4], kwpIV[:])
	binary.BigEndian.PutUint32(a[4:], uint32(len(plain)))
	if padded == 8 {
		buf := make([]byte, 16)
		copy(buf, a[:])
		copy(buf[8:], plain)
		block.Encrypt(buf, buf)
		return buf, nil
	}
	n := padded / 8
	out := make([]byte, 8+padded)
	copy(out[8:], plain)
	var buf [16]byte
	for j := 0; j < 6; j++ {
		for i := 1; i <= n; i++ {
			copy(buf[:8], a[:])
			copy(buf[8:], out[8*i:8*i+8])
			block.Encrypt(buf[:], buf[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(buf[:8])^t)
			copy(out[8*i:], buf[8:])
		}
	}
	copy(out, a[:])
	return out, nil
}

var errKWP = errors.New("kwp: integrity check failed")

func unwrapKWP(kek, wrapped []byte) ([]byte, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(wrapped) < 16 || len(wrapped)%8 != 0 {
		return nil, errKWP
	}
	var a [8]byte
	var plain []byte
	if len(wrapped) == 16 {
		buf := make([]byte, 16)
		block.Decrypt(buf, wrapped)
		copy(a[:], buf[:8])
		plain = buf[8:]
	} else {
		n := len(wrapped)/8 - 1
		plain = make([]byte, 8*n)
		copy(a[:], wrapped[:8])
		copy(plain, wrapped[8:])
		var buf [16]byte
		for j := 5; j >= 0; j-- {
			for i := n; i >= 1; i-- {
				t := uint64(n*j + i)
				binary.BigEndian.PutUint64(buf[:8], binary.BigEndian.Uint64(a[:])^t)
				copy(buf[8:], plain[8*(i-1):8*i])
				block.Decrypt(buf[:], buf[:])
				copy(a[:], buf[:8])
				copy(plain[8*(i-1):], buf[8:])
			}
		}
	}
	if subtle.ConstantTimeCompare(a[:4], kwpIV[:]) != 1 {
		return nil, errKWP
	}
	mli := int(binary.BigEndian.Uint32(a[4:]))
	if mli > len(plain) || mli <= len(plain)-8 {
		return nil, errKWP
	}
	for _, b := range plain[mli:] {
		if b != 0 {
			return nil, errKWP
		}
	}
	return plain[:mli], nil
}

func bigFromBytes(b []byte) *big.Int { return new(big.Int).SetBytes(b) }
