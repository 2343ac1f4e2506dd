// Package crypto holds hostcrypt's cryptographic primitives: data keys, the
// AEADs that seal disk blocks, key wrapping, HKDF subkeys and wiping.
//
// It is pure functions over byte slices. It does no I/O, opens no files,
// talks to no key store and logs nothing; the block format, key metadata and
// key lifetimes belong to the packages that call it. No function here puts a
// key or plaintext into an error message.
//
// # Choices and why
//
// Block layer 1 is XAES-256-GCM (c2sp.org/XAES-256-GCM) under the disk's
// data key, with a fresh random 192-bit nonce for every sealed unit. A disk
// rewrites blocks in place, and snapshots and clones share a key with their
// source and then diverge, so no counter could be trusted to stay unique;
// with 192 random bits a nonce collision is not a practical concern even
// after 2^64 seals (probability about 2^-65), while AES-256-GCM's own 96-bit
// nonces would call for a rekey after about 2^32 random ones. XAES keeps
// AES-GCM's speed and its FIPS-approved building blocks: the per-nonce
// subkey costs two AES block encryptions plus the GCM set-up. A Sealer
// (one per goroutine) pays that set-up once per batch of units: it draws a
// random 192-bit nonce and counts up in its second half for up to 1024 units,
// so the first half, which selects the subkey, stays the same for the batch.
// A nonce repeats only if two batches drew the same 96-bit first half and
// overlapping counter ranges.
//
// Block layer 2, for double encryption, is XChaCha20-Poly1305 under an
// independent infrastructure key. It is a different algorithm on purpose:
// the two layers share no primitive, so a flaw in AES or GHASH alone does
// not open data that carries both.
//
// Neither layer uses a raw key as a cipher key. Every key is run through
// HKDF-SHA256 with a readable, versioned label ("hostcrypt v1 layer
// XAES-256-GCM", "hostcrypt v1 key check", ...), so each use of a secret
// gets an independent subkey, the same secret given to two layers still
// yields two unrelated keys, and a future format version can change labels
// without changing stored keys. KeyCheck publishes one such subkey as a
// commitment, so a wrong key (ErrWrongKey) can be told from corrupted data
// (ErrIntegrity) before any block is read.
//
// Data keys are wrapped, never the data: AES key wrap (RFC 3394, RFC 5649)
// under platform keys, RSA-OAEP-256 (or RSA-OAEP) under customer keys, so
// rotating a key re-wraps 32 bytes.
//
// # Memory
//
// Wipe and Layer.Close clear the key bytes this package owns. Go cannot
// promise more: the stdlib keeps AES round keys and the XChaCha20-Poly1305
// key inside objects it does not let us clear, and the runtime may have
// copied any slice. Callers should wipe what they hold and drop references.
package crypto
