package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"hostcrypt/storage/local"
)

// smallFS mounts a tmpfs of size bytes for the test, as root. Without root
// the test is skipped, unless CI is set: there it fails.
func smallFS(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("cannot mount a tmpfs (needs root): %v", err)
		}
		t.Fatalf("mounting a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// fill writes a file until the file system is full.
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	require.NoError(t, err)
	defer f.Close()
	for _, n := range []int{1 << 20, 4096, 512} {
		b := make([]byte, n)
		for {
			if _, err := f.Write(b); err != nil {
				require.ErrorIs(t, err, syscall.ENOSPC)
				break
			}
		}
	}
}

// On a full backing file system, a format 3 disk still overwrites (and
// syncs) every block written before, whole or in part; only blocks never
// written fail, with ENOSPC. Format 2 fails overwrites too (shown for the
// record: that is what format 3 fixes).
func TestFullStoreFailsOnlyNewBlocks(t *testing.T) {
	for _, format := range []int{formatV2, formatV3} {
		t.Run(fmt.Sprintf("v%d", format), func(t *testing.T) {
			dir := smallFS(t, 12<<20)
			be, err := local.Open(dir)
			require.NoError(t, err)
			ring := keyring{newKEK("k")}
			ctx := context.Background()
			d, err := Create(ctx, be, "d", CreateOptions{Size: 64 << 20, Layers: wrappers(ring), Format: format})
			require.NoError(t, err)
			defer d.Close()
			// 1 MiB at the start of chunk 0, 64 KiB in chunk 1, a few
			// blocks here and there.
			written := map[int64][]byte{}
			put := func(off int64, n int) error {
				p := randBytes(n)
				if _, err := d.WriteAt(p, off); err != nil {
					return err
				}
				written[off] = p
				return nil
			}
			require.NoError(t, put(0, 1<<20))
			require.NoError(t, put(4<<20, 64<<10))
			require.NoError(t, put(2<<20, BlockSize))
			require.NoError(t, put(3<<20+8192, 3*BlockSize))
			require.NoError(t, d.Sync())
			fill(t, dir)

			overwrite := func() error {
				for round := 0; round < 3; round++ {
					for off, p := range written {
						q := randBytes(len(p))
						if _, err := d.WriteAt(q, off); err != nil {
							return err
						}
						written[off] = q
					}
					// A 512-byte write inside a written block.
					q := randBytes(512)
					if _, err := d.WriteAt(q, 2<<20+1024); err != nil {
						return err
					}
					copy(written[2<<20][1024:], q)
					if err := d.Sync(); err != nil {
						return err
					}
				}
				return nil
			}
			err = overwrite()
			if format < formatV3 {
				require.ErrorIs(t, err, syscall.ENOSPC, "format 2 needs new space for the first rewrite of a block")
				return
			}
			require.NoError(t, err, "an overwrite of a written block failed on a full store")

			for _, off := range []int64{1 << 20, 2<<20 + BlockSize, 8 << 20, 40 << 20} {
				_, err := d.WriteAt(randBytes(BlockSize), off)
				require.ErrorIs(t, err, syscall.ENOSPC, "a block never written, at %d", off)
				require.ErrorIs(t, err, syscall.EIO)
			}
			require.NoError(t, d.Sync())
			require.NoError(t, d.Fenced())
			require.NoError(t, d.Close())

			d, err = Open(ctx, be, "d", ring)
			require.NoError(t, err)
			for off, p := range written {
				got := make([]byte, len(p))
				_, err := d.ReadAt(got, off)
				require.NoError(t, err)
				require.True(t, bytes.Equal(p, got), "offset %d", off)
			}
			require.False(t, errors.Is(d.Fenced(), ErrFenced))
			require.NoError(t, d.Close())
		})
	}
}
