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
	l := newLayout(1024, 40)
	assert.EqualValues(t, 4096, l.selOffset(0))
	assert.EqualValues(t, 8192, l.slotBase)
	assert.EqualValues(t, 8192, l.slotOffset(0, 0))
	assert.EqualValues(t, 8192+4136, l.slotOffset(0, 1))
	assert.EqualValues(t, 8192+1024*4136, l.slotOffset(1, 0))
	small := newLayout(8, 80)
	assert.EqualValues(t, 8192, small.slotBase)
	assert.EqualValues(t, 8192+9*4176, small.slotOffset(1, 1))
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
