package control

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
)

// Image galleries: a gallery holds image definitions, a definition holds
// versions. A version is what an image is — an independent copy of a disk,
// snapshot or image under a data key of its own, wrapped with a disk
// encryption set's key or the platform key — kept under the images/ root of
// storage like an image, so removal and host gc treat it as one. Versions
// are sources of new disks (by "GALLERY/DEFINITION/VERSION" or resource
// id), are re-wrapped with the other resources of their set on rotation,
// and follow the image rules: content that was guest-encrypted stays
// flagged, and a customer-key version never moves to another subscription.

const typeGalleries = "galleries"

// versionRE is a version's name: MAJOR.MINOR.PATCH, as Azure wants it.
var versionRE = regexp.MustCompile(`^[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}$`)

func galleryImageKey(gallery, def string) string { return gallery + "/" + def }

func galleryVersionKey(gallery, def, version string) string {
	return gallery + "/" + def + "/" + version
}

func galleryID(p store.Placement, gallery string) string {
	return resourceID(p, typeGalleries, gallery)
}

func galleryImageID(p store.Placement, gallery, def string) string {
	return galleryID(p, gallery) + "/images/" + def
}

func galleryVersionID(p store.Placement, gallery, def, version string) string {
	return galleryImageID(p, gallery, def) + "/versions/" + version
}

// versionByRef finds a gallery image version by its path
// (GALLERY/DEFINITION/VERSION) or resource id.
func versionByRef(r *store.Records, ref string) (string, *store.GalleryImageVersion, bool) {
	if v, ok := r.GalleryImageVersions[ref]; ok {
		return ref, v, true
	}
	for k, v := range r.GalleryImageVersions {
		if strings.EqualFold(v.ID, ref) {
			return k, v, true
		}
	}
	return "", nil, false
}

func galleryView(r *store.Records, g *store.Gallery) *api.Gallery {
	v := &api.Gallery{Name: g.Name, ID: g.ID, Location: g.Location, Subscription: g.Subscription, ResourceGroup: g.ResourceGroup,
		Description: g.Description, TimeCreated: g.TimeCreated, ImageDefinitions: []string{}}
	for _, gi := range r.GalleryImages {
		if gi.Gallery == g.Name {
			v.ImageDefinitions = append(v.ImageDefinitions, gi.Name)
		}
	}
	sort.Strings(v.ImageDefinitions)
	return v
}

func galleryImageView(r *store.Records, gi *store.GalleryImage) *api.GalleryImage {
	v := &api.GalleryImage{Name: gi.Name, Gallery: gi.Gallery, ID: gi.ID, Location: gi.Location, Subscription: gi.Subscription,
		ResourceGroup: gi.ResourceGroup, OsType: gi.OsType, Publisher: gi.Publisher, Offer: gi.Offer, Sku: gi.Sku,
		TimeCreated: gi.TimeCreated, Versions: []string{}}
	for _, gv := range r.GalleryImageVersions {
		if gv.Gallery == gi.Gallery && gv.Definition == gi.Name {
			v.Versions = append(v.Versions, gv.Name)
		}
	}
	sort.Strings(v.Versions)
	return v
}

func galleryVersionView(gv *store.GalleryImageVersion) *api.GalleryImageVersion {
	return &api.GalleryImageVersion{
		Name: gv.Name, Gallery: gv.Gallery, Definition: gv.Definition, Path: galleryVersionKey(gv.Gallery, gv.Definition, gv.Name),
		UniqueID: gv.UniqueID, ID: gv.ID, Location: gv.Location, Subscription: gv.Subscription, ResourceGroup: gv.ResourceGroup,
		SourceKind: gv.SourceKind, Source: gv.Source, SourceResourceID: gv.SourceResourceID, DiskSizeBytes: gv.DiskSizeBytes,
		LogicalSectorSize: gv.LogicalSectorSize, Encryption: encView(gv.Encryption), KeyID: gv.KeyID, TimeCreated: gv.TimeCreated,
		UsedBytes: gv.UsedBytes, StoragePrefix: gv.StoragePrefix, ADE: gv.ADE,
	}
}

// CreateGallery creates an empty gallery.
func (h *Host) CreateGallery(ctx context.Context, req api.CreateGalleryRequest) (*api.Gallery, error) {
	if err := checkName("gallery", req.Name); err != nil {
		return nil, err
	}
	p, err := h.newPlacement(req.Subscription, req.ResourceGroup, req.Location)
	if err != nil {
		return nil, err
	}
	g := &store.Gallery{Name: req.Name, Located: store.Located{ID: galleryID(p, req.Name), Placement: p},
		Description: req.Description, TimeCreated: h.cfg.Now().UTC()}
	r, err := h.update(ctx, func(r *store.Records) error {
		if _, ok := r.Galleries[req.Name]; ok {
			return conflict("gallery %q already exists", req.Name)
		}
		r.Galleries[req.Name] = g
		return nil
	})
	if err != nil {
		return nil, err
	}
	h.log.Info("gallery created", "gallery", req.Name)
	return galleryView(r, g), nil
}

