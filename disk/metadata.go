package disk

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"time"

	"hostcrypt/storage"
)

// Metadata is the disk's metadata object, stored as JSON beside its chunks.
// It holds everything needed to open the disk again given access to the keys
// that wrap its data keys: the geometry, the format version and, per layer,
// the wrapped data key with the id of the key that wraps it.
type Metadata struct {
	Format      int         `json:"format"`
	VolumeID    string      `json:"volumeId"`
	Size        int64       `json:"size"`
	SectorSize  int         `json:"sectorSize"`
	BlockSize   int         `json:"blockSize"`
	ChunkBlocks int         `json:"chunkBlocks"`
	Created     time.Time   `json:"created"`
	Layers      []LayerMeta `json:"layers"`
	// Destroyed marks a disk whose keys were shredded and whose removal may
	// not have finished.
	Destroyed bool `json:"destroyed,omitempty"`
}

// LayerMeta describes one encryption layer. Layer 1 is sealed with the disk's
// data key, layer 2 (double encryption) with an independent infrastructure
// key over layer 1's output.
type LayerMeta struct {
	Layer     int    `json:"layer"`
	Algorithm string `json:"algorithm"`
	// KeyCheck is a public commitment to the layer's key; it tells a wrong key
	// from corrupted data.
	KeyCheck []byte `json:"keyCheck"`
	// WrappedKeys holds one wrap of the layer's key, or two while a re-wrap is
	// in progress (the new one first).
	WrappedKeys []WrappedKey `json:"wrappedKeys"`
}

// WrappedKey is a data key encrypted by a key-encryption key.
type WrappedKey struct {
	// KeyID names the wrapping key with its version: a key store key id such
	// as https://host/vaults/v/keys/k/version, or a platform key id.
	KeyID     string    `json:"kid"`
	Algorithm string    `json:"alg"`
	Value     []byte    `json:"value"`
	Created   time.Time `json:"created"`
}

func metaKey(prefix string) string { return prefix + "/meta.json" }

// MetaKey is the storage key of the metadata of the disk at prefix.
func MetaKey(prefix string) string { return metaKey(prefix) }

// ChunksPrefix is the storage prefix of the chunk objects of the disk at
// prefix: every chunk's key is under it.
func ChunksPrefix(prefix string) string { return prefix + "/chunks" }

func chunkKey(prefix string, idx int64) string {
	return fmt.Sprintf("%s/%08x", ChunksPrefix(prefix), idx)
}

// ReadMetadata loads and checks the metadata of the disk stored under prefix.
func ReadMetadata(ctx context.Context, be storage.Backend, prefix string) (*Metadata, error) {
	m, _, err := readMetadataVersion(ctx, be, prefix)
	return m, err
}

// readMetadataVersion is ReadMetadata with the stored object's version, for
// a change written back by compare-and-swap (writeMetadataIf).
func readMetadataVersion(ctx context.Context, be storage.Backend, prefix string) (*Metadata, storage.Version, error) {
	raw, v, err := be.ReadMetaVersion(ctx, metaKey(prefix))
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, v, fmt.Errorf("disk %s: %w", prefix, ErrNotFound)
		}
		return nil, v, fmt.Errorf("disk %s: reading metadata: %w", prefix, err)
	}
	m, err := parseMetadata(prefix, raw)
	return m, v, err
}

func parseMetadata(prefix string, raw []byte) (*Metadata, error) {
	var m Metadata
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("disk %s: metadata is not valid JSON: %w", prefix, err)
	}
	if m.Destroyed {
		return nil, fmt.Errorf("disk %s was destroyed: %w", prefix, ErrNotFound)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("disk %s: %w", prefix, err)
	}
	return &m, nil
}

func writeMetadata(ctx context.Context, be storage.Backend, prefix string, m *Metadata) error {
	raw, err := marshalMetadata(m)
	if err != nil {
		return err
	}
	if err := be.WriteMeta(ctx, metaKey(prefix), raw); err != nil {
		return fmt.Errorf("disk %s: writing metadata: %w", prefix, err)
	}
	return nil
}

// writeMetadataIf writes m back only if the stored object is still at
// version v, as read: a change that reads the metadata, changes it and
// writes it back (Rewrap, Resize) never writes back what another writer, in
// this process or another, has just replaced. On ErrConflict it reads again
// and retries (casRetries times at most).
func writeMetadataIf(ctx context.Context, be storage.Backend, prefix string, m *Metadata, v storage.Version) (storage.Version, error) {
	raw, err := marshalMetadata(m)
	if err != nil {
		return storage.NoVersion, err
	}
	nv, err := be.WriteMetaIf(ctx, metaKey(prefix), raw, v)
	if err != nil {
		return nv, fmt.Errorf("disk %s: writing metadata: %w", prefix, err)
	}
	return nv, nil
}

