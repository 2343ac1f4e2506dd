package control

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
)

// A version is a copy with its own data key and objects, a source of disks
// by path or id, re-wrapped by a key switch of its set, owned for host gc,
// kept in its subscription while it has a customer key, and removed with
// its objects.
func TestGalleryImageVersions(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	k1, k2 := kid("vault1", "k1"), kid("vault1", "k2")
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: k1})
	require.NoError(t, err)
	f.keys.Grant("p-des/des1", true)
	f.mustDisk(t, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20})
	f.writeDisk(t, "d1", []byte("gallery content"), 1<<20)

	_, err = f.h.CreateGalleryImage(ctx, "g1", api.CreateGalleryImageRequest{Name: "def1"})
	requireCode(t, err, http.StatusNotFound)
	_, err = f.h.CreateGallery(ctx, api.CreateGalleryRequest{Name: "g1"})
	require.NoError(t, err)
	_, err = f.h.CreateGalleryImage(ctx, "g1", api.CreateGalleryImageRequest{Name: "def1", OsType: "BeOS"})
	requireCode(t, err, http.StatusBadRequest)
	gi, err := f.h.CreateGalleryImage(ctx, "g1", api.CreateGalleryImageRequest{Name: "def1"})
	require.NoError(t, err)
	assert.Equal(t, api.OsLinux, gi.OsType)

	v, err := f.h.CreateGalleryImageVersion(ctx, "g1", "def1", api.CreateGalleryImageVersionRequest{Name: "1.0.0", Source: "d1", DiskEncryptionSet: "des1"})
	require.NoError(t, err)
	assert.Equal(t, k1, v.KeyID)
	d1, err := f.h.ShowDisk("d1")
	require.NoError(t, err)
	assert.NotEqual(t, d1.StoragePrefix, v.StoragePrefix)
	_, err = f.h.CreateGalleryImageVersion(ctx, "g1", "def1", api.CreateGalleryImageVersionRequest{Name: "1.0.0", Source: "d1"})
	requireCode(t, err, http.StatusConflict)

	r := f.records(t)
	left, err := f.h.leftovers(ctx, r)
	require.NoError(t, err)
	for _, l := range left {
		assert.NotEqual(t, v.StoragePrefix, l.Path, "a version's objects are owned")
	}

	_, err = f.h.UpdateDES(ctx, "des1", api.UpdateDESRequest{KeyURL: k2})
	require.NoError(t, err)
	v, err = f.h.ShowGalleryImageVersion(ctx, "g1", "def1", "1.0.0")
	require.NoError(t, err)
	assert.Equal(t, k2, v.KeyID, "re-wrapped with the set")

	f.mustDisk(t, api.CreateDiskRequest{Name: "n1", Source: "g1/def1/1.0.0"})
	f.mustDisk(t, api.CreateDiskRequest{Name: "n2", Source: v.ID})
	got := f.readDisk(t, "n2")
	assert.Equal(t, "gallery content", string(got[1<<20:1<<20+len("gallery content")]))

	_, err = f.h.MoveGallery(ctx, "g1", api.MoveRequest{ResourceGroup: "rg2", Subscription: "11111111-2222-3333-4444-555555555555"})
	requireCode(t, err, http.StatusBadRequest)
	assert.ErrorContains(t, err, "g1/def1/1.0.0")

	require.Error(t, f.h.DeleteGalleryImage(ctx, "g1", "def1"))
	require.NoError(t, f.h.DeleteGalleryImageVersion(ctx, "g1", "def1", "1.0.0"))
	objs, err := f.h.cfg.Storage.List(ctx, v.StoragePrefix)
	require.NoError(t, err)
	assert.Empty(t, objs)
	require.NoError(t, f.h.DeleteGalleryImage(ctx, "g1", "def1"))
	require.NoError(t, f.h.DeleteGallery(ctx, "g1"))
}