// ShowGallery returns one gallery with its definitions.
func (h *Host) ShowGallery(ctx context.Context, name string) (*api.Gallery, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	g, ok := r.Galleries[name]
	if !ok {
		return nil, notFound("gallery", name)
	}
	return galleryView(r, g), nil
}

// ListGalleries returns every gallery, sorted by name.
func (h *Host) ListGalleries(ctx context.Context) ([]*api.Gallery, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	return sortedViews(r.Galleries, func(g *store.Gallery) *api.Gallery { return galleryView(r, g) }), nil
}

// DeleteGallery deletes a gallery that holds no image definition.
func (h *Host) DeleteGallery(ctx context.Context, name string) error {
	_, err := h.update(ctx, func(r *store.Records) error {
		g, ok := r.Galleries[name]
		if !ok {
			return notFound("gallery", name)
		}
		if defs := galleryView(r, g).ImageDefinitions; len(defs) > 0 {
			return conflict("gallery %q holds image definitions %s; delete them first (hostcrypt gallery image-definition delete --gallery-name %s --gallery-image-definition %s)",
				name, strings.Join(defs, ", "), name, defs[0])
		}
		delete(r.Galleries, name)
		return nil
	})
	return err
}

// MoveGallery moves a gallery with its definitions and versions to another
// resource group or subscription. A version with a customer-managed key
// never moves to another subscription (the rule of images).
func (h *Host) MoveGallery(ctx context.Context, name string, req api.MoveRequest) (*api.Gallery, error) {
	release, err := h.claim("being moved", "gallery/"+name)
	if err != nil {
		return nil, err
	}
	defer release()
	var out *store.Gallery
	r, err := h.update(ctx, func(r *store.Records) error {
		g, ok := r.Galleries[name]
		if !ok {
			return notFound("gallery", name)
		}
		to, err := h.moveTarget("gallery", name, g.Placement, api.EncPlatformKey, req, nil)
		if err != nil {
			return err
		}
		for _, k := range sortedKeys(r.GalleryImageVersions) {
			gv := r.GalleryImageVersions[k]
			if gv.Gallery != name || !isCMK(gv.Encryption.Type) || strings.EqualFold(gv.Subscription, to.Subscription) {
				continue
			}
			return notAllowed(http.StatusBadRequest, "gallery %q holds image version %s, which uses customer-managed keys (%s), and resources with customer-managed keys cannot move to another subscription: delete the version first (hostcrypt gallery image-version delete --gallery-name %s --gallery-image-definition %s --gallery-image-version %s) and make it again in subscription %s after the move",
				name, k, gv.Encryption.Type, gv.Gallery, gv.Definition, gv.Name, to.Subscription)
		}
		g.Located = store.Located{ID: galleryID(to, name), Placement: to}
		for _, gi := range r.GalleryImages {
			if gi.Gallery == name {
				gi.Located = store.Located{ID: galleryImageID(to, name, gi.Name), Placement: to}
			}
		}
		for _, gv := range r.GalleryImageVersions {
			if gv.Gallery == name {
				gv.Located = store.Located{ID: galleryVersionID(to, name, gv.Definition, gv.Name), Placement: to}
			}
		}
		out = g
		return nil
	})
	if err != nil {
		return nil, err
	}
	return galleryView(r, out), nil
}

// CreateGalleryImage creates an image definition in a gallery.
func (h *Host) CreateGalleryImage(ctx context.Context, gallery string, req api.CreateGalleryImageRequest) (*api.GalleryImage, error) {
	if err := checkName("image definition", req.Name); err != nil {
		return nil, err
	}
	if req.OsType == "" {
		req.OsType = api.OsLinux
	}
	switch {
	case strings.EqualFold(req.OsType, api.OsLinux):
		req.OsType = api.OsLinux
	case strings.EqualFold(req.OsType, api.OsWindows):
		req.OsType = api.OsWindows
	default:
		return nil, badRequest("OS type %q: use %s or %s (--os-type)", req.OsType, api.OsLinux, api.OsWindows)
	}
	var gi *store.GalleryImage
	r, err := h.update(ctx, func(r *store.Records) error {
		g, ok := r.Galleries[gallery]
		if !ok {
			return notFound("gallery", gallery)
		}
		key := galleryImageKey(gallery, req.Name)
		if _, ok := r.GalleryImages[key]; ok {
			return conflict("image definition %q already exists in gallery %q", req.Name, gallery)
		}
		gi = &store.GalleryImage{Name: req.Name, Gallery: gallery, Located: store.Located{ID: galleryImageID(g.Placement, gallery, req.Name), Placement: g.Placement},
			OsType: req.OsType, Publisher: req.Publisher, Offer: req.Offer, Sku: req.Sku, TimeCreated: h.cfg.Now().UTC()}
		r.GalleryImages[key] = gi
		return nil
	})
	if err != nil {
		return nil, err
	}
	return galleryImageView(r, gi), nil
}

