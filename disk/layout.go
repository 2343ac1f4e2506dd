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

// FormatVersion is the format of new disks, written into their metadata and
// every chunk header. Version 1 and 2 disks are still opened, read and
// written in their own layout, and keep it (see docs/FORMAT.md).
const FormatVersion = 3

// The format versions this build reads and writes.
const (
	formatV1 = 1
	formatV2 = 2
	formatV3 = 3
)

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
// Both versions store each block's sealed unit (nonces || ciphertext || tags,
// see sealBlock) in one of two slots, A or B. Version 1 stores a slot whole:
//
//	[0, 4096)                     header
//	[4096, 4096+selBytes)         one selector byte per block, padded to 4 KiB
//	[slotBase, ...)               slot A of blocks 0..n-1, then slot B of blocks 0..n-1
//
// so every slot (4136 or 4176 bytes) straddles pages of the backing file and
// each block write is a partial-page write there. Version 2 splits a slot: its
// 4096 ciphertext bytes go to a page-aligned page, its nonces and tags (the
// entry) to a compact table, so the data path writes whole aligned pages:
//
//	[0, 4096)                     header
//	[4096, 4096+selBytes)         selectors, as in version 1
//	[entryBase, pageBase)         entries: block 0 slot A, block 0 slot B, block 1 slot A, ...
//	[pageBase, ...)               page of slot A of blocks 0..n-1, then slot B of blocks 0..n-1
//
// The entries are written by Sync (the engine keeps the current version's
// entry of each block in memory), before the data is made durable and before
// the selectors that name it.
type layout struct {
	format      int
	chunkBlocks int
	slotSize    int // one sealed unit: BlockSize + overhead
	selBytes    int64
	slotBase    int64 // version 1

	// Version 2 and 3. A sealed unit is head || page || tail: head is the
	// nonces in front of the ciphertext, the tail the tags after it; the
	// entry is head || tail.
	head      int
	entrySize int
	entryBase int64
	pageBase  int64

	// Version 3: the two copies of the selector state (see state.go), each
	// stateBytes long, in place of version 2's selector table.
	stateBytes int64
}

// newLayout returns the chunk geometry of a format version for a disk whose
// sealed units add overhead bytes, head of them (the nonces) in front of the
// ciphertext.
func newLayout(format, chunkBlocks, overhead, head int) layout {
	sel := roundPage(int64(chunkBlocks))
	l := layout{
		format:      format,
		chunkBlocks: chunkBlocks,
		slotSize:    BlockSize + overhead,
		selBytes:    sel,
	}
	switch format {
	case formatV1:
		l.slotBase = headerSize + sel
	default:
		l.head = head
		l.entrySize = overhead
		l.entryBase = headerSize + sel
		if format >= formatV3 {
			l.selBytes = 0
			l.stateBytes = roundPage(int64(stateLen(chunkBlocks)))
			l.entryBase = headerSize + 2*l.stateBytes
		}
		l.pageBase = l.entryBase + roundPage(2*int64(chunkBlocks)*int64(overhead))
	}
	return l
}

// stateOffset is where copy i (0 or 1) of the selector state lives in a
// version 3 chunk.
func (l layout) stateOffset(i int) int64 { return headerSize + int64(i)*l.stateBytes }

func roundPage(n int64) int64 { return (n + headerSize - 1) / headerSize * headerSize }

// selOffset is where block i's selector byte lives in a version 1 or 2
// chunk.
func (l layout) selOffset(i int) int64 { return headerSize + int64(i) }

// slotOffset is where slot s (0 = A, 1 = B) of block i lives in a version 1
// chunk.
func (l layout) slotOffset(s, i int) int64 {
	return l.slotBase + int64(s*l.chunkBlocks+i)*int64(l.slotSize)
}

// pageOffset is where the ciphertext page of slot s of block i lives in a
// version 2 chunk. Pages of one slot are consecutive, so a run of blocks
// written to the same slot is one write.
func (l layout) pageOffset(s, i int) int64 {
	return l.pageBase + int64(s*l.chunkBlocks+i)*BlockSize
}

// entryOffset is where the entry (nonces and tags) of slot s of block i lives
// in a version 2 chunk. Both entries of a block are adjacent, so the entries
// of a range of blocks are one range of the chunk.
func (l layout) entryOffset(s, i int) int64 {
	return l.entryBase + int64(2*i+s)*int64(l.entrySize)
}

// entriesEnd is where the entry table ends (version 2): the first byte that
// loading a chunk does not need.
func (l layout) entriesEnd() int64 { return l.pageBase }

// objectBytes is where a chunk object with every slot written ends: slot B
// of the last block is the last thing in it in both versions.
func (l layout) objectBytes() int64 {
	if l.format == formatV1 {
		return l.slotOffset(1, l.chunkBlocks-1) + int64(l.slotSize)
	}
	return l.pageOffset(1, l.chunkBlocks-1) + BlockSize
}

// unitOffset is where byte j of the sealed unit in slot s of block i lives in
// the chunk, in either version.
func (l layout) unitOffset(s, i, j int) int64 {
	switch {
	case l.format == formatV1:
		return l.slotOffset(s, i) + int64(j)
	case j < l.head:
		return l.entryOffset(s, i) + int64(j)
	case j < l.head+BlockSize:
		return l.pageOffset(s, i) + int64(j-l.head)
	default:
		return l.entryOffset(s, i) + int64(j-BlockSize)
	}
}

// split stores a sealed unit as a version 2 page and entry.
func (l layout) split(page, entry, unit []byte) {
	copy(page[:BlockSize], unit[l.head:])
	copy(entry, unit[:l.head])
	copy(entry[l.head:l.entrySize], unit[l.head+BlockSize:l.slotSize])
}

// join is split in reverse: the sealed unit from a page and an entry.
func (l layout) join(unit, page, entry []byte) {
	copy(unit, entry[:l.head])
	copy(unit[l.head:], page[:BlockSize])
	copy(unit[l.head+BlockSize:l.slotSize], entry[l.head:l.entrySize])
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
