package control

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
	"hostcrypt/internal/zeros"
	"hostcrypt/storage"
	"hostcrypt/storage/freeze"
)

// A snapshot is a copy of the disk's stored objects: the same volume and
// data key, encrypted as the disk was, with its own wrap of the data key
// (under the set's key, or the platform key). An incremental snapshot
// stores only the chunks that differ from the previous incremental snapshot
// of the same disk and refers to that one's for the rest.

// manifest maps each stored chunk of a snapshot to the object holding it
// (its own, or an earlier snapshot's) and that object's SHA-256, which the
// next incremental snapshot compares against.
type manifest struct {
	Chunks map[string]manifestEntry `json:"chunks"` // chunk object name (hex index) -> entry
}

type manifestEntry struct {
	Key    string `json:"key"`
	SHA256 string `json:"sha256"`
}

func manifestKey(prefix string) string { return prefix + "/manifest.json" }

func (h *Host) readManifest(ctx context.Context, prefix string) (*manifest, error) {
	raw, err := h.cfg.Storage.ReadMeta(ctx, manifestKey(prefix))
	if err != nil {
		return nil, fmt.Errorf("snapshot manifest %s: %w", prefix, err)
	}
	var m manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("snapshot manifest %s is damaged: %w", prefix, err)
	}
	if m.Chunks == nil {
		m.Chunks = map[string]manifestEntry{}
	}
	return &m, nil
}

func (h *Host) writeManifest(ctx context.Context, prefix string, m *manifest) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return h.cfg.Storage.WriteMeta(ctx, manifestKey(prefix), raw)
}

// progressTable holds the progress of long copies, read without the
// control lock.
type progressTable struct {
	mu sync.Mutex
	m  map[string]*api.CopyProgress
}

func (t *progressTable) set(key, op string, done, total int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*api.CopyProgress{}
	}
	t.m[key] = &api.CopyProgress{Operation: op, Done: done, Total: total}
}

func (t *progressTable) clear(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, key)
}

// Progress returns the progress of the copy that creates the resource
// kind/name ("snapshots/s1", "disks/d2", "images/i1"), or nil when none
// runs.
func (h *Host) Progress(kind, name string) *api.CopyProgress {
	h.prog.mu.Lock()
	defer h.prog.mu.Unlock()
	if p := h.prog.m[kind+"/"+name]; p != nil {
		c := *p
		return &c
	}
	return nil
}

// copyPiece is the unit a snapshot copies objects in; all-zero pieces are
// not written, so sparse objects stay sparse.
const copyPiece = 1 << 20

