package cli

import (
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/internal/units"
)

func galleryCommands() []Command {
	return []Command{
		{"gallery", "create", "create an image gallery", galleryCreate},
		{"gallery", "show", "show a gallery and its image definitions", galleryShow},
		{"gallery", "list", "list galleries", galleryList},
		{"gallery", "delete", "delete a gallery that holds no image definition", galleryDelete},
		{"gallery", "move", "move a gallery with its definitions and versions to another resource group (customer-key versions stay in their subscription)", moveCmd("gallery", api.RouteMoveGallery)},
		{"gallery", "image-definition create", "create an image definition in a gallery", galleryImageCreate},
		{"gallery", "image-definition show", "show an image definition and its versions", galleryImageShow},
		{"gallery", "image-definition list", "list a gallery's image definitions", galleryImageList},
		{"gallery", "image-definition delete", "delete an image definition that has no version", galleryImageDelete},
		{"gallery", "image-version create", "make an image version from an image, a snapshot or a disk not in use (a copy under its own key)", galleryVersionCreate},
		{"gallery", "image-version show", "show an image version", galleryVersionShow},
		{"gallery", "image-version list", "list an image definition's versions", galleryVersionList},
		{"gallery", "image-version delete", "delete an image version: its wrapped key first, then its data", galleryVersionDelete},
	}
}

var galleryHeader = []string{"NAME", "RESOURCE-GROUP", "LOCATION", "IMAGE-DEFINITIONS"}

func galleryRow(g *api.Gallery) []string {
	return []string{g.Name, g.ResourceGroup, g.Location, orDash(strings.Join(g.ImageDefinitions, ","))}
}

var galleryImageHeader = []string{"GALLERY", "NAME", "OS", "PUBLISHER", "OFFER", "SKU", "VERSIONS"}

func galleryImageRow(gi *api.GalleryImage) []string {
	return []string{gi.Gallery, gi.Name, gi.OsType, orDash(gi.Publisher), orDash(gi.Offer), orDash(gi.Sku), orDash(strings.Join(gi.Versions, ","))}
}

var galleryVersionHeader = []string{"PATH", "SOURCE", "SIZE", "ENCRYPTION", "KEY"}

func galleryVersionRow(v *api.GalleryImageVersion) []string {
	return []string{v.Path, v.SourceKind + " " + v.Source, units.FormatSize(v.DiskSizeBytes), v.Encryption.Type, v.KeyID}
}

func galleryCreate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "gallery name")
	desc := f.String("description", "", "description")
	pl := placementFlags(f)
	if err := f.parse(args); err != nil {
		return err
	}
	req := api.CreateGalleryRequest{Name: *name, Description: *desc, Subscription: *pl.subscription, ResourceGroup: *pl.resourceGroup, Location: *pl.location}
	g, err := onHost(c, func(h *api.Client) (*api.Gallery, error) { return h.CreateGallery(c.Ctx, req) })
	if err != nil {
		return err
	}
	return c.show(g, galleryHeader, [][]string{galleryRow(g)})
}

func galleryShow(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "gallery name")
	if err := f.parse(args); err != nil {
		return err
	}
	g, err := onHost(c, func(h *api.Client) (*api.Gallery, error) { return h.ShowGallery(c.Ctx, *name) })
	if err != nil {
		return err
	}
	return c.show(g, galleryHeader, [][]string{galleryRow(g)})
}

func galleryList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	gs, err := onHost(c, func(h *api.Client) ([]api.Gallery, error) { return h.ListGalleries(c.Ctx) })
	if err != nil {
		return err
	}
	return showList(c, gs, galleryHeader, galleryRow)
}

func galleryDelete(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "gallery name")
	if err := f.parse(args); err != nil {
		return err
	}
	return onHostDo(c, func(h *api.Client) error { return h.DeleteGallery(c.Ctx, *name) })
}

func galleryImageCreate(c *Context, args []string) error {
	f := newFlags(c)
	gallery := f.requiredString("gallery-name", "gallery name")
	name := f.requiredString("gallery-image-definition", "image definition name")
	os := f.String("os-type", api.OsLinux, "Linux or Windows")
	publisher := f.String("publisher", "", "publisher")
	offer := f.String("offer", "", "offer")
	sku := f.String("sku", "", "sku")
	if err := f.parse(args); err != nil {
		return err
	}
	req := api.CreateGalleryImageRequest{Name: *name, OsType: *os, Publisher: *publisher, Offer: *offer, Sku: *sku}
	gi, err := onHost(c, func(h *api.Client) (*api.GalleryImage, error) { return h.CreateGalleryImage(c.Ctx, *gallery, req) })
	if err != nil {
		return err
	}
	return c.show(gi, galleryImageHeader, [][]string{galleryImageRow(gi)})
}

