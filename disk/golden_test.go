package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage/local"
)

var updateGolden = flag.Bool("update-golden", false, "write the golden disk images of the current format version")

// goldenKEK is the fixed key-encryption key of the golden images. It protects
// nothing but test data.
var goldenKEK = kek{id: "golden/kek/1", key: bytes.Repeat([]byte{0x5c}, 32)}

var goldenInfra = kek{id: "golden/infra/1", key: bytes.Repeat([]byte{0xa3}, 32)}

// goldenRecipe is what every golden image holds: the same writes and
// discards, applied to a model to know what must be read back.
type goldenWrite struct {
	off, n  int64
	discard bool
}

var goldenRecipe = []goldenWrite{
	{off: 0, n: 8192},
	{off: 12800, n: 512},            // one sector, read-modify-write
	{off: 8*4096 - 1000, n: 3000},   // across a chunk boundary (8-block chunks)
	{off: 100 * 4096, n: 20 * 4096}, // several chunks
	{off: 105 * 4096, n: 3 * 4096, discard: true},
	{off: 1<<20 - 4096, n: 4096}, // the last block
}

func goldenBytes(off, n int64) []byte {
	out := make([]byte, 0, n+32)
	for i := 0; int64(len(out)) < n; i++ {
		h := sha256.Sum256([]byte{byte(off), byte(off >> 8), byte(off >> 16), byte(i), byte(i >> 8)})
		out = append(out, h[:]...)
	}
	return out[:n]
}

func goldenModel() []byte {
	m := make([]byte, 1<<20)
	for _, w := range goldenRecipe {
		if w.discard {
			clear(m[w.off : w.off+w.n])
		} else {
			copy(m[w.off:], goldenBytes(w.off, w.n))
		}
	}
	return m
}

// TestGolden opens the disk images kept in testdata, written by each format
// version, reads them back, then writes to them (whole blocks and
// read-modify-write) and reads the result after reopening. Every later
// version must still pass it. The images of the current version are
// regenerated (only when adding a new version's images) with
// go test ./disk -run TestGolden -update-golden; older ones never are.
func TestGolden(t *testing.T) {
	for _, g := range []struct {
		name   string
		format int
		ring   keyring
		sector int
	}{
		{"v1-single-512", 1, keyring{goldenKEK}, 512},
		{"v1-double-4096", 1, keyring{goldenKEK, goldenInfra}, 4096},
		{"v2-single-512", 2, keyring{goldenKEK}, 512},
		{"v2-double-4096", 2, keyring{goldenKEK, goldenInfra}, 4096},
		{"v3-single-512", 3, keyring{goldenKEK}, 512},
		{"v3-double-4096", 3, keyring{goldenKEK, goldenInfra}, 4096},
	} {
		t.Run(g.name, func(t *testing.T) {
			dir := filepath.Join("testdata", "golden", g.name)
			ctx := context.Background()
			if *updateGolden && g.format == FormatVersion {
				require.NoError(t, os.RemoveAll(dir))
				be, err := local.Open(dir)
				require.NoError(t, err)
				d, err := Create(ctx, be, "disk", CreateOptions{Size: 1 << 20, SectorSize: g.sector, ChunkBlocks: 8, Layers: wrappers(g.ring), Format: g.format})
				require.NoError(t, err)
				for _, w := range goldenRecipe {
					if w.discard {
						require.NoError(t, d.Discard(w.off, w.n))
					} else {
						_, err := d.WriteAt(goldenBytes(w.off, w.n), w.off)
						require.NoError(t, err)
					}
				}
				require.NoError(t, d.Close())
			}
			// Read from a copy: opening must not need to write, and the
			// test must not change the kept files.
			work := t.TempDir()
			require.NoError(t, os.CopyFS(work, os.DirFS(dir)))
			be, err := local.Open(work)
			require.NoError(t, err)
			m, err := ReadMetadata(ctx, be, "disk")
			require.NoError(t, err)
			require.Equal(t, g.format, m.Format)
			require.Equal(t, g.sector, m.SectorSize)
			d, err := Open(ctx, be, "disk", g.ring)
			require.NoError(t, err)
			defer d.Close()
			got := make([]byte, d.Size())
			_, err = d.ReadAt(got, 0)
			require.NoError(t, err)
			model := goldenModel()
			require.True(t, bytes.Equal(model, got), "golden image %s reads back different data", g.name)

			// The disk keeps its version and stays writable in it.
			for _, w := range []struct{ off, n int64 }{{4096, 4096}, {12800 + 512, 1000}, {100*4096 + 7, 9000}} {
				p := goldenBytes(w.off+1, w.n)
				_, err := d.WriteAt(p, w.off)
				require.NoError(t, err)
				copy(model[w.off:], p)
			}
			require.NoError(t, d.Close())
			m, err = ReadMetadata(ctx, be, "disk")
			require.NoError(t, err)
			require.Equal(t, g.format, m.Format)
			d, err = Open(ctx, be, "disk", g.ring)
			require.NoError(t, err)
			defer d.Close()
			_, err = d.ReadAt(got, 0)
			require.NoError(t, err)
			require.True(t, bytes.Equal(model, got), "golden image %s after writing", g.name)
		})
	}
}
