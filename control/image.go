package control

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
	"hostcrypt/storage"
)

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

// Prefetch passes the hint down (the embedded interface would hide it).
func (c readOnlyChunk) Prefetch(off, n int64) bool { return storage.Prefetch(c.Chunk, off, n) }

// openSnapshot opens a snapshot's content with the disk engine, read-only.
func (h *Host) openSnapshot(ctx context.Context, r *store.Records, s *store.Snapshot) (*disk.Disk, error) {
	m, err := h.readManifest(ctx, s.StoragePrefix)
	if err != nil {
		return nil, err
	}
	v := &readOnlyView{be: h.cfg.Storage, prefix: viewPrefix, meta: s.StoragePrefix + "/meta.json", chunks: map[string]string{}}
	for n, e := range m.Chunks {
		v.chunks[viewPrefix+"/chunks/"+n] = e.Key
	}
	d, err := disk.Open(ctx, v, viewPrefix, h.unwrapperFor(r, "snapshot "+s.Name, s.Encryption), openOptions(s.Encryption)...)
	if err != nil {
		return nil, fmt.Errorf("opening snapshot %q: %w", s.Name, err)
	}
	return d, nil
}

// source is what a new disk or image is copied from. It is claimed while
// it is copied: it cannot be deleted, nor (a disk) started, meanwhile.
type source struct {
	kind, name, id string
	d              *disk.Disk
	sector         int
	at             store.Placement
	ade            bool
	release        func()
}

func (s *source) close() {
	s.d.Close()
	s.release()
}

// openSource claims and opens a snapshot, an image, a gallery image version
// (by path or resource id) or (with allowDisk) a disk that is not in use,
// by name, for copying into into ("image im1"). A disk is copied under its
// writer lock on a shared store (lockForOp), held until close.
func (h *Host) openSource(ctx context.Context, r *store.Records, name string, allowDisk bool, into string) (_ *source, err error) {
	if s, ok := r.Snapshots[name]; ok {
		release, err := h.claim("a copy is being made of it", "snapshot/"+name)
		if err != nil {
			return nil, err
		}
		d, err := h.openSnapshot(ctx, r, s)
		if err != nil {
			release()
			return nil, err
		}
		return &source{kind: "snapshot", name: name, id: s.ID, d: d, sector: s.LogicalSectorSize, at: s.Placement, ade: s.ADE, release: release}, nil
	}
	if im, ok := r.Images[name]; ok {
		release, err := h.claim("a copy is being made of it", "image/"+name)
		if err != nil {
			return nil, err
		}
		d, err := disk.Open(ctx, h.cfg.Storage, im.StoragePrefix, h.unwrapperFor(r, "image "+im.Name, im.Encryption), openOptions(im.Encryption)...)
		if err != nil {
			release()
			return nil, fmt.Errorf("opening image %q: %w", name, err)
		}
		return &source{kind: "image", name: name, id: im.ID, d: d, sector: im.LogicalSectorSize, at: im.Placement, ade: im.ADE, release: release}, nil
	}
	if dr, ok := r.Disks[name]; ok && allowDisk {
		release, err := h.claim("a copy is being made of it", "disk/"+name)
		if err != nil {
			return nil, err
		}
		// Every refusal from here on gives the claim back.
		fail := func(err error) (*source, error) {
			release()
			return nil, err
		}
		if err := h.usable(ctx, dr); err != nil {
			return fail(err)
		}
		if err := h.diskElsewhere(r, dr); err != nil {
			return fail(err)
		}
		if len(h.attachmentsOf(name)) > 0 {
			return fail(conflict("disk %q is in use by running VM %q; take a snapshot of it (hostcrypt snapshot create --name S --source %s) and use the snapshot as the source", name, dr.ManagedBy, name))
		}
		lk, err := h.lockForOp(ctx, dr, "copy into "+into)
		if err != nil {
			return fail(err)
		}
		d, err := disk.Open(ctx, lk.Storage, dr.StoragePrefix, h.unwrapperFor(r, "disk "+dr.Name, dr.Encryption), openOptions(dr.Encryption)...)
		if err != nil {
			lk.Release()
			return fail(fmt.Errorf("opening disk %q: %w", name, err))
		}
		return &source{kind: "disk", name: name, id: dr.ID, d: d, sector: dr.LogicalSectorSize, at: dr.Placement, ade: dr.ADE,
			release: func() { lk.Release(); release() }}, nil
	}
	if path, gv, ok := versionByRef(r, name); ok {
		release, err := h.claim("a copy is being made of it", "galleryImageVersion/"+path)
		if err != nil {
			return nil, err
		}
		d, err := disk.Open(ctx, h.cfg.Storage, gv.StoragePrefix, h.unwrapperFor(r, "image version "+path, gv.Encryption), openOptions(gv.Encryption)...)
		if err != nil {
			release()
			return nil, fmt.Errorf("opening image version %s: %w", path, err)
		}
		return &source{kind: "image version", name: path, id: gv.ID, d: d, sector: gv.LogicalSectorSize, at: gv.Placement, ade: gv.ADE, release: release}, nil
	}
	what := "snapshot, image or gallery image version (GALLERY/DEFINITION/VERSION)"
	if allowDisk {
		what = "disk, snapshot, image or gallery image version"
	}
	return nil, notFound(what, name)
}

