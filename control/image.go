package control

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"hostcrypt/disk"
	"hostcrypt/storage"
)

// Image is a disk image to create disks from: an independent encrypted copy
// of a disk or snapshot, with its own data key and volume identity.
type Image struct {
	Name     string `json:"name"`
	UniqueID string `json:"uniqueId"`
	located
	SourceKind        string     `json:"sourceKind"` // "disk" or "snapshot"
	Source            string     `json:"source"`
	SourceResourceID  string     `json:"sourceResourceId"`
	DiskSizeBytes     int64      `json:"diskSizeBytes"`
	LogicalSectorSize int        `json:"logicalSectorSize"`
	Encryption        Encryption `json:"encryption"`
	KeyID             string     `json:"keyId"`
	TimeCreated       time.Time  `json:"timeCreated"`
	UsedBytes         int64      `json:"usedBytes"`
	StoragePrefix     string     `json:"storagePrefix"`
	// ADE is inherited from the source.
	ADE bool `json:"ade,omitempty"`
}

// CreateImageRequest is the body of an image creation.
type CreateImageRequest struct {
	Name string `json:"name"`
	// Source is a disk or a snapshot name; a disk of a running VM is
	// refused (take a snapshot of it and make the image from that).
	Source            string `json:"source"`
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
}

// readOnlyView shows a snapshot's objects, wherever its manifest says they
// are, under one virtual prefix that the disk engine opens like a disk.
// Writes are refused.
type readOnlyView struct {
	be     storage.Backend
	prefix string            // the virtual prefix
	meta   string            // real key of the metadata
	chunks map[string]string // virtual key -> real key
}

const viewPrefix = "view"

var errReadOnly = errors.New("a snapshot is read-only")

func (v *readOnlyView) OpenChunk(ctx context.Context, key string, create bool) (storage.Chunk, error) {
	real, ok := v.chunks[key]
	if !ok {
		if create {
			return nil, errReadOnly
		}
		return nil, fmt.Errorf("%w: %s", storage.ErrNotFound, key)
	}
	c, err := v.be.OpenChunk(ctx, real, false)
	if err != nil {
		return nil, err
	}
	return readOnlyChunk{c}, nil
}

func (v *readOnlyView) ReadMeta(ctx context.Context, key string) ([]byte, error) {
	if key != v.prefix+"/meta.json" {
		return nil, fmt.Errorf("%w: %s", storage.ErrNotFound, key)
	}
	return v.be.ReadMeta(ctx, v.meta)
}

func (v *readOnlyView) ReadMetaVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	if key != v.prefix+"/meta.json" {
		return nil, storage.NoVersion, fmt.Errorf("%w: %s", storage.ErrNotFound, key)
	}
	return v.be.ReadMetaVersion(ctx, v.meta)
}

