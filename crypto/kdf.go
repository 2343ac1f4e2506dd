package crypto

import (
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
)

// HKDF info strings. Each use of a secret gets its own readable label, so two
// uses can never yield the same subkey, and the version in the label lets a
// future format derive different keys from the same secret.
const (
	labelLayer    = "hostcrypt v1 layer "
	labelKeyCheck = "hostcrypt v1 key check"
)

// KeyCheckSize is the length of a key check value.
const KeyCheckSize = 16

// DeriveKey returns n bytes of HKDF-SHA256 (RFC 5869) output keyed by secret,
// with the given salt and label as the info string.
func DeriveKey(secret, salt []byte, label string, n int) ([]byte, error) {
	if n <= 0 {
		return nil, fmt.Errorf("crypto: derived key length %d must be positive", n)
	}
	k, err := hkdf.Key(sha256.New, secret, salt, label, n)
	if err != nil {
		return nil, fmt.Errorf("crypto: derive %q: %w", label, err)
	}
	return k, nil
}

// KeyCheck returns a KeyCheckSize-byte public commitment to key. It is an
// HKDF output under its own label, so it reveals nothing useful about the key
// or about any other subkey, and it can be stored beside a wrapped key. Its
// purpose is diagnosis: a key that fails its check is the wrong key
// (ErrWrongKey), while a key that passes but cannot open data points at
// corrupted data (ErrIntegrity).
func KeyCheck(key, salt []byte) []byte {
	k, err := hkdf.Key(sha256.New, key, salt, labelKeyCheck, KeyCheckSize)
	if err != nil {
		// Only an impossible output length makes hkdf.Key fail.
		panic("crypto: key check: " + err.Error())
	}
	return k
}

// VerifyKeyCheck reports whether check is the key check value of key under
// salt: nil if so, ErrWrongKey if not. The comparison takes constant time.
func VerifyKeyCheck(key, salt, check []byte) error {
	if len(check) != KeyCheckSize {
		return fmt.Errorf("crypto: key check value is %d bytes, want %d", len(check), KeyCheckSize)
	}
	if subtle.ConstantTimeCompare(KeyCheck(key, salt), check) != 1 {
		return ErrWrongKey
	}
	return nil
}
