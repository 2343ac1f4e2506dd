package api

import "time"

// Gallery is an image gallery: a container of image definitions and their
// versions.
type Gallery struct {
	Name          string    `json:"name"`
	ID            string    `json:"id"`
	Location      string    `json:"location"`
	Subscription  string    `json:"subscription"`
	ResourceGroup string    `json:"resourceGroup"`
	Description   string    `json:"description,omitempty"`
	TimeCreated   time.Time `json:"timeCreated"`
	// ImageDefinitions names the gallery's image definitions.
	ImageDefinitions []string `json:"imageDefinitions"`
}

// GalleryImage is an image definition of a gallery.
type GalleryImage struct {
	Name          string    `json:"name"`
	Gallery       string    `json:"gallery"`
	ID            string    `json:"id"`
	Location      string    `json:"location"`
	Subscription  string    `json:"subscription"`
	ResourceGroup string    `json:"resourceGroup"`
	OsType        string    `json:"osType"`
	Publisher     string    `json:"publisher,omitempty"`
	Offer         string    `json:"offer,omitempty"`
	Sku           string    `json:"sku,omitempty"`
	TimeCreated   time.Time `json:"timeCreated"`
	// Versions names the definition's versions.
	Versions []string `json:"versions"`
}

// GalleryImageVersion is a version of an image definition: like an Image,
// an independent encrypted copy of a disk, snapshot or image, under its own
// data key. Path ("GALLERY/DEFINITION/VERSION") or ID names it as the
// source of a disk.
type GalleryImageVersion struct {
	Name              string     `json:"name"`
	Gallery           string     `json:"gallery"`
	Definition        string     `json:"definition"`
	Path              string     `json:"path"`
	UniqueID          string     `json:"uniqueId"`
	ID                string     `json:"id"`
	Location          string     `json:"location"`
	Subscription      string     `json:"subscription"`
	ResourceGroup     string     `json:"resourceGroup"`
	SourceKind        string     `json:"sourceKind"` // "disk", "snapshot" or "image"
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

// OS types of an image definition.
const (
	OsLinux   = "Linux"
	OsWindows = "Windows"
)

// CreateGalleryRequest is the body of a gallery's creation.
type CreateGalleryRequest struct {
	Name          string `json:"name"`
	Description   string `json:"description,omitempty"`
	Location      string `json:"location,omitempty"`
	Subscription  string `json:"subscription,omitempty"`
	ResourceGroup string `json:"resourceGroup,omitempty"`
}

// CreateGalleryImageRequest is the body of an image definition's creation.
type CreateGalleryImageRequest struct {
	Name      string `json:"name"`
	OsType    string `json:"osType,omitempty"`
	Publisher string `json:"publisher,omitempty"`
	Offer     string `json:"offer,omitempty"`
	Sku       string `json:"sku,omitempty"`
}

// CreateGalleryImageVersionRequest is the body of a version's creation.
type CreateGalleryImageVersionRequest struct {
	// Name is MAJOR.MINOR.PATCH.
	Name string `json:"name"`
	// Source is an image, a snapshot or a disk that is not in use, by name
	// or resource id.
	Source string `json:"source"`
	// DiskEncryptionSet encrypts the version under the set's key; without
	// it, a platform key.
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
}
