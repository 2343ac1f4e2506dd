package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestInspectBlock(t *testing.T) {
	for _, format := range formats {
		for _, layers := range []int{1, 2} {
			t.Run(fmt.Sprintf("v%d/layers=%d", format, layers), func(t *testing.T) {
				td := newTestDiskFormat(t, format, 1<<20, layers, 8)
				plain := randBytes(BlockSize)
				const off = 13 * BlockSize // chunk 1, block 5 of 8
				_, err := td.WriteAt(plain, off)
				require.NoError(t, err)

				v, err := td.InspectBlock(off + 100)
				require.NoError(t, err)
				require.True(t, v.Written)
				require.Equal(t, int64(13), v.Block)
				require.Equal(t, int64(1), v.Chunk)
				require.Equal(t, "disks/d1/chunks/00000001", v.Object)
				require.Equal(t, "A", v.Slot)
				require.Equal(t, format, v.Format)
				require.False(t, v.Persisted, "not synced yet")
				require.Len(t, v.Layers, layers)
				require.Equal(t, layers, v.Layers[0].Layer, "outermost first")
				inner := v.Layers[len(v.Layers)-1]
				require.Equal(t, 1, inner.Layer)
				require.Len(t, inner.Nonce, 24)
				require.Len(t, inner.Tag, 16)
				require.Len(t, inner.Ciphertext, BlockSize)
				require.NotEqual(t, plain, inner.Ciphertext)
				for _, l := range v.Layers {
					require.False(t, bytes.Contains(l.Ciphertext, plain[:64]), "layer %d shows plaintext", l.Layer)
				}

				// The outer unit is what the chunk object holds.
				obj, err := td.be.OpenChunk(context.Background(), v.Object, false)
				require.NoError(t, err)
				defer obj.Close()
				outer := v.Layers[0]
				unit := append(append(bytes.Clone(outer.Nonce), outer.Ciphertext...), outer.Tag...)
				if format == formatV1 {
					stored := make([]byte, len(unit))
					_, err = obj.ReadAt(stored, v.Offset)
					require.NoError(t, err)
					require.Equal(t, unit, stored)
				} else {
					page := make([]byte, BlockSize)
					_, err = obj.ReadAt(page, v.Offset)
					require.NoError(t, err)
					h := td.lay.head
					require.Equal(t, unit[h:h+BlockSize], page)
					require.NotZero(t, v.EntryOffset)
				}

				require.NoError(t, td.Sync())
				v, err = td.InspectBlock(off)
				require.NoError(t, err)
				require.True(t, v.Persisted)

				// A block never written is a hole.
				v, err = td.InspectBlock(2 * BlockSize)
				require.NoError(t, err)
				require.False(t, v.Written)
				require.Empty(t, v.Layers)

				_, err = td.InspectBlock(1 << 20)
				require.ErrorIs(t, err, ErrRange)
			})
		}
	}
}

// A stored unit whose outer layer fails authentication is refused as an
// integrity failure, as a read of it would be.
func TestInspectBlockDamaged(t *testing.T) {
	td := newTestDisk(t, 1<<20, 2, 8)
	_, err := td.WriteAt(randBytes(BlockSize), 0)
	require.NoError(t, err)
	require.NoError(t, td.Sync())
	v, err := td.InspectBlock(0)
	require.NoError(t, err)
	obj, err := td.be.OpenChunk(context.Background(), v.Object, false)
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = obj.ReadAt(b, v.Offset+7)
	require.NoError(t, err)
	b[0] ^= 1
	_, err = obj.WriteAt(b, v.Offset+7)
	require.NoError(t, err)
	obj.Close()
	before := td.Stats().IntegrityErrors
	_, err = td.InspectBlock(0)
	require.True(t, errors.Is(err, ErrIntegrity), "got %v", err)
	require.Equal(t, before+1, td.Stats().IntegrityErrors)
}

func TestWorkCounters(t *testing.T) {
	td := newTestDisk(t, 1<<20, 1, 0)
	s := td.Stats()
	require.Zero(t, s.BlocksSealed)
	require.Zero(t, s.BlocksOpened)
	_, err := td.WriteAt(randBytes(3*BlockSize), 0)
	require.NoError(t, err)
	_, err = td.WriteAt(make([]byte, BlockSize), 8*BlockSize) // zeros: a hole, nothing sealed
	require.NoError(t, err)
	_, err = td.ReadAt(make([]byte, 2*BlockSize), 0)
	require.NoError(t, err)
	s = td.Stats()
	require.Equal(t, uint64(3), s.BlocksSealed)
	require.Equal(t, uint64(2), s.BlocksOpened)
	require.Positive(t, s.SealTime)
	require.Positive(t, s.OpenTime)

	_, ok := td.LeaseLeft()
	require.False(t, ok, "no lease set")
	td.SetLease(time.Now().Add(time.Hour))
	left, ok := td.LeaseLeft()
	require.True(t, ok)
	require.InDelta(t, time.Hour.Seconds(), left.Seconds(), 5)

	// The engine's own syncs are counted.
	td.SetFlushInterval(10 * time.Millisecond)
	require.Eventually(t, func() bool { return td.Stats().BackgroundSyncs > 0 }, 10*time.Second, 10*time.Millisecond)
	require.Positive(t, td.Stats().BackgroundSyncTime)
}
