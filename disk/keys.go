package disk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	hcrypto "hostcrypt/crypto"
	"hostcrypt/storage"
)

// KeyWrapper wraps a data key with a key-encryption key (a customer key in the
// key store, or a platform key). The result travels with the disk.
type KeyWrapper interface {
	WrapKey(ctx context.Context, dek []byte) (WrappedKey, error)
}

// KeyUnwrapper recovers a data key from one of its wraps. It returns an error
// wrapping ErrWrongKey when the wrap does not open with the key it names.
type KeyUnwrapper interface {
	UnwrapKey(ctx context.Context, w WrappedKey) ([]byte, error)
}

// Errors callers can check with errors.Is.
var (
	// ErrIntegrity: a stored block, selector or chunk header failed
	// authentication: it was altered, moved, copied from elsewhere or torn.
	ErrIntegrity = hcrypto.ErrIntegrity
	// ErrWrongKey: a data key does not match the disk (its key check differs)
	// or a wrap did not open.
	ErrWrongKey = hcrypto.ErrWrongKey
	// ErrNotFound: no disk is stored under the prefix.
	ErrNotFound = errors.New("disk not found")
	// ErrRange: an I/O reaches past the end of the disk.
	ErrRange = errors.New("beyond the end of the disk")
	// ErrClosed: the disk was closed (or fenced); its keys are gone.
	ErrClosed = errors.New("disk is closed")
	// ErrLeaseExpired: the host could not confirm in time that the disk's
	// key may still be used.
	ErrLeaseExpired = errors.New("data key lease expired: the key store has not confirmed the key in time")
	// ErrFenced: a sync of the disk failed, so what reached the device is
	// unknown; writes and flushes are refused until the disk is opened
	// again (reads go on, except in format 1). Disk.Fenced says which
	// sync failed and why.
	ErrFenced = errors.New("disk refuses writes and flushes after a failed sync; stop and start its VM to open it again")
)

func layerAlgorithm(layer int) hcrypto.Algorithm {
	if layer == 2 {
		return hcrypto.AlgXChaCha20Poly1305
	}
	return hcrypto.AlgXAES256GCM
}

// CreateOptions describe a new disk.
type CreateOptions struct {
	Size       int64
	SectorSize int // 512 or 4096; 0 means 512
	// ChunkBlocks overrides DefaultChunkBlocks (tests and golden images use
	// small chunks).
	ChunkBlocks int
	// Layers wraps the key of each layer: one wrapper for single encryption,
	// two for double encryption (the second wraps the infrastructure key).
	Layers []KeyWrapper
	Now    func() time.Time
	// Format is the format version to create; 0 means FormatVersion. Older
	// versions are only for tests of compatibility.
	Format int
}

