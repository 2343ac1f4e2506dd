// Package soak is the writer and the checker of the reliability suite
// (`make soak`, integration/soak_test.go).
//
// A writer stamps every 4 KiB block it writes with its own id, the block's
// index and a sequence number, fills the rest from those three, and ends it
// with a CRC-32C of the whole; it calls fdatasync after each small batch and
// logs, before a batch, which sequence number goes to which block, and
// after it, whether fdatasync acknowledged it. After a crash or a storage
// fault the checker reads every block back and sorts it:
//
//   - the last acknowledged write of the block, or a later write that was
//     in flight (issued, never acknowledged): good;
//   - an older write, or zeros where a write was acknowledged: an
//     acknowledged write was lost;
//   - anything else, a block whose checksum fails (half old, half new), a
//     block of another writer or index, a write never issued to it: the
//     block reads neither its old nor its new content (torn);
//   - a read error: never acceptable once the faults are gone.
//
// The package knows nothing of daemons or mounts; it works on any file, and
// its tests run it on a plain one.
package soak

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// BlockSize is the size of every write and of every block checked: the
// page size, the engine's block size and O_DIRECT's alignment.
const BlockSize = 4096

// magic opens every block a writer writes.
var magic = [8]byte{'h', 'c', 's', 'o', 'a', 'k', 0, 1}

// Block layout: magic, writer id, block index, sequence number, filler,
// CRC-32C of everything before it in the last 4 bytes.
const (
	offWriter = 8
	offBlock  = 12
	offSeq    = 20
	offFill   = 28
	offCRC    = BlockSize - 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Stamp is what a block says about itself.
type Stamp struct {
	Writer uint32
	Block  int64 // index of the block in the image, in BlockSize units
	Seq    uint64
}

// Encode fills buf (BlockSize bytes) with the content of write s.
func Encode(buf []byte, s Stamp) {
	if len(buf) != BlockSize {
		panic(fmt.Sprintf("soak: Encode into %d bytes", len(buf)))
	}
	copy(buf, magic[:])
	binary.LittleEndian.PutUint32(buf[offWriter:], s.Writer)
	binary.LittleEndian.PutUint64(buf[offBlock:], uint64(s.Block))
	binary.LittleEndian.PutUint64(buf[offSeq:], s.Seq)
	// The filler differs for every write, so that no two versions of a
	// block share a page-sized run that could hide a torn write from the
	// checksum's point of view (it would not, but a torn block should also
	// be visibly torn to a person reading a hex dump).
	x := uint64(s.Writer)<<48 ^ uint64(s.Block)<<20 ^ s.Seq ^ 0x9e3779b97f4a7c15
	for off := offFill; off+8 <= offCRC; off += 8 {
		x = splitmix(x)
		binary.LittleEndian.PutUint64(buf[off:], x)
	}
	binary.LittleEndian.PutUint32(buf[offCRC:], crc32.Checksum(buf[:offCRC], castagnoli))
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// Content is what a block read back holds.
type Content int

const (
	// Zeros: the block was never written (or reads as a hole).
	Zeros Content = iota
	// Written: a whole write of some writer, which Decode returns.
	Written
	// Damaged: neither zeros nor a whole write; Decode says why.
	Damaged
)

var zeroBlock [BlockSize]byte

// Decode tells what buf (BlockSize bytes) holds. For Damaged, the string
// says what is wrong, for the evidence of a failed run.
func Decode(buf []byte) (Content, Stamp, string) {
	if len(buf) != BlockSize {
		return Damaged, Stamp{}, fmt.Sprintf("%d bytes, not %d", len(buf), BlockSize)
	}
	if bytes.Equal(buf, zeroBlock[:]) {
		return Zeros, Stamp{}, ""
	}
	if !bytes.Equal(buf[:len(magic)], magic[:]) {
		return Damaged, Stamp{}, fmt.Sprintf("no block header (starts %x)", buf[:16])
	}
	s := Stamp{
		Writer: binary.LittleEndian.Uint32(buf[offWriter:]),
		Block:  int64(binary.LittleEndian.Uint64(buf[offBlock:])),
		Seq:    binary.LittleEndian.Uint64(buf[offSeq:]),
	}
	if got, want := crc32.Checksum(buf[:offCRC], castagnoli), binary.LittleEndian.Uint32(buf[offCRC:]); got != want {
		// The header may come from one version and the tail from another.
		return Damaged, s, fmt.Sprintf("checksum %08x, stored %08x: parts of different writes (header says writer %d block %d seq %d)", got, want, s.Writer, s.Block, s.Seq)
	}
	return Written, s, ""
}