// ShowGalleryImage returns one image definition with its versions.
func (h *Host) ShowGalleryImage(ctx context.Context, gallery, name string) (*api.GalleryImage, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	gi, ok := r.GalleryImages[galleryImageKey(gallery, name)]
	if !ok {
		return nil, notFound("image definition", galleryImageKey(gallery, name))
	}
	return galleryImageView(r, gi), nil
}

// ListGalleryImages returns a gallery's definitions, sorted by name.
func (h *Host) ListGalleryImages(ctx context.Context, gallery string) ([]*api.GalleryImage, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := r.Galleries[gallery]; !ok {
		return nil, notFound("gallery", gallery)
	}
	out := []*api.GalleryImage{}
	for _, k := range sortedKeys(r.GalleryImages) {
		if gi := r.GalleryImages[k]; gi.Gallery == gallery {
			out = append(out, galleryImageView(r, gi))
		}
	}
	return out, nil
}

// DeleteGalleryImage deletes a definition that has no version.
func (h *Host) DeleteGalleryImage(ctx context.Context, gallery, name string) error {
	_, err := h.update(ctx, func(r *store.Records) error {
		key := galleryImageKey(gallery, name)
		gi, ok := r.GalleryImages[key]
		if !ok {
			return notFound("image definition", key)
		}
		if vs := galleryImageView(r, gi).Versions; len(vs) > 0 {
			return conflict("image definition %s has versions %s; delete them first (hostcrypt gallery image-version delete --gallery-name %s --gallery-image-definition %s --gallery-image-version %s)",
				key, strings.Join(vs, ", "), gallery, name, vs[0])
		}
		delete(r.GalleryImages, key)
		return nil
	})
	return err
}

