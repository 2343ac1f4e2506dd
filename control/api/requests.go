package api

// CreateDiskRequest is the body of a disk creation.
type CreateDiskRequest struct {
	Name              string `json:"name"`
	SizeBytes         int64  `json:"sizeBytes"`
	Sku               string `json:"sku,omitempty"`
	LogicalSectorSize int    `json:"logicalSectorSize,omitempty"`
	EncryptionType    string `json:"encryptionType,omitempty"`
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
	// Source is a snapshot or image to copy; the new disk is independent
	// of it (its own data key). SizeBytes may then be 0 (the source's
	// size) or larger.
	Source        string `json:"source,omitempty"`
	Location      string `json:"location,omitempty"`
	Subscription  string `json:"subscription,omitempty"`
	ResourceGroup string `json:"resourceGroup,omitempty"`
	// ADE records that the disk uses guest-level disk encryption.
	ADE bool `json:"ade,omitempty"`
}

// UpdateDiskRequest changes a disk: its size (grow only), or its keys.
type UpdateDiskRequest struct {
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// EncryptionType and DiskEncryptionSet switch a disk between platform
	// and customer keys (re-wrapping its data key, not its data).
	EncryptionType    string `json:"encryptionType,omitempty"`
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
	// ADE true records that the disk uses guest-level disk encryption; the
	// record cannot be cleared.
	ADE *bool `json:"ade,omitempty"`
}

// ImportDiskRequest creates a disk from an image file on the host. The
// fields of CreateDiskRequest choose the new disk's name, sku, sector size
// and encryption as for an empty disk; its size comes from the image, so
// sizeBytes must be left out.
type ImportDiskRequest struct {
	CreateDiskRequest
	// Source is the absolute path of a raw or qcow2 image.
	Source string `json:"source"`
}

// ExportDiskRequest writes a disk's plaintext to a raw image file.
type ExportDiskRequest struct {
	// Target is the absolute path of the file to write.
	Target string `json:"target"`
	// Force replaces an existing file.
	Force bool `json:"force,omitempty"`
}

// MoveRequest moves a resource to another resource group, and optionally
// another subscription.
type MoveRequest struct {
	ResourceGroup string `json:"resourceGroup"`
	Subscription  string `json:"subscription,omitempty"`
}

// CreateVMRequest is the body of a VM creation.
type CreateVMRequest struct {
	Name             string         `json:"name"`
	OsDisk           string         `json:"osDisk,omitempty"`
	OsDiskSizeBytes  int64          `json:"osDiskSizeBytes,omitempty"`
	OsDiskCaching    string         `json:"osDiskCaching,omitempty"`
	DataDisks        []AttachedDisk `json:"dataDisks,omitempty"`
	TempDiskSize     int64          `json:"tempDiskSizeBytes,omitempty"`
	EncryptionAtHost *bool          `json:"encryptionAtHost,omitempty"`
	Location         string         `json:"location,omitempty"`
	Subscription     string         `json:"subscription,omitempty"`
	ResourceGroup    string         `json:"resourceGroup,omitempty"`
	// ADE records that the VM uses guest-level disk encryption.
	ADE bool `json:"ade,omitempty"`
}

// UpdateVMRequest changes a deallocated VM's host-side settings. Absent
// fields stay as they are.
type UpdateVMRequest struct {
	EncryptionAtHost *bool `json:"encryptionAtHost,omitempty"`
	// OsDiskCaching is the OS disk's new host caching mode.
	OsDiskCaching string `json:"osDiskCaching,omitempty"`
	// DataDiskCaching maps a data disk's name to its new caching mode.
	DataDiskCaching map[string]string `json:"dataDiskCaching,omitempty"`
	// ADE true records that the VM uses guest-level disk encryption; the
	// record cannot be cleared.
	ADE *bool `json:"ade,omitempty"`
}

// AttachRequest attaches a disk to a VM.
type AttachRequest struct {
	Disk    string `json:"disk"`
	Lun     *int   `json:"lun,omitempty"`
	Caching string `json:"caching,omitempty"`
}

// CreateDESRequest is the body of a disk encryption set creation.
type CreateDESRequest struct {
	Name                  string `json:"name"`
	KeyURL                string `json:"keyUrl"`
	EncryptionType        string `json:"encryptionType,omitempty"`
	EnableAutoKeyRotation bool   `json:"enableAutoKeyRotation,omitempty"`
	Location              string `json:"location,omitempty"`
	Subscription          string `json:"subscription,omitempty"`
	ResourceGroup         string `json:"resourceGroup,omitempty"`
	// UserAssignedIdentity gives the set a user-assigned identity (its
	// name or resource id), which it then uses its key as.
	UserAssignedIdentity string `json:"userAssignedIdentity,omitempty"`
	// SystemAssignedIdentity false creates the set without a
	// system-assigned identity (it then needs a user-assigned one); nil
	// or true creates one.
	SystemAssignedIdentity *bool `json:"systemAssignedIdentity,omitempty"`
}

// UpdateDESRequest changes a disk encryption set's key, its rotation
// setting or its identities. Absent fields stay as they are.
type UpdateDESRequest struct {
	KeyURL                string `json:"keyUrl,omitempty"`
	EnableAutoKeyRotation *bool  `json:"enableAutoKeyRotation,omitempty"`
	// UserAssignedIdentity gives the set this user-assigned identity (name
	// or resource id) instead of the one it has; "" takes it away.
	UserAssignedIdentity *string `json:"userAssignedIdentity,omitempty"`
	// SystemAssignedIdentity true gives the set a system-assigned identity
	// if it has none; false deletes the one it has.
	SystemAssignedIdentity *bool `json:"systemAssignedIdentity,omitempty"`
}

// CreateSnapshotRequest is the body of a snapshot creation.
type CreateSnapshotRequest struct {
	Name        string `json:"name"`
	Source      string `json:"source"`
	Incremental bool   `json:"incremental,omitempty"`
	// DiskEncryptionSet wraps the snapshot's key with another set's key.
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
}

// UpdateSnapshotRequest switches a snapshot between platform and customer
// keys (its data key is re-wrapped, its data untouched).
type UpdateSnapshotRequest struct {
	EncryptionType    string `json:"encryptionType,omitempty"`
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
}

// CreateImageRequest is the body of an image creation.
type CreateImageRequest struct {
	Name string `json:"name"`
	// Source is a disk or a snapshot name; a disk of a running VM is
	// refused (take a snapshot of it and make the image from that).
	Source            string `json:"source"`
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
}

// GCRequest is the body of POST /host/gc.
type GCRequest struct {
	// DryRun lists what would be removed and removes nothing.
	DryRun bool `json:"dryRun,omitempty"`
}