// CreateSnapshot takes a snapshot of a disk, also while its VM runs: the
// engine syncs (so every write completed before, acknowledged or not, is in
// it), writes are held back for the instant it takes to fix the point in
// time, and then each chunk is copied before its first later change. The
// copy runs with no lock held: the guest writes on, and every other request
// is answered meanwhile.
func (h *Host) CreateSnapshot(ctx context.Context, req api.CreateSnapshotRequest) (*api.Snapshot, error) {
	if err := checkName("snapshot", req.Name); err != nil {
		return nil, err
	}
	if req.Source == "" {
		return nil, badRequest("a snapshot needs a source disk (--source)")
	}
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	if err := nameTaken(r, "snapshot", req.Name); err != nil {
		return nil, err
	}
	d, ok := r.Disks[req.Source]
	if !ok {
		return nil, notFound("disk", req.Source)
	}
	if err := h.diskElsewhere(r, d); err != nil {
		return nil, err
	}
	// The disk is claimed for the copy, and so are its snapshots: a
	// deletion of one of them hands chunks over to the others.
	release, err := h.claim("snapshot "+req.Name+" is being taken", "disk/"+d.Name, "snapshots-of/"+d.UniqueID)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := h.usable(ctx, d); err != nil {
		return nil, err
	}
	lk, err := h.lockForOp(ctx, d, "snapshot "+req.Name)
	if err != nil {
		return nil, err
	}
	defer lk.Release()
	enc := d.Encryption
	var des *store.DES
	if req.DiskEncryptionSet != "" {
		if des, ok = desByID(r, req.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", req.DiskEncryptionSet)
		}
		if err := checkSnapshotKey(d.Name, d.Sku.Name, d.Encryption, des); err != nil {
			return nil, err
		}
		if d.ADE {
			return nil, adeRefusal("disk", d.Name, "snapshots under customer-managed keys", "leave out --disk-encryption-set")
		}
		if err := checkDESScope("snapshot", req.Name, d.Placement, des); err != nil {
			return nil, err
		}
		enc.DiskEncryptionSetID = des.ID
		if enc.Type == api.EncPlatformKey {
			enc.Type = api.EncCustomerKey
		}
	}
	var parent *store.Snapshot
	if req.Incremental {
		for _, s := range r.Snapshots {
			if s.Incremental && s.SourceUniqueID == d.UniqueID && (parent == nil || s.TimeCreated.After(parent.TimeCreated)) {
				parent = s
			}
		}
	}

	uid := newID()
	prefix := "snapshots/" + uid
	snap := &store.Snapshot{
		Name: req.Name, UniqueID: uid, Sku: d.Sku, Located: located(d.Placement, typeSnapshots, req.Name),
		SourceDisk: d.Name, SourceResourceID: d.ID, SourceUniqueID: d.UniqueID, Incremental: req.Incremental,
		DiskSizeBytes: d.DiskSizeBytes, LogicalSectorSize: d.LogicalSectorSize, Encryption: enc,
		TimeCreated: h.cfg.Now().UTC(), StoragePrefix: prefix, ADE: d.ADE,
	}
	done, err := h.beginIntent(ctx, prefix, "snapshot "+req.Name, "snapshot", req.Name, nil)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := h.copySnapshot(ctx, r, d, lk, snap, parent); err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, fmt.Errorf("snapshot %q of disk %q: %w", req.Name, d.Name, err)
	}
	if des != nil && des.ID != d.Encryption.DiskEncryptionSetID {
		w, err := h.customerWrapper(ctx, des)
		if err == nil {
			_, err = disk.Rewrap(ctx, h.cfg.Storage, prefix, 1, h.unwrapperFor(r, "disk "+d.Name, d.Encryption), w)
		}
		if err != nil {
			h.abandonIntent(ctx, prefix)
			return nil, fmt.Errorf("snapshot %q: wrapping its key with disk encryption set %q: %w", req.Name, des.Name, err)
		}
	}
	m, err := disk.ReadMetadata(ctx, h.cfg.Storage, prefix)
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	snap.KeyID = m.Layers[0].WrappedKeys[0].KeyID
	if snap.UsedBytes, err = h.cfg.Storage.Usage(ctx, prefix); err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	if _, err := h.update(ctx, func(r *store.Records) error {
		r.Snapshots[req.Name] = snap
		delete(r.Intents, prefix)
		return nil
	}); err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	h.log.Info("snapshot created", "snapshot", req.Name, "disk", d.Name, "incremental", req.Incremental,
		"copied", snap.ChunksCopied, "shared", snap.ChunksShared, "pause", time.Duration(snap.FreezePauseMicros)*time.Microsecond)
	return snapshotView(snap), nil
}

// copySnapshot copies the disk's objects as of now into snap's prefix and
// writes its manifest. A disk in use is copied through its volume (which
// its VM's stop cancels the copy of); one not in use through a freeze of
// its own, with the disk claimed so that no VM starts on it meanwhile, read
// under lk (what lockForOp gave).
func (h *Host) copySnapshot(ctx context.Context, r *store.Records, d *store.Disk, lk *opLock, snap, parent *store.Snapshot) error {
	var pm *manifest
	if parent != nil {
		var err error
		if pm, err = h.readManifest(ctx, parent.StoragePrefix); err != nil {
			return err
		}
	}
	var fb *freeze.Backend
	var objBytes int64
	if as := h.attachmentsOf(d.Name); len(as) > 0 {
		uctx, release, err := as[0].vol.Use(ctx)
		if err != nil {
			return conflict("%v", err)
		}
		defer release()
		ctx = uctx
		// Everything completed before the snapshot goes into it.
		if fb, objBytes, err = as[0].vol.Snapshot(ctx); err != nil {
			return err
		}
	} else {
		if lk.InVM {
			return vmGone(d)
		}
		src := lk.Storage
		dd, err := disk.Open(ctx, src, d.StoragePrefix, h.unwrapperFor(r, "disk "+d.Name, d.Encryption), openOptions(d.Encryption)...)
		if err != nil {
			return fmt.Errorf("opening the disk: %w", err)
		}
		objBytes = dd.ObjectBytes()
		if err := dd.Close(); err != nil {
			return err
		}
		fb = freeze.New(src)
	}
	snap.ObjectBytes = objBytes
	var mu sync.Mutex
	mf := &manifest{Chunks: map[string]manifestEntry{}}
	meta := d.StoragePrefix + "/meta.json"
	save := func(ctx context.Context, key string, src storage.Chunk, v []byte) error {
		if key == meta {
			return h.cfg.Storage.WriteMeta(ctx, snap.StoragePrefix+"/meta.json", v)
		}
		if src == nil || !strings.HasPrefix(key, d.StoragePrefix+"/chunks/") {
			return nil // not part of a disk's format
		}
		name := path.Base(key)
		buf := make([]byte, objBytes)
		if _, err := src.ReadAt(buf, 0); err != nil {
			return err
		}
		sum := sha256.Sum256(buf)
		e := manifestEntry{SHA256: hex.EncodeToString(sum[:])}
		if pe, ok := pm.chunk(name); ok && pe.SHA256 == e.SHA256 {
			e.Key = pe.Key
			mu.Lock()
			mf.Chunks[name] = e
			snap.ChunksShared++
			mu.Unlock()
			return nil
		}
		e.Key = snap.StoragePrefix + "/chunks/" + name
		if err := writeSparse(ctx, h.cfg.Storage, e.Key, buf); err != nil {
			return err
		}
		mu.Lock()
		mf.Chunks[name] = e
		snap.ChunksCopied++
		mu.Unlock()
		return nil
	}
	sess, err := fb.Freeze(ctx, d.StoragePrefix, []string{meta}, save)
	if err != nil {
		return err
	}
	snap.FreezePauseMicros = sess.Pause().Microseconds()
	keys := sess.Keys()
	pkey := api.KindSnapshots + "/" + snap.Name
	defer h.prog.clear(pkey)
	// Progress counts the disk's bytes that the chunks hold, as the disk's
	// size does, not their objects' bytes (two slots per block): a full
	// 1 GiB disk is 1 GiB of copying.
	chunkData := int64(disk.DefaultChunkBlocks) * disk.BlockSize
	if m, err := disk.ReadMetadata(ctx, h.cfg.Storage, d.StoragePrefix); err == nil {
		chunkData = int64(m.ChunkBlocks) * disk.BlockSize
	}
	chunks := int64(len(keys))
	if slices.Contains(keys, meta) {
		chunks-- // the metadata is no data of the disk's
	}
	var copied int64
	for _, k := range keys {
		h.prog.set(pkey, "snapshot of disk "+d.Name, copied*chunkData, chunks*chunkData)
		if k != meta {
			copied++
		}
		err := h.copying(ctx, "snapshot "+snap.Name)
		if err == nil {
			err = sess.Preserve(ctx, k)
		}
		if err != nil {
			sess.End()
			return err
		}
	}
	if err := sess.End(); err != nil {
		return err
	}
	return h.writeManifest(ctx, snap.StoragePrefix, mf)
}