// Create makes a new, empty disk under prefix: fresh random keys for each
// layer, wrapped by the given wrappers, and the metadata object. The disk is
// returned open.
func Create(ctx context.Context, be storage.Backend, prefix string, o CreateOptions) (*Disk, error) {
	if o.SectorSize == 0 {
		o.SectorSize = 512
	}
	if o.ChunkBlocks == 0 {
		o.ChunkBlocks = DefaultChunkBlocks
	}
	if o.Format == 0 {
		o.Format = FormatVersion
	}
	if len(o.Layers) < 1 || len(o.Layers) > 2 {
		return nil, fmt.Errorf("disk %s: %d key wrappers given, need 1 (single) or 2 (double encryption)", prefix, len(o.Layers))
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	if _, err := be.ReadMeta(ctx, metaKey(prefix)); err == nil {
		return nil, fmt.Errorf("disk %s already exists", prefix)
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("disk %s: %w", prefix, err)
	}
	vol := hcrypto.NewDataKey()[:16]
	m := &Metadata{
		Format:      o.Format,
		VolumeID:    fmt.Sprintf("%x", vol),
		Size:        o.Size,
		SectorSize:  o.SectorSize,
		BlockSize:   BlockSize,
		ChunkBlocks: o.ChunkBlocks,
		Created:     now().UTC(),
	}
	// The geometry before anything else: a size the engine cannot
	// address costs no key store call and leaves nothing behind.
	if err := m.validateGeometry(); err != nil {
		return nil, fmt.Errorf("disk %s: %w", prefix, err)
	}
	keys := make([][]byte, 0, len(o.Layers))
	defer func() {
		for _, k := range keys {
			hcrypto.Wipe(k)
		}
	}()
	for i, w := range o.Layers {
		dek := hcrypto.NewDataKey()
		keys = append(keys, dek)
		wk, err := w.WrapKey(ctx, dek)
		if err != nil {
			return nil, fmt.Errorf("disk %s: wrapping the layer %d key: %w", prefix, i+1, err)
		}
		if wk.Created.IsZero() {
			wk.Created = now().UTC()
		}
		m.Layers = append(m.Layers, LayerMeta{
			Layer:       i + 1,
			Algorithm:   string(layerAlgorithm(i + 1)),
			KeyCheck:    hcrypto.KeyCheck(dek, vol),
			WrappedKeys: []WrappedKey{wk},
		})
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("disk %s: %w", prefix, err)
	}
	if err := writeMetadata(ctx, be, prefix, m); err != nil {
		return nil, err
	}
	return newDisk(be, prefix, m, keys)
}

// PlatformWrap is the wrapping algorithm of platform keys (AES key wrap
// with padding, RFC 5649).
const PlatformWrap = "A256KWP"

// OpenOption tells Open what the caller knows of the disk.
type OpenOption func(*openConfig)

type openConfig struct {
	customerManaged bool
}

// CustomerManaged tells Open that the control state records the disk's data
// key (layer 1) as customer-managed. A layer-1 wrap by a platform key
// (PlatformWrap) in its metadata is then refused as an integrity error
// before any key is unwrapped: it can only be an altered meta.json, or an
// old one restored by someone who can write the storage (switching a disk
// from platform to customer keys keeps its data key, so a meta.json from
// before the switch holds a platform wrap of the same key). Unwrapping it
// would let the host open the disk without the customer's key. Layer 2 of
// double encryption is platform-wrapped by design and not checked.
func CustomerManaged() OpenOption { return func(c *openConfig) { c.customerManaged = true } }

// Open opens the disk stored under prefix, unwrapping each layer's key with u.
// Each layer's wraps are tried in order; the first that opens and matches the
// key check wins.
func Open(ctx context.Context, be storage.Backend, prefix string, u KeyUnwrapper, opts ...OpenOption) (*Disk, error) {
	var cfg openConfig
	for _, o := range opts {
		o(&cfg)
	}
	m, err := ReadMetadata(ctx, be, prefix)
	if err != nil {
		return nil, err
	}
	if cfg.customerManaged {
		for _, w := range m.Layers[0].WrappedKeys {
			if w.Algorithm == PlatformWrap {
				slog.Error("integrity alarm: a customer-managed disk's data key is wrapped by a platform key in its metadata", "disk", prefix, "kid", w.KeyID)
				return nil, fmt.Errorf("disk %s: %w: its data key is customer-managed but meta.json holds a platform wrap of it (%s, %s): the metadata was altered, or restored from before the switch to customer keys; restore the current meta.json from a backup", prefix, ErrIntegrity, w.KeyID, w.Algorithm)
			}
		}
	}
	keys, err := unwrapLayers(ctx, prefix, m, u)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, k := range keys {
			hcrypto.Wipe(k)
		}
	}()
	return newDisk(be, prefix, m, keys)
}

