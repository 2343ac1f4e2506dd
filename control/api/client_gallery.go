package api

import "context"

// ListGalleries lists every gallery, sorted by name.
func (c *Client) ListGalleries(ctx context.Context) ([]Gallery, error) {
	return many[Gallery](c, ctx, RouteListGalleries)
}

// CreateGallery creates a gallery.
func (c *Client) CreateGallery(ctx context.Context, r CreateGalleryRequest) (*Gallery, error) {
	return one[Gallery](c, ctx, RouteCreateGallery, r)
}

// ShowGallery returns one gallery.
func (c *Client) ShowGallery(ctx context.Context, name string) (*Gallery, error) {
	return one[Gallery](c, ctx, RouteShowGallery, nil, name)
}

// DeleteGallery deletes a gallery that holds no image definition.
func (c *Client) DeleteGallery(ctx context.Context, name string) error {
	return c.Call(ctx, RouteDeleteGallery, nil, nil, name)
}

// MoveGallery moves a gallery, with its definitions and versions, to
// another resource group or subscription.
func (c *Client) MoveGallery(ctx context.Context, name string, r MoveRequest) (*Gallery, error) {
	return one[Gallery](c, ctx, RouteMoveGallery, r, name)
}

// ListGalleryImages lists a gallery's image definitions, sorted by name.
func (c *Client) ListGalleryImages(ctx context.Context, gallery string) ([]GalleryImage, error) {
	var out []GalleryImage
	return out, c.Call(ctx, RouteListGalleryImages, nil, &out, gallery)
}

// CreateGalleryImage creates an image definition in a gallery.
func (c *Client) CreateGalleryImage(ctx context.Context, gallery string, r CreateGalleryImageRequest) (*GalleryImage, error) {
	return one[GalleryImage](c, ctx, RouteCreateGalleryImage, r, gallery)
}

// ShowGalleryImage returns one image definition.
func (c *Client) ShowGalleryImage(ctx context.Context, gallery, name string) (*GalleryImage, error) {
	return one[GalleryImage](c, ctx, RouteShowGalleryImage, nil, gallery, name)
}

// DeleteGalleryImage deletes an image definition that has no version.
func (c *Client) DeleteGalleryImage(ctx context.Context, gallery, name string) error {
	return c.Call(ctx, RouteDeleteGalleryImage, nil, nil, gallery, name)
}

// ListGalleryImageVersions lists a definition's versions, sorted by name.
func (c *Client) ListGalleryImageVersions(ctx context.Context, gallery, image string) ([]GalleryImageVersion, error) {
	var out []GalleryImageVersion
	return out, c.Call(ctx, RouteListGalleryImageVersions, nil, &out, gallery, image)
}

// CreateGalleryImageVersion makes a version of a definition from an image,
// a snapshot or a disk.
func (c *Client) CreateGalleryImageVersion(ctx context.Context, gallery, image string, r CreateGalleryImageVersionRequest) (*GalleryImageVersion, error) {
	return one[GalleryImageVersion](c, ctx, RouteCreateGalleryImageVersion, r, gallery, image)
}

// ShowGalleryImageVersion returns one version.
func (c *Client) ShowGalleryImageVersion(ctx context.Context, gallery, image, name string) (*GalleryImageVersion, error) {
	return one[GalleryImageVersion](c, ctx, RouteShowGalleryImageVersion, nil, gallery, image, name)
}

// DeleteGalleryImageVersion destroys a version.
func (c *Client) DeleteGalleryImageVersion(ctx context.Context, gallery, image, name string) error {
	return c.Call(ctx, RouteDeleteGalleryImageVersion, nil, nil, gallery, image, name)
}
