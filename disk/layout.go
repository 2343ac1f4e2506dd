package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// BlockSize is the encryption unit: every block is sealed on its own.
const BlockSize = 4096

// DefaultChunkBlocks is how many blocks one chunk object holds (4 MiB of
// plaintext). Larger chunks mean fewer files and open descriptors; smaller ones
// make copy-on-write for snapshots cheaper. 4 MiB keeps a 1 GiB disk at 256
// chunk objects.
const DefaultChunkBlocks = 1024

// FormatVersion is written into every disk's metadata and every chunk header.
const FormatVersion = 1

const (
	headerSize = 4096
	chunkMagic = "HCCHUNK\x00"
)

// Selector values. Each block has one selector byte saying which of its two
// slots holds the current version. The values are far apart in Hamming
// distance so that a flipped bit turns a selector invalid (an integrity
// error) instead of silently pointing at the other slot or at "never
// written". Zero must mean "never written" so that a hole reads as one.
const (
	selNone  byte = 0x00
	selSlotA byte = 0x0F
	selSlotB byte = 0xF0
)

// layout is the geometry of one chunk object; it is derived from the disk's
// metadata and is the same for every chunk of a disk.
//
//	[0, 4096)                     header
//	[4096, 4096+selBytes)         one selector byte per block, padded to 4 KiB
//	[slotBase, ...)               slot A of blocks 0..n-1, then slot B of blocks 0..n-1
//
// A slot holds one sealed block: for one layer nonce||ciphertext||tag, for two
// layers the second layer's seal of the first layer's sealed block.
type layout struct {
	chunkBlocks int
	slotSize    int
	selBytes    int64
	slotBase    int64
}

func newLayout(chunkBlocks, overhead int) layout {
	sel := int64(chunkBlocks+headerSize-1) / headerSize * headerSize
	return layout{
		chunkBlocks: chunkBlocks,
		slotSize:    BlockSize + overhead,
		selBytes:    sel,
		slotBase:    headerSize + sel,
	}
}

// selOffset is where block i's selector byte lives in its chunk.
func (l layout) selOffset(i int) int64 { return headerSize + int64(i) }

// slotOffset is where slot s (0 = A, 1 = B) of block i lives in its chunk.
func (l layout) slotOffset(s, i int) int64 {
	return l.slotBase + int64(s*l.chunkBlocks+i)*int64(l.slotSize)
}

// slotOf maps a selector to the slot index it names; ok is false for a
// never-written block, err is set for a damaged selector.
func slotOf(sel byte) (slot int, ok bool, err error) {
	switch sel {
	case selNone:
		return 0, false, nil
	case selSlotA:
		return 0, true, nil
	case selSlotB:
		return 1, true, nil
	}
	return 0, false, fmt.Errorf("selector byte %#02x is not a valid value", sel)
}

// nextSlot says where a new version of a block goes: never into the slot that
// holds the current version, so a write cut short by a crash leaves the old
// version readable.
func nextSlot(sel byte) (slot int, newSel byte) {
	if sel == selSlotA {
		return 1, selSlotB
	}
	return 0, selSlotA
}

// chunkHeader is the fixed header at the start of every chunk object. It makes
// a chunk self-describing and lets a chunk from another disk or position be
// refused before any block is opened.
type chunkHeader struct {
	Version     uint16
	Layers      uint16
	BlockSize   uint32
	ChunkBlocks uint32
	SlotSize    uint32
	ChunkIndex  uint64
	VolumeID    [16]byte
}

const chunkHeaderLen = 8 + 2 + 2 + 4 + 4 + 4 + 8 + 16

var errBadHeader = errors.New("chunk header does not match the disk")

func (h chunkHeader) marshal() []byte {
	b := make([]byte, headerSize)
	copy(b, chunkMagic)
	binary.BigEndian.PutUint16(b[8:], h.Version)
	binary.BigEndian.PutUint16(b[10:], h.Layers)
	binary.BigEndian.PutUint32(b[12:], h.BlockSize)
	binary.BigEndian.PutUint32(b[16:], h.ChunkBlocks)
	binary.BigEndian.PutUint32(b[20:], h.SlotSize)
	binary.BigEndian.PutUint64(b[24:], h.ChunkIndex)
	copy(b[32:48], h.VolumeID[:])
	return b
}

func parseChunkHeader(b []byte) (chunkHeader, error) {
	var h chunkHeader
	if len(b) < chunkHeaderLen {
		return h, fmt.Errorf("%w: %d bytes, want %d", errBadHeader, len(b), chunkHeaderLen)
	}
	if string(b[:8]) != chunkMagic {
		return h, fmt.Errorf("%w: bad magic %q", errBadHeader, b[:8])
	}
	h.Version = binary.BigEndian.Uint16(b[8:])
	h.Layers = binary.BigEndian.Uint16(b[10:])
	h.BlockSize = binary.BigEndian.Uint32(b[12:])
	h.ChunkBlocks = binary.BigEndian.Uint32(b[16:])
	h.SlotSize = binary.BigEndian.Uint32(b[20:])
	h.ChunkIndex = binary.BigEndian.Uint64(b[24:])
	copy(h.VolumeID[:], b[32:48])
	return h, nil
}

// blockAD is the additional data that binds a sealed block to its disk, its
// absolute block index and its layer, so that a block moved to another index
// or copied from another disk fails authentication.
func blockAD(dst *[adLen]byte, vol *[16]byte, block uint64, layer byte) []byte {
	copy(dst[:4], "HCB1")
	copy(dst[4:20], vol[:])
	binary.BigEndian.PutUint64(dst[20:28], block)
	dst[28] = layer
	return dst[:]
}

const adLen = 29