// CreateGalleryImageVersion makes a version of a definition from an image,
// a snapshot or a disk that is not in use: a copy under a new data key,
// wrapped with des's key (a version of the gallery's subscription and
// location) or the platform key.
func (h *Host) CreateGalleryImageVersion(ctx context.Context, gallery, def string, req api.CreateGalleryImageVersionRequest) (*api.GalleryImageVersion, error) {
	if !versionRE.MatchString(req.Name) {
		return nil, badRequest("image version %q: give MAJOR.MINOR.PATCH, e.g. 1.0.0 (--gallery-image-version)", req.Name)
	}
	if req.Source == "" {
		return nil, badRequest("an image version needs a source image, snapshot or disk (--source)")
	}
	path := galleryVersionKey(gallery, def, req.Name)
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	gi, ok := r.GalleryImages[galleryImageKey(gallery, def)]
	if !ok {
		if _, ok := r.Galleries[gallery]; !ok {
			return nil, notFound("gallery", gallery)
		}
		return nil, notFound("image definition", galleryImageKey(gallery, def))
	}
	exists := func(r *store.Records) error {
		if _, ok := r.GalleryImageVersions[path]; ok {
			return conflict("image version %s already exists; choose another version or delete it first", path)
		}
		return nil
	}
	if err := exists(r); err != nil {
		return nil, err
	}
	var des *store.DES
	encType := api.EncPlatformKey
	if req.DiskEncryptionSet != "" {
		if des, ok = desByID(r, req.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", req.DiskEncryptionSet)
		}
		encType = api.EncCustomerKey
	}
	src, err := h.openSource(ctx, r, req.Source, true, "image version "+gallery+"/"+def+"/"+req.Name)
	if err != nil {
		return nil, err
	}
	defer src.close()
	if des != nil {
		if src.ade {
			return nil, adeRefusal(src.kind, src.name, "image versions under customer-managed keys", "leave out --disk-encryption-set")
		}
		if err := checkDESScope("image version", path, gi.Placement, des); err != nil {
			return nil, err
		}
	}
	wrappers, err := h.wrappersFor(ctx, encType, des)
	if err != nil {
		return nil, err
	}
	uid := newID()
	prefix := "images/" + uid
	done, err := h.beginIntent(ctx, prefix, "image version "+path, "", "", exists)
	if err != nil {
		return nil, err
	}
	defer done()
	dst, err := disk.Create(ctx, h.cfg.Storage, prefix, disk.CreateOptions{Size: src.d.Size(), SectorSize: src.sector, Layers: wrappers})
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, fmt.Errorf("creating image version %s: %w", path, err)
	}
	err = h.copyInto(ctx, src.d, dst, api.KindGalleryImageVersions+"/"+path, "copying "+src.kind+" "+src.name)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, fmt.Errorf("image version %s from %s %q: %w", path, src.kind, src.name, err)
	}
	m, err := disk.ReadMetadata(ctx, h.cfg.Storage, prefix)
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	gv := &store.GalleryImageVersion{
		Name: req.Name, Gallery: gallery, Definition: def, UniqueID: uid,
		Located:    store.Located{ID: galleryVersionID(gi.Placement, gallery, def, req.Name), Placement: gi.Placement},
		SourceKind: src.kind, Source: src.name, SourceResourceID: src.id, DiskSizeBytes: src.d.Size(),
		LogicalSectorSize: src.sector, Encryption: store.Encryption{Type: encType}, KeyID: m.Layers[0].WrappedKeys[0].KeyID,
		TimeCreated: h.cfg.Now().UTC(), StoragePrefix: prefix, ADE: src.ade,
	}
	if des != nil {
		gv.Encryption.DiskEncryptionSetID = des.ID
	}
	gv.UsedBytes, _ = h.cfg.Storage.Usage(ctx, prefix)
	if _, err := h.update(ctx, func(r *store.Records) error {
		if err := exists(r); err != nil {
			return err
		}
		d, ok := r.GalleryImages[galleryImageKey(gallery, def)]
		if !ok {
			return conflict("image definition %s was deleted while its version was made", galleryImageKey(gallery, def))
		}
		// The definition may have moved meanwhile; the version is where
		// it is.
		gv.Located = store.Located{ID: galleryVersionID(d.Placement, gallery, def, req.Name), Placement: d.Placement}
		if des != nil {
			if _, ok := desByID(r, des.ID); !ok {
				return conflict("disk encryption set %q was deleted while image version %s was made", des.Name, path)
			}
			if !strings.EqualFold(d.Subscription, des.Subscription) {
				return conflict("gallery %q moved to subscription %s while image version %s was made; make it again with a set of that subscription", gallery, d.Subscription, path)
			}
		}
		r.GalleryImageVersions[path] = gv
		delete(r.Intents, prefix)
		return nil
	}); err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	h.log.Info("image version created", "version", path, "source", src.name, "encryption", encType)
	return galleryVersionView(gv), nil
}

// ShowGalleryImageVersion returns one version.
func (h *Host) ShowGalleryImageVersion(ctx context.Context, gallery, def, name string) (*api.GalleryImageVersion, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	path := galleryVersionKey(gallery, def, name)
	gv, ok := r.GalleryImageVersions[path]
	if !ok {
		return nil, notFound("image version", path)
	}
	return galleryVersionView(gv), nil
}

// ListGalleryImageVersions returns a definition's versions, sorted by name.
func (h *Host) ListGalleryImageVersions(ctx context.Context, gallery, def string) ([]*api.GalleryImageVersion, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := r.GalleryImages[galleryImageKey(gallery, def)]; !ok {
		return nil, notFound("image definition", galleryImageKey(gallery, def))
	}
	out := []*api.GalleryImageVersion{}
	for _, k := range sortedKeys(r.GalleryImageVersions) {
		if gv := r.GalleryImageVersions[k]; gv.Gallery == gallery && gv.Definition == def {
			out = append(out, galleryVersionView(gv))
		}
	}
	return out, nil
}

// DeleteGalleryImageVersion destroys a version like an image: the deletion
// is recorded, then its wrapped key is destroyed, then its data removed.
func (h *Host) DeleteGalleryImageVersion(ctx context.Context, gallery, def, name string) error {
	path := galleryVersionKey(gallery, def, name)
	release, err := h.claim("being deleted", "galleryImageVersion/"+path)
	if err != nil {
		return err
	}
	defer release()
	return h.deleteRecorded(ctx, "image", "version "+path, func(r *store.Records) (string, int64, error) {
		gv, ok := r.GalleryImageVersions[path]
		if !ok {
			return "", 0, notFound("image version", path)
		}
		delete(r.GalleryImageVersions, path)
		return gv.StoragePrefix, 0, nil
	})
}
