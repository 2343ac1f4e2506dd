package crypto

import (
	"crypto/rand"
	"errors"
	"runtime"
)

// KeySize is the size in bytes of every symmetric key this package makes or
// takes as a cipher key: AES-256, XAES-256-GCM and XChaCha20-Poly1305 keys.
const KeySize = 32

// The errors callers are expected to tell apart with errors.Is. They are kept
// few on purpose: a block that fails authentication and a key that does not
// match are different events with different remedies (an integrity alarm
// versus "this is the wrong key, or it was revoked").
var (
	// ErrIntegrity reports a sealed unit that failed authentication: it was
	// tampered with, torn, moved to another index or copied from elsewhere.
	ErrIntegrity = errors.New("crypto: integrity check failed")

	// ErrWrongKey reports a key that does not match its key check value, or a
	// wrapped key that would not unwrap under the key offered.
	ErrWrongKey = errors.New("crypto: wrong key")

	// ErrUnsupported reports an algorithm name this package does not know.
	ErrUnsupported = errors.New("crypto: unsupported algorithm")

	// ErrClosed reports the use of a Layer after its Close.
	ErrClosed = errors.New("crypto: layer is closed")
)

// NewDataKey returns KeySize fresh random bytes from crypto/rand, for use as a
// disk's data key or infrastructure key.
func NewDataKey() []byte {
	k := make([]byte, KeySize)
	// Since Go 1.24 crypto/rand.Read never returns an error: if the kernel
	// cannot supply randomness the program crashes instead of going on with
	// a weak key.
	rand.Read(k)
	return k
}

// Wipe overwrites b with zeros, so that a key does not linger in memory the
// caller controls after its last use.
//
// Wipe is best effort. Go gives no guarantee that no other copy exists: the
// garbage collector may have moved the backing array, a slice may have been
// copied by append, and the stdlib cipher objects built from a key (AES round
// keys, the GHASH table, XChaCha20-Poly1305's key copy) live in memory this
// package cannot reach. Dropping every reference to those objects is the rest
// of the job.
func Wipe(b []byte) {
	clear(b)
	// Keep b reachable until the clear is done so the stores cannot be
	// treated as dead and dropped.
	runtime.KeepAlive(b)
}
