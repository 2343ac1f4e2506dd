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
	"sort"
	"strings"
	"sync"
	"time"

	"hostcrypt/disk"
	"hostcrypt/internal/zeros"
	"hostcrypt/storage"
	"hostcrypt/storage/freeze"
)

// Snapshot is a point-in-time copy of a disk. It is a copy of the disk's
// stored objects: the same volume and data key, encrypted as the disk was,
// with its own wrap of the data key (under the set's key, or the platform
// key). An incremental snapshot stores only the chunks that differ from the
// previous incremental snapshot of the same disk and refers to that one's
// for the rest.
type Snapshot struct {
	Name     string `json:"name"`
	UniqueID string `json:"uniqueId"`
	located
	Sku               Sku        `json:"sku"`
	SourceDisk        string     `json:"sourceDisk"`
	SourceResourceID  string     `json:"sourceResourceId"`
	SourceUniqueID    string     `json:"sourceUniqueId"`
	Incremental       bool       `json:"incremental"`
	DiskSizeBytes     int64      `json:"diskSizeBytes"`
	LogicalSectorSize int        `json:"logicalSectorSize"`
	Encryption        Encryption `json:"encryption"`
	KeyID             string     `json:"keyId"`
	TimeCreated       time.Time  `json:"timeCreated"`
	// UsedBytes is the storage the snapshot's own chunks take; chunks it
	// shares with an earlier incremental snapshot are not counted.
	UsedBytes    int64 `json:"usedBytes"`
	ChunksCopied int64 `json:"chunksCopied"`
	ChunksShared int64 `json:"chunksShared"`
	// FreezePauseMicros is how long writes to the disk were held back
	// while the snapshot's point in time was fixed (0 for a disk not in
	// use).
	FreezePauseMicros int64  `json:"freezePauseMicroseconds"`
	StoragePrefix     string `json:"storagePrefix"`
	// ObjectBytes is how long a chunk object of the disk's layout can be.
	ObjectBytes int64 `json:"objectBytes"`
	// ADE is inherited from the disk: its content was encrypted by the
	// guest.
	ADE bool `json:"ade,omitempty"`
}

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

// CopyProgress is how far a long copy has got, in bytes; it is read without
// the control lock, so that a client can watch a copy the lock is held for.
type CopyProgress struct {
	Operation string `json:"operation"`
	Done      int64  `json:"done"`
	Total     int64  `json:"total"`
}

type progressTable struct {
	mu sync.Mutex
	m  map[string]*CopyProgress
}

func (t *progressTable) set(key, op string, done, total int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*CopyProgress{}
	}
	t.m[key] = &CopyProgress{Operation: op, Done: done, Total: total}
}

func (t *progressTable) clear(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, key)
}

// Progress returns the progress of the copy that creates the resource
// kind/name ("snapshots/s1", "disks/d2", "images/i1"), or nil when none
// runs. It does not wait for the control lock.
func (h *Host) Progress(kind, name string) *CopyProgress {
	h.prog.mu.Lock()
	defer h.prog.mu.Unlock()
	if p := h.prog.m[kind+"/"+name]; p != nil {
		c := *p
		return &c
	}
	return nil
}

// CreateSnapshotRequest is the body of a snapshot creation.
type CreateSnapshotRequest struct {
	Name        string `json:"name"`
	Source      string `json:"source"`
	Incremental bool   `json:"incremental,omitempty"`
	// DiskEncryptionSet wraps the snapshot's key with another set's key.
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
}

// copyPiece is the unit a snapshot copies objects in; all-zero pieces are
// not written, so sparse objects stay sparse.
const copyPiece = 1 << 20

