//go:build ceph

package volume

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/control/keys/keystest"
	"hostcrypt/disk"
	"hostcrypt/internal/testenv"
	"hostcrypt/storage/rados"
)

// On a RADOS pool, a flush of a ReadWrite-cached disk returns once its
// writes are in the pool: another connection (another host) opens the
// disk straight from the pool while the first still has it open, its host
// cache never closed, and reads every flushed write.
func TestSharedStorageFlushOnRADOS(t *testing.T) {
	cfg := *testenv.RADOS(t, "test-volume-").RADOS
	a, err := rados.Open(t.Context(), cfg)
	require.NoError(t, err)
	b, err := rados.Open(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		keys, err := b.List(bg, "")
		assert.NoError(t, err)
		for _, k := range keys {
			assert.NoError(t, b.Delete(bg, k))
		}
		a.Close()
		b.Close()
	})
	kek := keystest.New()
	for _, eah := range []bool{true, false} {
		prefix := "disks/eah-" + map[bool]string{true: "on", false: "off"}[eah]
		d, err := disk.Create(bg, a, prefix, disk.CreateOptions{Size: 8 << 20, SectorSize: 512, Layers: []disk.KeyWrapper{kek}})
		require.NoError(t, err)
		require.NoError(t, d.Close())
		v, err := Open(bg, Config{Name: "d1", Storage: a, Prefix: prefix, Keys: kek,
			Caching: cache.ReadWrite, EncryptionAtHost: eah, SharedStorage: true,
			CacheDir: filepath.Join(t.TempDir(), "cache"), CacheBytes: 4 << 20, SequentialCutoff: -1, SlowStorage: -1})
		require.NoError(t, err)
		p := pattern(1 << 20)
		_, err = v.Image().WriteAt(p, 4096)
		require.NoError(t, err)
		require.NoError(t, v.Image().Sync())

		v2, err := Open(bg, Config{Name: "d1", Storage: b, Prefix: prefix, Keys: kek})
		require.NoError(t, err)
		got := make([]byte, len(p))
		_, err = v2.Image().ReadAt(got, 4096)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(p, got), "encryption at host %v: the flushed writes are in the pool", eah)
		_, err = v2.Close()
		require.NoError(t, err)
		_, err = v.Close()
		require.NoError(t, err)
	}
}
