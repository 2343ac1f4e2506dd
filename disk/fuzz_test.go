package disk

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage/local"
)

// FuzzChunkHeader: any bytes parse to an error or to a header that marshals
// back to the same leading bytes.
func FuzzChunkHeader(f *testing.F) {
	h := chunkHeader{Version: 1, Layers: 1, BlockSize: 4096, ChunkBlocks: 1024, SlotSize: 4136, ChunkIndex: 3}
	f.Add(h.marshal()[:64])
	f.Add([]byte("HCCHUNK\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseChunkHeader(b)
		if err != nil {
			return
		}
		require.Equal(t, b[:chunkHeaderLen], got.marshal()[:chunkHeaderLen])
	})
}

// FuzzMetadata: any metadata object is refused with an error or accepted as
// valid; it never panics, and an accepted one survives a round trip.
func FuzzMetadata(f *testing.F) {
	raw, err := os.ReadFile("testdata/golden/v1-double-4096/disk/meta.json")
	require.NoError(f, err)
	f.Add(raw)
	f.Add([]byte(`{"destroyed":true}`))
	f.Add([]byte(`{"format":1,"chunkBlocks":0}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		be, err := local.Open(t.TempDir())
		require.NoError(t, err)
		ctx := context.Background()
		require.NoError(t, be.WriteMeta(ctx, metaKey("d"), raw))
		m, err := ReadMetadata(ctx, be, "d")
		if err != nil {
			return
		}
		out, err := json.Marshal(m)
		require.NoError(t, err)
		var again Metadata
		require.NoError(t, json.Unmarshal(out, &again))
		require.NoError(t, again.validate())
	})
}

// FuzzStoredBlock writes arbitrary bytes over a stored sealed unit (from
// format 2 on wherever its page and entry are) and its selector: a read
// returns the original data (the bytes did not change what counts) or an
// integrity error, never anything else; in format 3 a changed selector is
// always an integrity error.
func FuzzStoredBlock(f *testing.F) {
	for v := range uint8(3) {
		f.Add([]byte{0x01}, uint16(0), byte(0x0F), v)
		f.Add(bytes.Repeat([]byte{0xff}, 100), uint16(4000), byte(0xF0), v)
		f.Add([]byte{}, uint16(0), byte(0x00), v)
		f.Add(bytes.Repeat([]byte{0xff}, 100), uint16(4100), byte(0x0F), v)
	}
	f.Fuzz(func(t *testing.T, junk []byte, at uint16, sel byte, version uint8) {
		format := formats[int(version)%len(formats)]
		td := newTestDiskFormat(t, format, 1<<20, 1, 8)
		data := randBytes(BlockSize)
		_, err := td.WriteAt(data, 0)
		require.NoError(t, err)
		require.NoError(t, td.Sync())
		path := chunkFile(td, 0)
		selAt := td.lay.selOffset(0)
		if format >= formatV3 {
			raw, err := os.ReadFile(path)
			require.NoError(t, err)
			selAt = newestStateOffset(t, td, raw) + 16
		}
		var was byte
		patch(t, path, selAt, func(b []byte) { was, b[0] = b[0], sel })
		for i, c := range junk {
			j := (int(at) + i) % td.lay.slotSize
			patch(t, path, td.lay.unitOffset(0, 0, j), func(b []byte) { b[0] = c })
		}
		td.reopen(t)
		got := make([]byte, BlockSize)
		_, err = td.ReadAt(got, 0)
		switch {
		case err != nil:
			require.ErrorIs(t, err, ErrIntegrity)
		case format >= formatV3 && sel != was:
			t.Fatalf("format 3 read a block whose selector was changed from %#x to %#x", was, sel)
		case sel == selNone:
			require.Equal(t, make([]byte, BlockSize), got, "a never-written block reads as zeros")
		default:
			require.Equal(t, data, got)
		}
	})
}