func galleryImageShow(c *Context, args []string) error {
	f := newFlags(c)
	gallery := f.requiredString("gallery-name", "gallery name")
	name := f.requiredString("gallery-image-definition", "image definition name")
	if err := f.parse(args); err != nil {
		return err
	}
	gi, err := onHost(c, func(h *api.Client) (*api.GalleryImage, error) { return h.ShowGalleryImage(c.Ctx, *gallery, *name) })
	if err != nil {
		return err
	}
	return c.show(gi, galleryImageHeader, [][]string{galleryImageRow(gi)})
}

func galleryImageList(c *Context, args []string) error {
	f := newFlags(c)
	gallery := f.requiredString("gallery-name", "gallery name")
	if err := f.parse(args); err != nil {
		return err
	}
	gis, err := onHost(c, func(h *api.Client) ([]api.GalleryImage, error) { return h.ListGalleryImages(c.Ctx, *gallery) })
	if err != nil {
		return err
	}
	return showList(c, gis, galleryImageHeader, galleryImageRow)
}

func galleryImageDelete(c *Context, args []string) error {
	f := newFlags(c)
	gallery := f.requiredString("gallery-name", "gallery name")
	name := f.requiredString("gallery-image-definition", "image definition name")
	if err := f.parse(args); err != nil {
		return err
	}
	return onHostDo(c, func(h *api.Client) error { return h.DeleteGalleryImage(c.Ctx, *gallery, *name) })
}

func galleryVersionCreate(c *Context, args []string) error {
	f := newFlags(c)
	gallery := f.requiredString("gallery-name", "gallery name")
	def := f.requiredString("gallery-image-definition", "image definition name")
	name := f.requiredString("gallery-image-version", "version, MAJOR.MINOR.PATCH")
	src := f.requiredString("source", "an image, a snapshot or a disk not in use")
	des := f.String("disk-encryption-set", "", "encrypt the version under this set's key (default: a platform key)")
	if err := f.parse(args); err != nil {
		return err
	}
	req := api.CreateGalleryImageVersionRequest{Name: *name, Source: *src, DiskEncryptionSet: *des}
	path := *gallery + "/" + *def + "/" + *name
	v, err := withProgress(c, api.KindGalleryImageVersions, path, func(h *api.Client) (*api.GalleryImageVersion, error) {
		return h.CreateGalleryImageVersion(c.Ctx, *gallery, *def, req)
	})
	if err != nil {
		return err
	}
	return c.show(v, galleryVersionHeader, [][]string{galleryVersionRow(v)})
}

func galleryVersionShow(c *Context, args []string) error {
	f := newFlags(c)
	gallery := f.requiredString("gallery-name", "gallery name")
	def := f.requiredString("gallery-image-definition", "image definition name")
	name := f.requiredString("gallery-image-version", "version")
	if err := f.parse(args); err != nil {
		return err
	}
	v, err := onHost(c, func(h *api.Client) (*api.GalleryImageVersion, error) {
		return h.ShowGalleryImageVersion(c.Ctx, *gallery, *def, *name)
	})
	if err != nil {
		return err
	}
	return c.show(v, galleryVersionHeader, [][]string{galleryVersionRow(v)})
}

func galleryVersionList(c *Context, args []string) error {
	f := newFlags(c)
	gallery := f.requiredString("gallery-name", "gallery name")
	def := f.requiredString("gallery-image-definition", "image definition name")
	if err := f.parse(args); err != nil {
		return err
	}
	vs, err := onHost(c, func(h *api.Client) ([]api.GalleryImageVersion, error) {
		return h.ListGalleryImageVersions(c.Ctx, *gallery, *def)
	})
	if err != nil {
		return err
	}
	return showList(c, vs, galleryVersionHeader, galleryVersionRow)
}

func galleryVersionDelete(c *Context, args []string) error {
	f := newFlags(c)
	gallery := f.requiredString("gallery-name", "gallery name")
	def := f.requiredString("gallery-image-definition", "image definition name")
	name := f.requiredString("gallery-image-version", "version")
	if err := f.parse(args); err != nil {
		return err
	}
	return onHostDo(c, func(h *api.Client) error { return h.DeleteGalleryImageVersion(c.Ctx, *gallery, *def, *name) })
}