func (m *manifest) chunk(name string) (manifestEntry, bool) {
	if m == nil {
		return manifestEntry{}, false
	}
	e, ok := m.Chunks[name]
	return e, ok
}

// writeSparse writes buf as the chunk object key, skipping all-zero pieces,
// and syncs it.
func writeSparse(ctx context.Context, be storage.Backend, key string, buf []byte) error {
	c, err := be.OpenChunk(ctx, key, true)
	if err != nil {
		return err
	}
	for off := 0; off < len(buf); off += copyPiece {
		p := buf[off:min(off+copyPiece, len(buf))]
		if zeros.Is(p) {
			continue
		}
		if _, err := c.WriteAt(p, int64(off)); err != nil {
			c.Close()
			return err
		}
	}
	return errors.Join(c.Sync(), c.Close())
}

// DeleteSnapshot destroys a snapshot. The deletion is recorded first (the
// snapshot's record goes, a removal of its objects is recorded); then the
// chunks that later incremental snapshots share are handed over to the
// first of them, so every other snapshot stays restorable; then its wrapped
// key is destroyed and its objects removed. A crash at any point leaves the
// snapshot whole, or gone with its removal finished at the next start.
func (h *Host) DeleteSnapshot(ctx context.Context, name string) error {
	r, err := h.load(ctx)
	if err != nil {
		return err
	}
	s, ok := r.Snapshots[name]
	if !ok {
		return notFound("snapshot", name)
	}
	release, err := h.claim("snapshot "+name+" is being deleted", "snapshot/"+name, "snapshots-of/"+s.SourceUniqueID)
	if err != nil {
		return err
	}
	defer release()
	return h.deleteRecorded(ctx, "snapshot", name, func(r *store.Records) (string, int64, error) {
		s, ok := r.Snapshots[name]
		if !ok {
			return "", 0, notFound("snapshot", name)
		}
		delete(r.Snapshots, name)
		return s.StoragePrefix, s.ObjectBytes, nil
	})
}

// copyObject copies the first n bytes of a chunk object, sparse.
func copyObject(ctx context.Context, be storage.Backend, from, to string, n int64) error {
	src, err := be.OpenChunk(ctx, from, false)
	if err != nil {
		return err
	}
	defer src.Close()
	buf := make([]byte, n)
	if _, err := src.ReadAt(buf, 0); err != nil {
		return err
	}
	// A copy an earlier, interrupted hand-over left goes first: writeSparse
	// does not write the zeros.
	if err := be.Delete(ctx, to); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	return writeSparse(ctx, be, to, buf)
}