// casRetries bounds how often a change of the metadata starts again after
// another writer's change came first.
const casRetries = 64

// casBackoff waits a little, at random, before attempt (counted from 1)
// starts again, so that writers that keep meeting spread out.
func casBackoff(ctx context.Context, attempt int) error {
	t := time.NewTimer(time.Duration(mathrand.Int64N(int64(attempt)*int64(time.Millisecond) + 1)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func marshalMetadata(m *Metadata) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(m, "", "  ")
}

func (m *Metadata) validate() error {
	if m.Format < formatV1 || m.Format > formatV3 {
		return fmt.Errorf("format version %d is not supported (this build reads versions %d to %d)", m.Format, formatV1, formatV3)
	}
	if err := m.validateGeometry(); err != nil {
		return err
	}
	if _, err := m.volumeID(); err != nil {
		return err
	}
	if len(m.Layers) < 1 || len(m.Layers) > 2 {
		return fmt.Errorf("%d encryption layers: must be 1 or 2", len(m.Layers))
	}
	for i, l := range m.Layers {
		if l.Layer != i+1 {
			return fmt.Errorf("layer %d listed in position %d", l.Layer, i+1)
		}
		if want := layerAlgorithm(l.Layer); l.Algorithm != string(want) {
			return fmt.Errorf("layer %d algorithm %q: this version uses %q", l.Layer, l.Algorithm, want)
		}
		if len(l.WrappedKeys) == 0 {
			return fmt.Errorf("layer %d has no wrapped key", l.Layer)
		}
	}
	return nil
}

// validateGeometry checks the block and chunk sizes, the sector size and
// the size.
func (m *Metadata) validateGeometry() error {
	if m.BlockSize != BlockSize {
		return fmt.Errorf("block size %d is not supported", m.BlockSize)
	}
	if m.ChunkBlocks < 8 || m.ChunkBlocks > 65536 || m.ChunkBlocks&(m.ChunkBlocks-1) != 0 {
		return fmt.Errorf("chunk of %d blocks: must be a power of two from 8 to 65536", m.ChunkBlocks)
	}
	return checkGeometry(m.Size, m.SectorSize, m.ChunkBlocks)
}

func (m *Metadata) volumeID() ([16]byte, error) {
	var v [16]byte
	b, err := hex.DecodeString(m.VolumeID)
	if err != nil || len(b) != len(v) {
		return v, fmt.Errorf("volume id %q is not 32 hex digits", m.VolumeID)
	}
	copy(v[:], b)
	return v, nil
}

// MinSize is the smallest disk: 1 MiB.
const MinSize = 1 << 20

// MaxChunks is how many chunks one disk can have: a chunk object's key
// holds its index in 8 hex digits (docs/FORMAT.md), so indexes stay below
// 2^32.
const MaxChunks = 1 << 32

// MaxSize is the largest disk the engine can address with the default
// chunk size: MaxChunks chunks of 4 MiB, 16 PiB (2^54 bytes). Smaller
// chunks address less (MaxSizeFor). Byte offsets are int64 and block
// indexes uint64, so no offset computed for a disk of this size can
// overflow. It is the engine's limit, not a product's: the control plane
// refuses sizes above its own, far smaller maximum before it gets here.
const MaxSize = MaxChunks * DefaultChunkBlocks * BlockSize

// MaxSizeFor is the largest disk with chunks of chunkBlocks blocks (at most
// 2^60 bytes with the largest chunks).
func MaxSizeFor(chunkBlocks int) int64 { return MaxChunks * int64(chunkBlocks) * BlockSize }

// CheckSize reports whether a disk of size bytes with the given logical
// sector size can be created or grown to with the default chunk size; the
// error says why not. Create and Resize make the same check before they
// change anything.
func CheckSize(size int64, sectorSize int) error {
	return checkGeometry(size, sectorSize, DefaultChunkBlocks)
}

// checkGeometry enforces the rules for a disk's size and logical sector
// size. chunkBlocks must already be valid.
func checkGeometry(size int64, sector, chunkBlocks int) error {
	if sector != 512 && sector != 4096 {
		return fmt.Errorf("logical sector size %d: use 512 or 4096", sector)
	}
	if size < MinSize {
		return fmt.Errorf("size %d bytes: a disk is at least 1 MiB", size)
	}
	if size%int64(sector) != 0 {
		return fmt.Errorf("size %d bytes is not a multiple of the %d-byte sector size", size, sector)
	}
	if max := MaxSizeFor(chunkBlocks); size > max {
		return fmt.Errorf("size %d bytes is more than the %d bytes (%d TiB) a disk of %d-byte chunks can address: choose a smaller size", size, max, max>>40, chunkBlocks*BlockSize)
	}
	return nil
}