func (v *readOnlyView) WriteMeta(context.Context, string, []byte) error { return errReadOnly }
func (v *readOnlyView) WriteMetaIf(context.Context, string, []byte, storage.Version) (storage.Version, error) {
	return storage.NoVersion, errReadOnly
}
func (v *readOnlyView) Delete(context.Context, string) error { return errReadOnly }
func (v *readOnlyView) List(_ context.Context, prefix string) ([]string, error) {
	var out []string
	for k := range v.chunks {
		if strings.HasPrefix(k, prefix+"/") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out, nil
}
func (v *readOnlyView) Usage(context.Context, string) (int64, error) { return 0, nil }
func (v *readOnlyView) Close() error                                 { return nil }

type readOnlyChunk struct{ storage.Chunk }

func (readOnlyChunk) WriteAt([]byte, int64) (int, error) { return 0, errReadOnly }
func (readOnlyChunk) PunchHole(int64, int64) error       { return errReadOnly }

// openSnapshot opens a snapshot's content with the disk engine, read-only.
func (h *Host) openSnapshot(ctx context.Context, s *Snapshot) (*disk.Disk, error) {
	m, err := h.readManifest(ctx, s.StoragePrefix)
	if err != nil {
		return nil, err
	}
	v := &readOnlyView{be: h.cfg.Storage, prefix: viewPrefix, meta: s.StoragePrefix + "/meta.json", chunks: map[string]string{}}
	for n, e := range m.Chunks {
		v.chunks[viewPrefix+"/chunks/"+n] = e.Key
	}
	d, err := disk.Open(ctx, v, viewPrefix, h.unwrapperFor(&Disk{Name: "snapshot " + s.Name, Encryption: s.Encryption}))
	if err != nil {
		return nil, fmt.Errorf("opening snapshot %q: %w", s.Name, err)
	}
	return d, nil
}

// source is what a new disk or image is copied from.
type source struct {
	kind, name, id string
	d              *disk.Disk
	sector         int
	at             placement
	ade            bool
}

// openSource opens a snapshot, an image or (with allowDisk) a disk that is
// not in use, by name, for copying.
func (h *Host) openSource(ctx context.Context, name string, allowDisk bool) (*source, error) {
	if s, ok := h.st.Snapshots[name]; ok {
		d, err := h.openSnapshot(ctx, s)
		if err != nil {
			return nil, err
		}
		return &source{kind: "snapshot", name: name, id: s.ID, d: d, sector: s.LogicalSectorSize, at: s.placement(), ade: s.ADE}, nil
	}
	if im, ok := h.st.Images[name]; ok {
		d, err := disk.Open(ctx, h.cfg.Storage, im.StoragePrefix, h.unwrapperFor(&Disk{Name: "image " + im.Name, Encryption: im.Encryption}))
		if err != nil {
			return nil, fmt.Errorf("opening image %q: %w", name, err)
		}
		return &source{kind: "image", name: name, id: im.ID, d: d, sector: im.LogicalSectorSize, at: im.placement(), ade: im.ADE}, nil
	}
	if dr, ok := h.st.Disks[name]; ok && allowDisk {
		if err := h.usable(ctx, dr); err != nil {
			return nil, err
		}
		if h.openDiskFor(name) != nil {
			return nil, conflict("disk %q is in use by running VM %q; take a snapshot of it (hostcrypt snapshot create --name S --source %s) and use the snapshot as the source", name, dr.ManagedBy, name)
		}
		d, err := disk.Open(ctx, h.cfg.Storage, dr.StoragePrefix, h.unwrapperFor(dr))
		if err != nil {
			return nil, fmt.Errorf("opening disk %q: %w", name, err)
		}
		return &source{kind: "disk", name: name, id: dr.ID, d: d, sector: dr.LogicalSectorSize, at: dr.placement(), ade: dr.ADE}, nil
	}
	what := "snapshot or image"
	if allowDisk {
		what = "disk or snapshot"
	}
	return nil, notFound(what, name)
}

// copyInto copies src's plaintext into dst chunk by chunk (dst has its own
// data key and volume), reporting progress under pkey.
func (h *Host) copyInto(ctx context.Context, src, dst *disk.Disk, pkey, op string) error {
	defer h.prog.clear(pkey)
	size, n := src.Size(), src.ChunkCount()
	per := (size + n - 1) / max(n, 1)
	return disk.CopyChunks(ctx, src, dst, 0, func(next int64) error {
		h.prog.set(pkey, op, min(next*per, size), size)
		return nil
	})
}

// CreateImage makes an image from a disk that is not in use or from a
// snapshot: a copy under a new data key.
func (h *Host) CreateImage(ctx context.Context, r CreateImageRequest) (*Image, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := checkName("image", r.Name); err != nil {
		return nil, err
	}
	if _, ok := h.st.Images[r.Name]; ok {
		return nil, conflict("image %q already exists; choose another name or delete it first", r.Name)
	}
	if r.Source == "" {
		return nil, badRequest("an image needs a source disk or snapshot (--source)")
	}
	var des *DiskEncryptionSet
	encType := EncPlatformKey
	if r.DiskEncryptionSet != "" {
		var ok bool
		if des, ok = h.desByID(r.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", r.DiskEncryptionSet)
		}
		encType = EncCustomerKey
	}
	src, err := h.openSource(ctx, r.Source, true)
	if err != nil {
		return nil, err
	}
	defer src.d.Close()
	if des != nil {
		if src.ade {
			return nil, adeRefusal(src.kind, src.name, "images under customer-managed keys", "leave out --disk-encryption-set")
		}
		if err := checkDESScope("image", r.Name, src.at, des); err != nil {
			return nil, err
		}
	}
	wrappers, err := h.wrappersFor(ctx, encType, des)
	if err != nil {
		return nil, err
	}
	uid := newID()
	prefix := "images/" + uid
	if err := h.beginIntent(prefix, "image "+r.Name); err != nil {
		return nil, err
	}
	dst, err := disk.Create(ctx, h.cfg.Storage, prefix, disk.CreateOptions{Size: src.d.Size(), SectorSize: src.sector, Layers: wrappers})
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, fmt.Errorf("creating image %q: %w", r.Name, err)
	}
	err = h.copyInto(ctx, src.d, dst, "images/"+r.Name, "copying "+src.kind+" "+src.name)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, fmt.Errorf("image %q from %s %q: %w", r.Name, src.kind, src.name, err)
	}
	m, err := disk.ReadMetadata(ctx, h.cfg.Storage, prefix)
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	im := &Image{
		Name: r.Name, UniqueID: uid, located: locatedAt(src.at, typeImages, r.Name),
		SourceKind: src.kind, Source: src.name, SourceResourceID: src.id, DiskSizeBytes: src.d.Size(),
		LogicalSectorSize: src.sector, Encryption: Encryption{Type: encType}, KeyID: m.Layers[0].WrappedKeys[0].KeyID,
		TimeCreated: h.cfg.Now().UTC(), StoragePrefix: prefix, ADE: src.ade,
	}
	if des != nil {
		im.Encryption.DiskEncryptionSetID = des.ID
	}
	im.UsedBytes, _ = h.cfg.Storage.Usage(ctx, prefix)
	h.st.Images[r.Name] = im
	delete(h.st.Intents, prefix)
	if err := h.save(); err != nil {
		delete(h.st.Images, r.Name)
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	h.log.Info("image created", "image", r.Name, "source", src.name)
	return im, nil
}

