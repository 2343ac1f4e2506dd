package disk

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// span is the part of one block that a byte range covers.
type span struct {
	block int64 // block index
	off   int   // first byte within the block
	n     int   // bytes within the block
}

// spans splits [off, off+n) into per-block pieces with the engine's own
// offset arithmetic (Disk.within), so the table below tests that.
func spans(off, n int64) []span {
	if n <= 0 {
		return nil
	}
	var d Disk
	var out []span
	for b := off / BlockSize; b <= (off+n-1)/BlockSize; b++ {
		// within works on chunk-relative offsets; a chunk of any size
		// starting at 0 gives absolute ones.
		lo, hi := d.within(int(b), off, int(n))
		start := int(b*BlockSize - off)
		out = append(out, span{block: b, off: lo - start, n: hi - lo})
	}
	return out
}

func TestSpans(t *testing.T) {
	tests := []struct {
		name string
		off  int64
		n    int64
		want []span
	}{
		{"empty", 100, 0, nil},
		{"one whole block", 4096, 4096, []span{{1, 0, 4096}}},
		{"one sector", 512, 512, []span{{0, 512, 512}}},
		{"last sector of a block", 3584, 512, []span{{0, 3584, 512}}},
		{"straddles two blocks", 4000, 200, []span{{0, 4000, 96}, {1, 0, 104}}},
		{"head, whole, tail", 1000, 10000, []span{{0, 1000, 3096}, {1, 0, 4096}, {2, 0, 2808}}},
		{"three whole", 8192, 12288, []span{{2, 0, 4096}, {3, 0, 4096}, {4, 0, 4096}}},
		{"one byte", 4095, 1, []span{{0, 4095, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := spans(tt.off, tt.n)
			assert.Equal(t, tt.want, got)
			var total int64
			for _, s := range got {
				total += int64(s.n)
			}
			assert.Equal(t, max(tt.n, 0), total)
		})
	}
}

func TestSelectors(t *testing.T) {
	for _, tt := range []struct {
		sel  byte
		slot int
		ok   bool
		bad  bool
	}{
		{selNone, 0, false, false},
		{selSlotA, 0, true, false},
		{selSlotB, 1, true, false},
		{0x01, 0, false, true},
		{0xFF, 0, false, true},
		{0x0E, 0, false, true},
	} {
		slot, ok, err := slotOf(tt.sel)
		assert.Equal(t, tt.bad, err != nil, "%#x", tt.sel)
		assert.Equal(t, tt.ok, ok, "%#x", tt.sel)
		assert.Equal(t, tt.slot, slot, "%#x", tt.sel)
	}
	// A new version never goes into the slot holding the current one.
	s, sel := nextSlot(selNone)
	assert.Equal(t, 0, s)
	assert.Equal(t, selSlotA, sel)
	s, sel = nextSlot(selSlotA)
	assert.Equal(t, 1, s)
	assert.Equal(t, selSlotB, sel)
	s, sel = nextSlot(selSlotB)
	assert.Equal(t, 0, s)
	assert.Equal(t, selSlotA, sel)
	// Any single flipped bit of a valid selector is detected.
	for _, v := range []byte{selNone, selSlotA, selSlotB} {
		for bit := 0; bit < 8; bit++ {
			_, _, err := slotOf(v ^ 1<<bit)
			assert.Error(t, err, "selector %#x bit %d", v, bit)
		}
	}
}

func TestLayout(t *testing.T) {
	l := newLayout(formatV1, 1024, 40, 24)
	assert.EqualValues(t, 4096, l.selOffset(0))
	assert.EqualValues(t, 8192, l.slotBase)
	assert.EqualValues(t, 8192, l.slotOffset(0, 0))
	assert.EqualValues(t, 8192+4136, l.slotOffset(0, 1))
	assert.EqualValues(t, 8192+1024*4136, l.slotOffset(1, 0))
	small := newLayout(formatV1, 8, 80, 48)
	assert.EqualValues(t, 8192, small.slotBase)
	assert.EqualValues(t, 8192+9*4176, small.slotOffset(1, 1))
	assert.EqualValues(t, 8192+2*1024*4136, l.objectBytes())
}

func TestLayoutV2(t *testing.T) {
	for _, tt := range []struct {
		name                string
		blocks, over, head  int
		entryBase, pageBase int64
	}{
		// 2 * 1024 entries of 40 bytes: 80 KiB, 20 pages.
		{"single, 4 MiB chunks", 1024, 40, 24, 8192, 8192 + 81920},
		{"double, 4 MiB chunks", 1024, 80, 48, 8192, 8192 + 163840},
		{"double, 8-block chunks", 8, 80, 48, 8192, 8192 + 4096},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := newLayout(formatV2, tt.blocks, tt.over, tt.head)
			assert.EqualValues(t, 4096, l.selOffset(0))
			assert.Equal(t, tt.entryBase, l.entryBase)
			assert.Equal(t, tt.pageBase, l.pageBase)
			assert.Equal(t, tt.over, l.entrySize)
			assert.Equal(t, 4096+tt.over, l.slotSize)
			// Every page is page-aligned, slot A's pages then slot B's.
			assert.Zero(t, l.pageOffset(1, 3)%4096)
			assert.Equal(t, tt.pageBase+int64(tt.blocks+3)*4096, l.pageOffset(1, 3))
			// A block's two entries are adjacent.
			assert.Equal(t, tt.entryBase+int64(7*tt.over), l.entryOffset(1, 3))
			assert.Equal(t, l.entryOffset(0, 3)+int64(tt.over), l.entryOffset(1, 3))
			assert.LessOrEqual(t, l.entryOffset(1, tt.blocks-1)+int64(tt.over), l.pageBase)
			assert.Equal(t, tt.pageBase+int64(2*tt.blocks)*4096, l.objectBytes())
			// The bytes of a sealed unit: nonces to the entry, ciphertext
			// to the page, tags to the rest of the entry.
			assert.Equal(t, l.entryOffset(1, 3), l.unitOffset(1, 3, 0))
			assert.Equal(t, l.pageOffset(1, 3), l.unitOffset(1, 3, tt.head))
			assert.Equal(t, l.pageOffset(1, 3)+4095, l.unitOffset(1, 3, tt.head+4095))
			assert.Equal(t, l.entryOffset(1, 3)+int64(tt.head), l.unitOffset(1, 3, tt.head+4096))
			// split and join are inverses.
			unit := randBytes(l.slotSize)
			page, entry := make([]byte, 4096), make([]byte, l.entrySize)
			l.split(page, entry, unit)
			back := make([]byte, l.slotSize)
			l.join(back, page, entry)
			assert.Equal(t, unit, back)
		})
	}
}

func TestChunkHeaderRoundTrip(t *testing.T) {
	h := chunkHeader{Version: 1, Layers: 2, BlockSize: 4096, ChunkBlocks: 1024, SlotSize: 4176, ChunkIndex: 77}
	copy(h.VolumeID[:], "0123456789abcdef")
	b := h.marshal()
	require.Len(t, b, headerSize)
	got, err := parseChunkHeader(b)
	require.NoError(t, err)
	assert.Equal(t, h, got)
	b[0] ^= 1
	_, err = parseChunkHeader(b)
	assert.ErrorIs(t, err, errBadHeader)
	_, err = parseChunkHeader(b[:10])
	assert.ErrorIs(t, err, errBadHeader)
}
