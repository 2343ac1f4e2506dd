package crypto

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
)

// RSA key wrapping algorithms, named as Key Vault names them. Both use MGF1
// with the same hash and an empty label. RSA-OAEP-256 is what customer
// managed keys use; RSA-OAEP (SHA-1) exists for keys wrapped by older
// clients. SHA-1's collision weakness does not affect OAEP.
const (
	WrapRSAOAEP256 = "RSA-OAEP-256"
	WrapRSAOAEP    = "RSA-OAEP"
)

func oaepHash(alg string) (hash.Hash, error) {
	switch alg {
	case WrapRSAOAEP256:
		return sha256.New(), nil
	case WrapRSAOAEP:
		return sha1.New(), nil
	}
	return nil, fmt.Errorf("%w: key wrap %q", ErrUnsupported, alg)
}

// WrapRSA encrypts key to pub with RSAES-OAEP as alg names it.
func WrapRSA(alg string, pub *rsa.PublicKey, key []byte) ([]byte, error) {
	h, err := oaepHash(alg)
	if err != nil {
		return nil, err
	}
	if pub == nil {
		return nil, errors.New("crypto: WrapRSA: nil public key")
	}
	out, err := rsa.EncryptOAEP(h, rand.Reader, pub, key, nil)
	if err != nil {
		return nil, fmt.Errorf("crypto: %s wrap: %w", alg, err)
	}
	return out, nil
}

// UnwrapRSA decrypts a key wrapped by WrapRSA. Any decryption failure is
// ErrWrongKey, with no further detail: telling padding errors apart is what
// Manger's attack on OAEP feeds on.
func UnwrapRSA(alg string, priv *rsa.PrivateKey, wrapped []byte) ([]byte, error) {
	h, err := oaepHash(alg)
	if err != nil {
		return nil, err
	}
	if priv == nil {
		return nil, errors.New("crypto: UnwrapRSA: nil private key")
	}
	out, err := rsa.DecryptOAEP(h, nil, priv, wrapped, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %s unwrap failed", ErrWrongKey, alg)
	}
	return out, nil
}
