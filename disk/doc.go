// Package disk is the encrypted disk engine: it stores a virtual disk in a
// storage backend as chunk objects of sealed 4 KiB blocks, and serves ReadAt,
// WriteAt, Discard, Sync and the rest on plaintext offsets.
//
// The format is specified in docs/FORMAT.md. In short: every 4 KiB block is
// sealed on its own with XAES-256-GCM under the disk's data key (layer 1) and,
// for double encryption, sealed again with XChaCha20-Poly1305 under an
// independent infrastructure key (layer 2). The additional data binds each
// block to the disk's volume id and the block's index. Each block has two
// slots; a new version always goes to the slot not holding the current one,
// and a one-byte selector is switched only after the data is written, so a
// write cut short never destroys the previous version. Format version 2
// keeps each slot's ciphertext in its own page-aligned 4 KiB page and the
// nonces and tags in a compact entry table written at Sync, so that the data
// path writes whole pages of the backing file. Format version 3 (new disks)
// authenticates each chunk's selectors (a generation and an HMAC under a key
// derived from the data key, in two copies so that a torn write leaves the
// previous one; state.go), so that editing them is an integrity error and
// not a rollback, and writes a block's first version into both of its
// slots, so that no rewrite needs new space. Version 1 and 2 disks keep
// their layout.
//
// The chunk table is sparse (table.go): memory and Sync follow the chunks
// written, not the disk's size. A failed sync fences the disk (no retry).
//
// The engine knows nothing of key stores: keys arrive wrapped, through the
// KeyWrapper and KeyUnwrapper interfaces, and the unwrapped keys live only in
// the open Disk until Close wipes them.
//
// Concurrency: the data path takes only striped block locks (readers share,
// writers exclude), never a per-disk lock, so requests to different blocks of
// one disk run in parallel; large requests also spread their sealing over the
// available cores.
package disk