// CreateSnapshot takes a snapshot of a disk, also while its VM runs: the
// engine syncs (so every write completed before, acknowledged or not, is in
// it), writes are held back for the instant it takes to fix the point in
// time, and then each chunk is copied before its first later change.
func (h *Host) CreateSnapshot(ctx context.Context, r CreateSnapshotRequest) (*Snapshot, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := checkName("snapshot", r.Name); err != nil {
		return nil, err
	}
	if _, ok := h.st.Snapshots[r.Name]; ok {
		return nil, conflict("snapshot %q already exists; choose another name or delete it first", r.Name)
	}
	if r.Source == "" {
		return nil, badRequest("a snapshot needs a source disk (--source)")
	}
	d, ok := h.st.Disks[r.Source]
	if !ok {
		return nil, notFound("disk", r.Source)
	}
	if err := h.usable(ctx, d); err != nil {
		return nil, err
	}
	enc := d.Encryption
	var des *DiskEncryptionSet
	if r.DiskEncryptionSet != "" {
		if des, ok = h.desByID(r.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", r.DiskEncryptionSet)
		}
		if err := checkSnapshotKey(d, des); err != nil {
			return nil, err
		}
		if d.ADE {
			return nil, adeRefusal("disk", d.Name, "snapshots under customer-managed keys", "leave out --disk-encryption-set")
		}
		if err := checkDESScope("snapshot", r.Name, d.placement(), des); err != nil {
			return nil, err
		}
		enc.DiskEncryptionSetID = des.ID
		if enc.Type == EncPlatformKey {
			enc.Type = EncCustomerKey
		}
	}
	var parent *Snapshot
	if r.Incremental {
		for _, s := range h.st.Snapshots {
			if s.Incremental && s.SourceUniqueID == d.UniqueID && (parent == nil || s.TimeCreated.After(parent.TimeCreated)) {
				parent = s
			}
		}
	}

	uid := newID()
	prefix := "snapshots/" + uid
	snap := &Snapshot{
		Name: r.Name, UniqueID: uid, Sku: d.Sku, located: locatedAt(d.placement(), typeSnapshots, r.Name),
		SourceDisk: d.Name, SourceResourceID: d.ID, SourceUniqueID: d.UniqueID, Incremental: r.Incremental,
		DiskSizeBytes: d.DiskSizeBytes, LogicalSectorSize: d.LogicalSectorSize, Encryption: enc,
		TimeCreated: h.cfg.Now().UTC(), StoragePrefix: prefix, ADE: d.ADE,
	}
	if err := h.beginIntent(prefix, "snapshot "+r.Name); err != nil {
		return nil, err
	}
	if err := h.copySnapshot(ctx, d, snap, parent); err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, fmt.Errorf("snapshot %q of disk %q: %w", r.Name, d.Name, err)
	}
	if des != nil && des.ID != d.Encryption.DiskEncryptionSetID {
		ws, err := h.wrappersFor(ctx, EncCustomerKey, des)
		if err == nil {
			_, err = disk.Rewrap(ctx, h.cfg.Storage, prefix, 1, h.unwrapperFor(d), ws[0])
		}
		if err != nil {
			h.abandonIntent(ctx, prefix)
			return nil, fmt.Errorf("snapshot %q: wrapping its key with disk encryption set %q: %w", r.Name, des.Name, err)
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
	h.st.Snapshots[r.Name] = snap
	delete(h.st.Intents, prefix)
	if err := h.save(); err != nil {
		delete(h.st.Snapshots, r.Name)
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	h.log.Info("snapshot created", "snapshot", r.Name, "disk", d.Name, "incremental", r.Incremental,
		"copied", snap.ChunksCopied, "shared", snap.ChunksShared, "pause", time.Duration(snap.FreezePauseMicros)*time.Microsecond)
	return snap, nil
}

// copySnapshot copies the disk's objects as of now into snap's prefix and
// writes its manifest.
func (h *Host) copySnapshot(ctx context.Context, d *Disk, snap *Snapshot, parent *Snapshot) error {
	var pm *manifest
	if parent != nil {
		var err error
		if pm, err = h.readManifest(ctx, parent.StoragePrefix); err != nil {
			return err
		}
	}
	od := h.openDiskFor(d.Name)
	var fb *freeze.Backend
	var objBytes int64
	if od != nil {
		// Everything completed before the snapshot goes into it: a
		// plaintext cache is written back into the engine, the engine
		// syncs its blocks and selectors.
		if od.icache != nil {
			if err := od.icache.Flush(ctx); err != nil {
				return err
			}
		}
		if err := od.d.Sync(); err != nil {
			return err
		}
		fb, objBytes = od.fr, od.d.ObjectBytes()
		snap.ObjectBytes = objBytes
	} else {
		// Not in use: nothing else can open it while the control lock is
		// held, so the objects are read as they are.
		dd, err := disk.Open(ctx, h.cfg.Storage, d.StoragePrefix, h.unwrapperFor(d))
		if err != nil {
			return fmt.Errorf("opening the disk: %w", err)
		}
		objBytes = dd.ObjectBytes()
		snap.ObjectBytes = objBytes
		if err := dd.Close(); err != nil {
			return err
		}
		fb = freeze.New(h.cfg.Storage)
	}
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
	pkey := "snapshots/" + snap.Name
	defer h.prog.clear(pkey)
	for i, k := range keys {
		h.prog.set(pkey, "snapshot of disk "+d.Name, int64(i)*objBytes, int64(len(keys))*objBytes)
		if err := sess.Preserve(ctx, k); err != nil {
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

// ShowSnapshot returns one snapshot.
func (h *Host) ShowSnapshot(name string) (*Snapshot, error) {
	return showCopy(h, h.st.Snapshots, "snapshot", name)
}

// ListSnapshots returns every snapshot, sorted by name.
func (h *Host) ListSnapshots() []*Snapshot { return listCopies(h, h.st.Snapshots) }

// showCopy returns a copy of the resource name of m, under the control lock.
func showCopy[T any](h *Host, m map[string]*T, kind, name string) (*T, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := m[name]
	if !ok {
		return nil, notFound(kind, name)
	}
	c := *v
	return &c, nil
}

// listCopies returns copies of every resource of m, sorted by name.
func listCopies[T any](h *Host, m map[string]*T) []*T {
	h.mu.Lock()
	defer h.mu.Unlock()
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*T, 0, len(names))
	for _, n := range names {
		c := *m[n]
		out = append(out, &c)
	}
	return out
}

// DeleteSnapshot destroys a snapshot. The deletion is recorded first (the
// snapshot's record goes, a removal of its objects is recorded); then the
// chunks that later incremental snapshots share are handed over to the
// first of them, so every other snapshot stays restorable; then its wrapped
// key is destroyed and its objects removed. A crash at any point leaves the
// snapshot whole, or gone with its removal finished at the next start.
func (h *Host) DeleteSnapshot(ctx context.Context, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.st.Snapshots[name]
	if !ok {
		return notFound("snapshot", name)
	}
	delete(h.st.Snapshots, name)
	h.recordRemoval(s.StoragePrefix, "snapshot "+name, s.ObjectBytes)
	if err := h.save(); err != nil {
		h.st.Snapshots[name] = s
		delete(h.st.Removals, s.StoragePrefix)
		return err
	}
	h.log.Info("snapshot deleted", "snapshot", name)
	if err := h.finishRemoval(ctx, s.StoragePrefix); err != nil {
		return fmt.Errorf("snapshot %q is deleted, but %w; the next start of hostcryptd finishes the removal", name, err)
	}
	return nil
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

// incrementalSnapshotOf names an incremental snapshot of d, or "".
func (h *Host) incrementalSnapshotOf(d *Disk) string {
	var names []string
	for _, s := range h.st.Snapshots {
		if s.Incremental && s.SourceUniqueID == d.UniqueID {
			names = append(names, s.Name)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// MoveSnapshot moves a snapshot to another resource group or subscription,
// under the rule of customer-managed keys.
func (h *Host) MoveSnapshot(ctx context.Context, name string, r MoveRequest) (*Snapshot, error) {
	return moveCopy(h, h.st.Snapshots, "snapshot", typeSnapshots, name, r)
}

func (s *Snapshot) encryptionType() string { return s.Encryption.Type }

// checkSnapshotKey: a snapshot of an UltraSSD or PremiumV2 disk with a
// customer-managed key uses the disk's own key.
func checkSnapshotKey(d *Disk, des *DiskEncryptionSet) error {
	if !isUltraOrV2(d.Sku.Name) || !isCMK(d.Encryption.Type) || des == nil || des.ID == d.Encryption.DiskEncryptionSetID {
		return nil
	}
	return notAllowed(http.StatusBadRequest, "disk %q is %s with a customer-managed key: its snapshots use the disk's own key, not disk encryption set %q; leave out --disk-encryption-set",
		d.Name, d.Sku.Name, des.Name)
}

// UpdateSnapshotRequest switches a snapshot between platform and customer
// keys (its data key is re-wrapped, its data untouched).
type UpdateSnapshotRequest struct {
	EncryptionType    string `json:"encryptionType,omitempty"`
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
}

// UpdateSnapshot re-wraps a snapshot's key under another set's key or the
// platform key. Customer keys cannot be turned off on an incremental
// snapshot, nor the key changed on one of an UltraSSD or PremiumV2 disk.
func (h *Host) UpdateSnapshot(ctx context.Context, name string, r UpdateSnapshotRequest) (*Snapshot, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sn, ok := h.st.Snapshots[name]
	if !ok {
		return nil, notFound("snapshot", name)
	}
	res := &Disk{Name: "snapshot " + name, Encryption: sn.Encryption}
	var des *DiskEncryptionSet
	switch {
	case r.DiskEncryptionSet != "":
		if des, ok = h.desByID(r.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", r.DiskEncryptionSet)
		}
		if r.EncryptionType != "" && r.EncryptionType != EncCustomerKey && r.EncryptionType != sn.Encryption.Type {
			return nil, badRequest("a snapshot keeps its layers; with --disk-encryption-set leave out --encryption-type")
		}
		src := &Disk{Name: sn.SourceDisk, Sku: sn.Sku, Encryption: sn.Encryption}
		if err := checkSnapshotKey(src, des); err != nil {
			return nil, err
		}
		if sn.ADE {
			return nil, adeRefusal("snapshot", name, "customer-managed keys", "keep it on platform-managed keys")
		}
		if err := checkDESScope("snapshot", name, sn.placement(), des); err != nil {
			return nil, err
		}
	case r.EncryptionType == EncPlatformKey:
		if sn.Encryption.Type == EncPlatformKey {
			c := *sn
			return &c, nil
		}
		if sn.Encryption.Type == EncPlatformAndCustomerKey {
			return nil, badRequest("snapshot %q is double-encrypted; switching it to a single layer is not supported", name)
		}
		if sn.Incremental {
			return nil, notAllowed(http.StatusConflict, "snapshot %q is incremental: customer-managed keys cannot be turned off on an incremental snapshot; keep its key, or take a full snapshot (without --incremental) and switch that one", name)
		}
		if isUltraOrV2(sn.Sku.Name) {
			return nil, notAllowed(http.StatusBadRequest, "snapshot %q is of an %s disk with a customer-managed key: it keeps the disk's key", name, sn.Sku.Name)
		}
	default:
		return nil, badRequest("give --disk-encryption-set, or --encryption-type %s", EncPlatformKey)
	}
	var w disk.KeyWrapper = h.cfg.Keys
	if des != nil {
		ws, err := h.wrappersFor(ctx, EncCustomerKey, des)
		if err != nil {
			return nil, err
		}
		w = ws[0]
	}
	nw, err := disk.Rewrap(ctx, h.cfg.Storage, sn.StoragePrefix, 1, h.unwrapperFor(res), w)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, err)
	}
	sn.KeyID = nw.KeyID
	if des != nil {
		sn.Encryption.DiskEncryptionSetID = des.ID
		if sn.Encryption.Type == EncPlatformKey {
			sn.Encryption.Type = EncCustomerKey
		}
	} else {
		sn.Encryption = Encryption{Type: EncPlatformKey}
	}
	c := *sn
	return &c, h.save()
}