// ShowImage returns one image.
func (h *Host) ShowImage(name string) (*Image, error) {
	return showCopy(h, h.st.Images, "image", name)
}

// ListImages returns every image, sorted by name.
func (h *Host) ListImages() []*Image { return listCopies(h, h.st.Images) }

// DeleteImage destroys an image: the deletion is recorded, then its wrapped
// key is destroyed, then its data removed (see removal.go).
func (h *Host) DeleteImage(ctx context.Context, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	im, ok := h.st.Images[name]
	if !ok {
		return notFound("image", name)
	}
	delete(h.st.Images, name)
	h.recordRemoval(im.StoragePrefix, "image "+name, 0)
	if err := h.save(); err != nil {
		h.st.Images[name] = im
		delete(h.st.Removals, im.StoragePrefix)
		return err
	}
	h.log.Info("image deleted", "image", name)
	if err := h.finishRemoval(ctx, im.StoragePrefix); err != nil {
		return fmt.Errorf("image %q is deleted, but %w; the next start of hostcryptd finishes the removal", name, err)
	}
	return nil
}

// fillFromSource copies a snapshot or image into a disk just created.
func (h *Host) fillFromSource(ctx context.Context, src *source, dst *disk.Disk, diskName string) error {
	return h.copyInto(ctx, src.d, dst, "disks/"+diskName, "copying "+src.kind+" "+src.name)
}

// MoveImage moves an image to another resource group or subscription, under
// the rule of customer-managed keys.
func (h *Host) MoveImage(ctx context.Context, name string, r MoveRequest) (*Image, error) {
	return moveCopy(h, h.st.Images, "image", typeImages, name, r)
}

func (im *Image) encryptionType() string { return im.Encryption.Type }

// located is where a snapshot or image lives and its resource id, which is
// built from it. Embedded, its fields read as the resource's own in JSON.
type located struct {
	ID            string `json:"id"`
	Location      string `json:"location"`
	Subscription  string `json:"subscription"`
	ResourceGroup string `json:"resourceGroup"`
}

func locatedAt(p placement, typ, name string) located {
	return located{ID: p.id(typ, name), Location: p.Location, Subscription: p.Subscription, ResourceGroup: p.ResourceGroup}
}

func (l *located) placement() placement {
	return placement{Subscription: l.Subscription, ResourceGroup: l.ResourceGroup, Location: l.Location}
}

// place moves it: a new placement and the id built from it.
func (l *located) place(p placement, typ, name string) { *l = locatedAt(p, typ, name) }

// movable is a snapshot or an image: a copy that moves by its placement.
type movable interface {
	placement() placement
	encryptionType() string
	place(p placement, typ, name string)
}

// moveCopy moves the snapshot or image name of m, under the rule of
// customer-managed keys; typ is its type in resource ids.
func moveCopy[T any, P interface {
	*T
	movable
}](h *Host, m map[string]*T, kind, typ, name string, r MoveRequest) (*T, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := m[name]
	if !ok {
		return nil, notFound(kind, name)
	}
	res := P(v)
	to, err := h.moveTarget(kind, name, res.placement(), res.encryptionType(), r)
	if err != nil {
		return nil, err
	}
	old := *v
	res.place(to, typ, name)
	if err := h.save(); err != nil {
		*v = old
		return nil, err
	}
	c := *v
	return &c, nil
}

// moveTarget checks a move request of a snapshot or image.
func (h *Host) moveTarget(kind, name string, from placement, encType string, r MoveRequest) (placement, error) {
	if r.ResourceGroup == "" {
		return from, badRequest("give the resource group to move %s %q to (--resource-group)", kind, name)
	}
	if r.Subscription == "" {
		r.Subscription = from.Subscription
	}
	to, err := h.newPlacement(r.Subscription, r.ResourceGroup, from.Location)
	if err != nil {
		return from, err
	}
	return to, checkCMKMove(kind, name, encType, from, to, nil)
}
