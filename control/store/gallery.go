package store

import "time"

// Gallery is an image gallery: a container of image definitions.
type Gallery struct {
	Name string `json:"name"`
	Located
	Description string    `json:"description,omitempty"`
	TimeCreated time.Time `json:"timeCreated"`
}

// GalleryImage is an image definition of a gallery, kept under
// "GALLERY/NAME": what its versions are versions of.
type GalleryImage struct {
	Name    string `json:"name"`
	Gallery string `json:"gallery"`
	Located
	OsType      string    `json:"osType"`
	Publisher   string    `json:"publisher,omitempty"`
	Offer       string    `json:"offer,omitempty"`
	Sku         string    `json:"sku,omitempty"`
	TimeCreated time.Time `json:"timeCreated"`
}

// GalleryImageVersion is a version of an image definition, kept under
// "GALLERY/DEFINITION/NAME": like an Image, an independent encrypted copy
// of a disk, snapshot or image, under its own data key.
type GalleryImageVersion struct {
	Name       string `json:"name"`
	Gallery    string `json:"gallery"`
	Definition string `json:"definition"`
	UniqueID   string `json:"uniqueId"`
	Located
	SourceKind        string     `json:"sourceKind"`
	Source            string     `json:"source"`
	SourceResourceID  string     `json:"sourceResourceId"`
	DiskSizeBytes     int64      `json:"diskSizeBytes"`
	LogicalSectorSize int        `json:"logicalSectorSize"`
	Encryption        Encryption `json:"encryption"`
	KeyID             string     `json:"keyId"`
	TimeCreated       time.Time  `json:"timeCreated"`
	UsedBytes         int64      `json:"usedBytes"`
	StoragePrefix     string     `json:"storagePrefix"`
	ADE               bool       `json:"ade,omitempty"`
}
