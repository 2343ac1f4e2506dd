package control

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
	"hostcrypt/control/keys/keystest"
	"hostcrypt/control/store"
	hfs "hostcrypt/fs"
	"hostcrypt/storage/local"
)

// A guest flush on a ReadWrite-cached disk: on a shared store it writes
// the host cache back to storage before it returns (another host that
// takes the VM over never sees this host's cache); on a host's own store
// the flushed writes stay in the cache, durable there. With and without
// encryption at host (the cache under the engine, or above it).
func TestSharedStoreFlushWritesCacheBack(t *testing.T) {
	for _, shared := range []bool{false, true} {
		for _, eah := range []bool{true, false} {
			dir := t.TempDir()
			sb, err := local.Open(filepath.Join(dir, "storage"))
			require.NoError(t, err)
			hb, err := local.Open(filepath.Join(dir, "host"))
			require.NoError(t, err)
			f := &fixture{tree: &fakeTree{images: map[string]hfs.Image{}}, keys: keystest.New()}
			f.cfg = Config{Storage: sb, HostLocal: hb, Keys: f.keys, Tree: f.tree,
				CacheDir: filepath.Join(dir, "host", "cache"), CacheSize: 8 << 20,
				CacheSequentialCutoff: -1, CacheSlowStorage: -1}
			if shared {
				secrets, err := store.Open(filepath.Join(dir, "state"), nil)
				require.NoError(t, err)
				t.Cleanup(func() { secrets.Close() })
				f.cfg.Store, f.cfg.Secrets = store.NewShared(sb), secrets
				f.cfg.Peers, f.cfg.HostName = &fakePeers{alive: map[string]bool{"a": true}}, "a"
			} else {
				f.cfg.StateDir = filepath.Join(dir, "state")
			}
			f.h, err = New(f.cfg)
			require.NoError(t, err)
			t.Cleanup(func() { f.h.Shutdown() })

			f.mustDisk(t, api.CreateDiskRequest{Name: "d1", SizeBytes: 16 << 20})
			f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, EncryptionAtHost: ptr(eah),
				DataDisks: []api.AttachedDisk{{Name: "d1", Caching: api.CacheReadWrite}}})
			img := f.tree.get("vm1/data-0.img")
			p := make([]byte, 256<<10)
			rand.Read(p)
			_, err = img.WriteAt(p, 8192)
			require.NoError(t, err)
			require.NoError(t, img.Sync())

			rep, err := f.h.VMEncryptionReport(context.Background(), "vm1")
			require.NoError(t, err)
			var dirty int64 = -1
			for _, e := range rep.Entries {
				if e.Disk == "d1" && e.Layer == "host cache" {
					require.True(t, e.Open)
					dirty = e.DirtyBytes
				}
			}
			// What may stay dirty after the flush on a shared store is what
			// the engine wrote after its last sync of a chunk (the zeros
			// over the older copy of its state), never the flushed data.
			if shared {
				assert.Less(t, dirty, int64(len(p)), "shared store, encryption at host %v: the flush wrote the cache back", eah)
			} else {
				assert.GreaterOrEqual(t, dirty, int64(len(p)), "own store, encryption at host %v: the flushed writes stay in the cache", eah)
			}
			require.NoError(t, f.h.Shutdown())
		}
	}
}
