package local

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestPunchHoleFallback covers filesystems that refuse to punch holes
// (EOPNOTSUPP): the range must still read as zeros, and the file must not
// grow, even though no space is freed.
func TestPunchHoleFallback(t *testing.T) {
	b, err := Open(t.TempDir())
	require.NoError(t, err)
	b.noPunch.Store(true) // as after a first EOPNOTSUPP
	c, err := b.OpenChunk(t.Context(), "c", true)
	require.NoError(t, err)
	defer c.Close()

	data := bytes.Repeat([]byte{0x5A}, 3<<20)
	_, err = c.WriteAt(data, 0)
	require.NoError(t, err)
	require.NoError(t, c.PunchHole(100, 2<<20))
	require.NoError(t, c.PunchHole(3<<20-10, 1<<20)) // crosses the end

	got := make([]byte, len(data))
	_, err = c.ReadAt(got, 0)
	require.NoError(t, err)
	want := bytes.Clone(data)
	clear(want[100 : 100+2<<20])
	clear(want[len(want)-10:])
	require.Equal(t, want, got)

	fi, err := c.(*chunk).f.Stat()
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), fi.Size(), "a punch never grows the chunk")
}
