package disk

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// algWrapper wraps with a kek but names another algorithm in the wrap.
type algWrapper struct {
	kek
	alg string
}

func (a algWrapper) WrapKey(ctx context.Context, dek []byte) (WrappedKey, error) {
	w, err := a.kek.WrapKey(ctx, dek)
	w.Algorithm = a.alg
	return w, err
}

// countingRing counts its unwraps.
type countingRing struct {
	keyring
	n *atomic.Int32
}

func (c countingRing) UnwrapKey(ctx context.Context, w WrappedKey) ([]byte, error) {
	c.n.Add(1)
	return c.keyring.UnwrapKey(ctx, w)
}

// A disk the control state records as customer-managed whose metadata holds
// a platform wrap of its data key (layer 1) is refused as an integrity
// error, before any key is unwrapped; layer 2's platform wrap is by design.
func TestCustomerManagedRefusesPlatformWrap(t *testing.T) {
	ctx := context.Background()
	platform, customer, infra := newKEK("platform/1"), newKEK("customer/1"), newKEK("infra/1")
	td := newTestDisk(t, 1<<20, 1, 0)
	var unwraps atomic.Int32
	ring := countingRing{keyring{platform, customer, infra}, &unwraps}

	// Single encryption, wrapped by a platform key: refused as
	// customer-managed, opened otherwise.
	d, err := Create(ctx, td.be, "p", CreateOptions{Size: 1 << 20, Layers: []KeyWrapper{algWrapper{platform, PlatformWrap}}})
	require.NoError(t, err)
	require.NoError(t, d.Close())
	_, err = Open(ctx, td.be, "p", ring, CustomerManaged())
	require.ErrorIs(t, err, ErrIntegrity)
	require.ErrorContains(t, err, "platform wrap")
	require.Zero(t, unwraps.Load(), "a key was unwrapped")
	d, err = Open(ctx, td.be, "p", ring)
	require.NoError(t, err)
	require.NoError(t, d.Close())

	// A customer wrap beside a platform one (an edited meta.json) is
	// refused as well.
	_, err = Rewrap(ctx, &failingMeta{Backend: td.be, failAfter: 1}, "p", 1, ring, algWrapper{customer, "RSA-OAEP-256"})
	require.ErrorIs(t, err, errInjected)
	m, err := ReadMetadata(ctx, td.be, "p")
	require.NoError(t, err)
	require.Len(t, m.Layers[0].WrappedKeys, 2)
	unwraps.Store(0)
	_, err = Open(ctx, td.be, "p", ring, CustomerManaged())
	require.ErrorIs(t, err, ErrIntegrity)
	require.Zero(t, unwraps.Load())

	// Double encryption with a customer key on layer 1: layer 2's platform
	// wrap is fine.
	d, err = Create(ctx, td.be, "c", CreateOptions{Size: 1 << 20, Layers: []KeyWrapper{
		algWrapper{customer, "RSA-OAEP-256"}, algWrapper{infra, PlatformWrap}}})
	require.NoError(t, err)
	require.NoError(t, d.Close())
	d, err = Open(ctx, td.be, "c", ring, CustomerManaged())
	require.NoError(t, err)
	require.NoError(t, d.Close())
}

// Disks of formats 1 and 2 are never upgraded in place: they keep their
// version through writes, a crash and reopening, and every chunk they
// create has it. A disk becomes format 3 only as a copy into a new disk
// (CopyChunks, which snapshots, images and conversions use).
func TestOlderFormatsKeepTheirVersion(t *testing.T) {
	ctx := context.Background()
	for _, format := range []int{formatV1, formatV2} {
		td := newTestDiskFormat(t, format, 4<<20, 1, 16)
		synced := randBytes(3 * BlockSize)
		_, err := td.WriteAt(synced, 5*BlockSize)
		require.NoError(t, err)
		require.NoError(t, td.Sync())
		_, err = td.WriteAt(randBytes(64<<10), 40*BlockSize) // new chunks, never synced
		require.NoError(t, err)
		close(td.Disk.stop) // the crash: nothing more of this instance reaches storage
		td.Disk.closeOnce.Do(func() {})

		d, err := Open(ctx, td.be, td.name, td.ring)
		require.NoError(t, err)
		got := make([]byte, len(synced))
		_, err = d.ReadAt(got, 5*BlockSize)
		require.NoError(t, err)
		require.Equal(t, synced, got)
		_, err = d.WriteAt(randBytes(BlockSize), 100*BlockSize)
		require.NoError(t, err)
		m, err := ReadMetadata(ctx, td.be, td.name)
		require.NoError(t, err)
		require.Equal(t, format, m.Format)
		keys, err := td.be.List(ctx, td.name+"/chunks")
		require.NoError(t, err)
		require.NoError(t, d.Sync())
		for _, k := range keys {
			obj, err := td.be.OpenChunk(ctx, k, false)
			require.NoError(t, err)
			h := make([]byte, headerSize)
			_, err = obj.ReadAt(h, 0)
			require.NoError(t, err)
			require.NoError(t, obj.Close())
			if hdr, err := parseChunkHeader(h); err == nil {
				require.EqualValues(t, format, hdr.Version, "chunk %s", k)
			}
		}

		dst, err := Create(ctx, td.be, "copy", CreateOptions{Size: 4 << 20, ChunkBlocks: 16, Layers: wrappers(td.ring)})
		require.NoError(t, err)
		require.NoError(t, CopyChunks(ctx, d, dst, 0, func(int64) error { return nil }))
		require.Equal(t, formatV3, dst.lay.format)
		_, err = dst.ReadAt(got, 5*BlockSize)
		require.NoError(t, err)
		require.Equal(t, synced, got)
		require.NoError(t, dst.Close())
		require.NoError(t, Destroy(ctx, td.be, "copy"))
		require.NoError(t, d.Close())
	}
}
