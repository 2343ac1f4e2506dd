package integration

import (
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// The host cache takes in only I/O it can help: random I/O, and only while
// storage is slower than the cache. The tests that look at what a cache
// holds run hostcryptd with slowStorage and write and read their patterns
// with scatteredIO, 4 KiB at a time in descending order, so that no
// sequential stream forms (a sequential stream goes around the cache).
var slowStorage = []string{"--storage-latency", "1ms"}

// scatteredIO writes data into img at off (write) or reads it back and
// returns it, with O_DIRECT, 4 KiB at a time from the end to the start.
func scatteredIO(t *testing.T, img string, data []byte, off int64, write bool) []byte {
	t.Helper()
	const bs = 4096
	require.Zero(t, len(data)%bs)
	require.Zero(t, off%bs)
	flags := os.O_RDONLY
	if write {
		flags = os.O_WRONLY
	}
	f, err := os.OpenFile(img, flags|syscall.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	// Anonymous mappings are page-aligned, as O_DIRECT wants.
	buf, err := syscall.Mmap(-1, 0, bs, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	require.NoError(t, err)
	defer syscall.Munmap(buf)
	out := make([]byte, len(data))
	for i := len(data)/bs - 1; i >= 0; i-- {
		if write {
			copy(buf, data[i*bs:])
			_, err = f.WriteAt(buf, off+int64(i*bs))
		} else {
			_, err = f.ReadAt(buf, off+int64(i*bs))
			copy(out[i*bs:], buf)
		}
		require.NoError(t, err)
	}
	if write {
		require.NoError(t, f.Sync())
	}
	return out
}