// copyInto copies src's plaintext into dst chunk by chunk (dst has its own
// data key and volume), reporting progress under pkey.
func (h *Host) copyInto(ctx context.Context, src, dst *disk.Disk, pkey, op string) error {
	defer h.prog.clear(pkey)
	size, n := src.Size(), src.ChunkCount()
	per := (size + n - 1) / max(n, 1)
	what := strings.Replace(pkey, "s/", " ", 1) // "disks/d2" -> "disk d2"
	return disk.CopyChunks(ctx, src, dst, 0, func(next int64) error {
		h.prog.set(pkey, op, min(next*per, size), size)
		return h.copying(ctx, what)
	})
}

// CreateImage makes an image from a disk that is not in use or from a
// snapshot: a copy under a new data key.
func (h *Host) CreateImage(ctx context.Context, req api.CreateImageRequest) (*api.Image, error) {
	if err := checkName("image", req.Name); err != nil {
		return nil, err
	}
	if req.Source == "" {
		return nil, badRequest("an image needs a source disk or snapshot (--source)")
	}
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	if err := nameTaken(r, "image", req.Name); err != nil {
		return nil, err
	}
	var des *store.DES
	encType := api.EncPlatformKey
	if req.DiskEncryptionSet != "" {
		var ok bool
		if des, ok = desByID(r, req.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", req.DiskEncryptionSet)
		}
		encType = api.EncCustomerKey
	}
	src, err := h.openSource(ctx, r, req.Source, true, "image "+req.Name)
	if err != nil {
		return nil, err
	}
	defer src.close()
	if des != nil {
		if src.ade {
			return nil, adeRefusal(src.kind, src.name, "images under customer-managed keys", "leave out --disk-encryption-set")
		}
		if err := checkDESScope("image", req.Name, src.at, des); err != nil {
			return nil, err
		}
	}
	wrappers, err := h.wrappersFor(ctx, encType, des)
	if err != nil {
		return nil, err
	}
	uid := newID()
	prefix := "images/" + uid
	done, err := h.beginIntent(ctx, prefix, "image "+req.Name, "image", req.Name, nil)
	if err != nil {
		return nil, err
	}
	defer done()
	dst, err := disk.Create(ctx, h.cfg.Storage, prefix, disk.CreateOptions{Size: src.d.Size(), SectorSize: src.sector, Layers: wrappers})
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, fmt.Errorf("creating image %q: %w", req.Name, err)
	}
	err = h.copyInto(ctx, src.d, dst, api.KindImages+"/"+req.Name, "copying "+src.kind+" "+src.name)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, fmt.Errorf("image %q from %s %q: %w", req.Name, src.kind, src.name, err)
	}
	m, err := disk.ReadMetadata(ctx, h.cfg.Storage, prefix)
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	im := &store.Image{
		Name: req.Name, UniqueID: uid, Located: located(src.at, typeImages, req.Name),
		SourceKind: src.kind, Source: src.name, SourceResourceID: src.id, DiskSizeBytes: src.d.Size(),
		LogicalSectorSize: src.sector, Encryption: store.Encryption{Type: encType}, KeyID: m.Layers[0].WrappedKeys[0].KeyID,
		TimeCreated: h.cfg.Now().UTC(), StoragePrefix: prefix, ADE: src.ade,
	}
	if des != nil {
		im.Encryption.DiskEncryptionSetID = des.ID
	}
	im.UsedBytes, _ = h.cfg.Storage.Usage(ctx, prefix)
	if _, err := h.update(ctx, func(r *store.Records) error {
		r.Images[req.Name] = im
		delete(r.Intents, prefix)
		return nil
	}); err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	h.log.Info("image created", "image", req.Name, "source", src.name)
	return imageView(im), nil
}

// DeleteImage destroys an image: the deletion is recorded, then its wrapped
// key is destroyed, then its data removed (see removal.go).
func (h *Host) DeleteImage(ctx context.Context, name string) error {
	release, err := h.claim("being deleted", "image/"+name)
	if err != nil {
		return err
	}
	defer release()
	return h.deleteRecorded(ctx, "image", name, func(r *store.Records) (string, int64, error) {
		im, ok := r.Images[name]
		if !ok {
			return "", 0, notFound("image", name)
		}
		delete(r.Images, name)
		return im.StoragePrefix, 0, nil
	})
}

// MoveImage moves an image to another resource group or subscription, under
// the rule of customer-managed keys.
func (h *Host) MoveImage(ctx context.Context, name string, req api.MoveRequest) (*api.Image, error) {
	var out *store.Image
	_, err := h.update(ctx, func(r *store.Records) error {
		im, ok := r.Images[name]
		if !ok {
			return notFound("image", name)
		}
		to, err := h.moveTarget("image", name, im.Placement, im.Encryption.Type, req, nil)
		if err != nil {
			return err
		}
		im.Located = located(to, typeImages, name)
		out = im
		return nil
	})
	if err != nil {
		return nil, err
	}
	return imageView(out), nil
}