// MoveSnapshot moves a snapshot to another resource group or subscription,
// under the rule of customer-managed keys.
func (h *Host) MoveSnapshot(ctx context.Context, name string, req api.MoveRequest) (*api.Snapshot, error) {
	var out *store.Snapshot
	_, err := h.update(ctx, func(r *store.Records) error {
		s, ok := r.Snapshots[name]
		if !ok {
			return notFound("snapshot", name)
		}
		to, err := h.moveTarget("snapshot", name, s.Placement, s.Encryption.Type, req, nil)
		if err != nil {
			return err
		}
		s.Located = located(to, typeSnapshots, name)
		out = s
		return nil
	})
	if err != nil {
		return nil, err
	}
	return snapshotView(out), nil
}

// located is where a snapshot or image is put, with its resource id.
func located(p store.Placement, typ, name string) store.Located {
	return store.Located{ID: resourceID(p, typ, name), Placement: p}
}

// checkSnapshotKey: a snapshot of an UltraSSD or PremiumV2 disk with a
// customer-managed key uses the disk's own key.
func checkSnapshotKey(diskName, sku string, enc store.Encryption, des *store.DES) error {
	if !api.IsUltraOrV2(sku) || !isCMK(enc.Type) || des == nil || des.ID == enc.DiskEncryptionSetID {
		return nil
	}
	return notAllowed(http.StatusBadRequest, "disk %q is %s with a customer-managed key: its snapshots use the disk's own key, not disk encryption set %q; leave out --disk-encryption-set",
		diskName, sku, des.Name)
}

// UpdateSnapshot re-wraps a snapshot's key under another set's key or the
// platform key. Customer keys cannot be turned off on an incremental
// snapshot, nor the key changed on one of an UltraSSD or PremiumV2 disk.
func (h *Host) UpdateSnapshot(ctx context.Context, name string, req api.UpdateSnapshotRequest) (*api.Snapshot, error) {
	release, err := h.claim("re-wrapping its key", "snapshot/"+name)
	if err != nil {
		return nil, err
	}
	defer release()
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	sn, ok := r.Snapshots[name]
	if !ok {
		return nil, notFound("snapshot", name)
	}
	var des *store.DES
	switch {
	case req.DiskEncryptionSet != "":
		if des, ok = desByID(r, req.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", req.DiskEncryptionSet)
		}
		if req.EncryptionType != "" && req.EncryptionType != api.EncCustomerKey && req.EncryptionType != sn.Encryption.Type {
			return nil, badRequest("a snapshot keeps its layers; with --disk-encryption-set leave out --encryption-type")
		}
		if err := checkSnapshotKey(sn.SourceDisk, sn.Sku.Name, sn.Encryption, des); err != nil {
			return nil, err
		}
		if sn.ADE {
			return nil, adeRefusal("snapshot", name, "customer-managed keys", "keep it on platform-managed keys")
		}
		if err := checkDESScope("snapshot", name, sn.Placement, des); err != nil {
			return nil, err
		}
	case req.EncryptionType == api.EncPlatformKey:
		if sn.Encryption.Type == api.EncPlatformKey {
			return snapshotView(sn), nil
		}
		if sn.Encryption.Type == api.EncPlatformAndCustomerKey {
			return nil, badRequest("snapshot %q is double-encrypted; switching it to a single layer is not supported", name)
		}
		if sn.Incremental {
			return nil, notAllowed(http.StatusConflict, "snapshot %q is incremental: customer-managed keys cannot be turned off on an incremental snapshot; keep its key, or take a full snapshot (without --incremental) and switch that one", name)
		}
		if api.IsUltraOrV2(sn.Sku.Name) {
			return nil, notAllowed(http.StatusBadRequest, "snapshot %q is of an %s disk with a customer-managed key: it keeps the disk's key", name, sn.Sku.Name)
		}
	default:
		return nil, badRequest("give --disk-encryption-set, or --encryption-type %s", api.EncPlatformKey)
	}
	w := h.platform()
	if des != nil {
		if w, err = h.customerWrapper(ctx, des); err != nil {
			return nil, err
		}
	}
	nw, err := disk.Rewrap(ctx, h.cfg.Storage, sn.StoragePrefix, 1, h.unwrapperFor(r, "snapshot "+name, sn.Encryption), w)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, err)
	}
	var out *store.Snapshot
	if _, err := h.update(ctx, func(r *store.Records) error {
		sn, ok := r.Snapshots[name]
		if !ok {
			return notFound("snapshot", name)
		}
		sn.KeyID = nw.KeyID
		if des != nil {
			sn.Encryption.DiskEncryptionSetID = des.ID
			if sn.Encryption.Type == api.EncPlatformKey {
				sn.Encryption.Type = api.EncCustomerKey
			}
		} else {
			sn.Encryption = store.Encryption{Type: api.EncPlatformKey}
		}
		out = sn
		return nil
	}); err != nil {
		return nil, err
	}
	return snapshotView(out), nil
}