func unwrapLayers(ctx context.Context, prefix string, m *Metadata, u KeyUnwrapper) ([][]byte, error) {
	vol, _ := m.volumeID()
	keys := make([][]byte, 0, len(m.Layers))
	for _, l := range m.Layers {
		k, err := unwrapLayer(ctx, l, vol[:], u)
		if err != nil {
			for _, k := range keys {
				hcrypto.Wipe(k)
			}
			return nil, fmt.Errorf("disk %s layer %d: %w", prefix, l.Layer, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func unwrapLayer(ctx context.Context, l LayerMeta, vol []byte, u KeyUnwrapper) ([]byte, error) {
	var errs []error
	for _, w := range l.WrappedKeys {
		k, err := u.UnwrapKey(ctx, w)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %s: %w", w.KeyID, err))
			continue
		}
		if err := hcrypto.VerifyKeyCheck(k, vol, l.KeyCheck); err != nil {
			hcrypto.Wipe(k)
			errs = append(errs, fmt.Errorf("key %s unwraps to a key that is not this disk's: %w", w.KeyID, err))
			continue
		}
		return k, nil
	}
	return nil, errors.Join(errs...)
}

// Rewrap re-wraps the key of one layer (1 or 2) with w, crash-safely: the new
// wrap is written and made durable beside the old one before the old one is
// removed, so a crash at any point leaves at least one working wrap. Data is
// never touched. It works whether or not the disk is open.
func Rewrap(ctx context.Context, be storage.Backend, prefix string, layer int, u KeyUnwrapper, w KeyWrapper) (WrappedKey, error) {
	for attempt := 1; ; attempt++ {
		nw, err := rewrap(ctx, be, prefix, layer, u, w)
		if errors.Is(err, storage.ErrConflict) && attempt < casRetries {
			// Another writer changed the metadata: from the top.
			if err := casBackoff(ctx, attempt); err != nil {
				return WrappedKey{}, err
			}
			continue
		}
		return nw, err
	}
}

// rewrap is one attempt of Rewrap; each of its writes is a compare-and-swap
// on the value it read.
func rewrap(ctx context.Context, be storage.Backend, prefix string, layer int, u KeyUnwrapper, w KeyWrapper) (WrappedKey, error) {
	m, v, err := readMetadataVersion(ctx, be, prefix)
	if err != nil {
		return WrappedKey{}, err
	}
	if layer < 1 || layer > len(m.Layers) {
		return WrappedKey{}, fmt.Errorf("disk %s has no layer %d", prefix, layer)
	}
	vol, _ := m.volumeID()
	l := &m.Layers[layer-1]
	k, err := unwrapLayer(ctx, *l, vol[:], u)
	if err != nil {
		return WrappedKey{}, fmt.Errorf("disk %s layer %d: %w", prefix, layer, err)
	}
	defer hcrypto.Wipe(k)
	nw, err := w.WrapKey(ctx, k)
	if err != nil {
		return WrappedKey{}, fmt.Errorf("disk %s layer %d: wrapping with the new key: %w", prefix, layer, err)
	}
	if nw.Created.IsZero() {
		nw.Created = time.Now().UTC()
	}
	// Step 1: new wrap first, old ones kept.
	l.WrappedKeys = append([]WrappedKey{nw}, l.WrappedKeys...)
	if v, err = writeMetadataIf(ctx, be, prefix, m, v); err != nil {
		return WrappedKey{}, err
	}
	// Step 2: only the new wrap. A conflict here leaves the new wrap
	// beside the old; the next attempt adds another and drops both.
	l.WrappedKeys = l.WrappedKeys[:1]
	if _, err := writeMetadataIf(ctx, be, prefix, m, v); err != nil {
		return WrappedKey{}, err
	}
	return nw, nil
}

// Destroy crypto-shreds the disk under prefix: the wrapped keys are destroyed
// first (the metadata is rewritten without them and made durable), so the
// data is unreadable from that moment even if removing the chunks is cut
// short; then the chunks and the metadata are removed.
func Destroy(ctx context.Context, be storage.Backend, prefix string) error {
	raw, err := be.ReadMeta(ctx, metaKey(prefix))
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("disk %s: %w", prefix, ErrNotFound)
		}
		return err
	}
	hcrypto.Wipe(raw)
	// A metadata object without keys: any later Open fails, and the old wraps
	// are gone from the backend.
	if err := be.WriteMeta(ctx, metaKey(prefix), []byte(`{"destroyed":true}`)); err != nil {
		return fmt.Errorf("disk %s: destroying wrapped keys: %w", prefix, err)
	}
	keys, err := be.List(ctx, prefix+"/chunks")
	if err != nil {
		return fmt.Errorf("disk %s: listing chunks: %w", prefix, err)
	}
	for _, k := range keys {
		if err := be.Delete(ctx, k); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("disk %s: removing %s: %w", prefix, k, err)
		}
	}
	if err := be.Delete(ctx, metaKey(prefix)); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("disk %s: removing metadata: %w", prefix, err)
	}
	return nil
}
