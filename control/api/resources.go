package api

import "time"

// Encryption types of a disk, as Azure names them.
const (
	EncPlatformKey            = "EncryptionAtRestWithPlatformKey"
	EncCustomerKey            = "EncryptionAtRestWithCustomerKey"
	EncPlatformAndCustomerKey = "EncryptionAtRestWithPlatformAndCustomerKeys"
)

// Disk states.
const (
	DiskUnattached = "Unattached"
	DiskAttached   = "Attached"
	DiskReserved   = "Reserved"
	// DiskActiveUpload is a disk being imported from an image file.
	DiskActiveUpload = "ActiveUpload"
	// DiskActiveSAS is a disk being exported to an image file.
	DiskActiveSAS = "ActiveSAS"
)

// VM power states.
const (
	PowerRunning     = "running"
	PowerStopped     = "stopped"
	PowerDeallocated = "deallocated"
	// PowerFailed is a VM that was meant to run but could not start at the
	// last start of the host; PowerStateReason says why. vm start tries
	// again, and so does the next start of the host.
	PowerFailed = "failed"
)

// Caching modes of a disk attached to a VM.
const (
	CacheNone      = "None"
	CacheReadOnly  = "ReadOnly"
	CacheReadWrite = "ReadWrite"
)

// Defaults of a request that leaves them out. The daemon applies them; the
// CLI shows them in its flags' help.
const (
	// DefaultSku is the sku of a disk created without one (an OS disk made
	// by vm create, too).
	DefaultSku = "Premium_LRS"
	// DefaultOsDiskCaching is an OS disk's host caching.
	DefaultOsDiskCaching = CacheReadWrite
	// DefaultDataDiskCaching is a data disk's host caching.
	DefaultDataDiskCaching = CacheNone
	// DefaultSectorSize is a new disk's logical sector size.
	DefaultSectorSize = 512
	// DefaultSubscription and DefaultResourceGroup place a resource
	// created without them.
	DefaultSubscription  = "00000000-0000-0000-0000-000000000000"
	DefaultResourceGroup = "hostcrypt"
)

// Skus a managed disk may have.
var Skus = []string{"Standard_LRS", "StandardSSD_LRS", "Premium_LRS", "PremiumV2_LRS", "UltraSSD_LRS"}

// Disk is a managed disk.
type Disk struct {
	Name              string     `json:"name"`
	ID                string     `json:"id"`
	UniqueID          string     `json:"uniqueId"`
	Location          string     `json:"location"`
	Subscription      string     `json:"subscription"`
	ResourceGroup     string     `json:"resourceGroup"`
	Sku               Sku        `json:"sku"`
	DiskSizeBytes     int64      `json:"diskSizeBytes"`
	DiskSizeGB        int64      `json:"diskSizeGB"`
	LogicalSectorSize int        `json:"logicalSectorSize"`
	Encryption        Encryption `json:"encryption"`
	DiskState         string     `json:"diskState"`
	ManagedBy         string     `json:"managedBy,omitempty"`
	TimeCreated       time.Time  `json:"timeCreated"`
	// KeyID is the key (with version) that wraps the disk's data key now.
	KeyID string `json:"keyId"`
	// IntegrityErrors counts blocks that failed authentication, over the
	// disk's life.
	IntegrityErrors uint64 `json:"integrityErrors"`
	// Fenced says why the open disk refuses writes and flushes (a sync of
	// its storage failed); empty while it does not.
	Fenced string `json:"fenced,omitempty"`
	// ADE records that the disk has used guest-level disk encryption; once
	// set it stays.
	ADE bool `json:"ade"`
	// StoragePrefix is where the disk lives in the storage backend.
	StoragePrefix string `json:"storagePrefix"`
	// Conversion is set while the disk's data is re-encrypted into another
	// layout (turning double encryption on).
	Conversion *Conversion `json:"conversion,omitempty"`
	// Transfer is set while the disk is imported from or exported to a file.
	Transfer *Transfer `json:"transfer,omitempty"`
	// FailureReason says why the disk cannot be used (its meta.json is
	// missing, damaged or of an impossible size, or its record is); set at
	// start, cleared once a check finds it usable again.
	FailureReason string `json:"failureReason,omitempty"`
}

// Conversion is the progress of re-encrypting a disk; an interrupted
// conversion resumes where it stopped.
type Conversion struct {
	TargetEncryptionType string    `json:"targetEncryptionType"`
	TargetPrefix         string    `json:"targetPrefix"`
	NextChunk            int64     `json:"nextChunk"`
	TotalChunks          int64     `json:"totalChunks"`
	Started              time.Time `json:"started"`
	Error                string    `json:"error,omitempty"`
}

// Transfer kinds.
const (
	TransferImport = "import"
	TransferExport = "export"
)

// Transfer is an import or export in progress.
type Transfer struct {
	Kind    string    `json:"kind"`
	Path    string    `json:"path"`
	Started time.Time `json:"started"`
}

// Sku is a disk's performance tier.
type Sku struct {
	Name string `json:"name"`
}

// Encryption says how a disk's data is encrypted at rest.
type Encryption struct {
	Type                string `json:"type"`
	DiskEncryptionSetID string `json:"diskEncryptionSetId,omitempty"`
}

// VM is a virtual machine.
type VM struct {
	Name             string `json:"name"`
	ID               string `json:"id"`
	Location         string `json:"location"`
	Subscription     string `json:"subscription"`
	ResourceGroup    string `json:"resourceGroup"`
	PowerState       string `json:"powerState"`
	PowerStateReason string `json:"powerStateReason,omitempty"`
	// Host is the host that runs the VM, on a store that several hosts
	// share.
	Host string `json:"host,omitempty"`
	// KeyWarning says that the key store could not be asked about the VM's
	// customer keys at the last check; it is not a revocation.
	KeyWarning        string          `json:"keyWarning,omitempty"`
	SecurityProfile   SecurityProfile `json:"securityProfile"`
	StorageProfile    StorageProfile  `json:"storageProfile"`
	TempDiskSizeBytes int64           `json:"tempDiskSizeBytes"`
	TimeCreated       time.Time       `json:"timeCreated"`
	// Images lists the files the VM's disks appear as in the mount while it
	// runs.
	Images []string `json:"images,omitempty"`
	// IntegrityErrors counts blocks of the VM's disks (temp disk included)
	// that failed authentication.
	IntegrityErrors uint64 `json:"integrityErrors"`
	// ADE records that the VM has used guest-level disk encryption; once
	// set it stays.
	ADE bool `json:"ade"`
}

// SecurityProfile holds a VM's host-side encryption setting.
type SecurityProfile struct {
	EncryptionAtHost bool `json:"encryptionAtHost"`
}

// StorageProfile lists a VM's disks.
type StorageProfile struct {
	OsDisk    AttachedDisk   `json:"osDisk"`
	DataDisks []AttachedDisk `json:"dataDisks"`
}

// AttachedDisk is a disk as seen from the VM it is attached to.
type AttachedDisk struct {
	Name    string `json:"name"`
	Lun     *int   `json:"lun,omitempty"`
	Caching string `json:"caching"`
}

// Identity types of a disk encryption set, as Azure names them.
const (
	IdentitySystemAssigned = "SystemAssigned"
	IdentityUserAssigned   = "UserAssigned"
	IdentityBoth           = "SystemAssigned, UserAssigned"
)

// Identity is the identities of a disk encryption set, as Azure shows
// them: the system-assigned one (PrincipalID, TenantID; empty without one)
// and the user-assigned ones by resource id.
type Identity struct {
	Type                   string                               `json:"type"`
	PrincipalID            string                               `json:"principalId,omitempty"`
	TenantID               string                               `json:"tenantId,omitempty"`
	UserAssignedIdentities map[string]UserAssignedIdentityValue `json:"userAssignedIdentities,omitempty"`
}

// UserAssignedIdentityValue is a user-assigned identity of a set.
type UserAssignedIdentityValue struct {
	PrincipalID string `json:"principalId"`
	ClientID    string `json:"clientId"`
}

// KeyAccessIdentity is the identity a set uses its key as: its
// user-assigned identity when it has one, else its system-assigned one.
// Access policies must grant this principal; the key store's audit log
// names it.
type KeyAccessIdentity struct {
	Type string `json:"type"` // SystemAssigned or UserAssigned
	// UserAssignedIdentity is the resource id of the user-assigned one.
	UserAssignedIdentity string `json:"userAssignedIdentity,omitempty"`
	PrincipalID          string `json:"principalId"`
	TenantID             string `json:"tenantId"`
}

// KeyForDES names a key version in a vault.
type KeyForDES struct {
	SourceVault SourceVault `json:"sourceVault"`
	KeyURL      string      `json:"keyUrl"`
}

// SourceVault names a vault.
type SourceVault struct {
	ID string `json:"id"`
}

// DiskEncryptionSet points disks at a customer-managed key and owns the
// identity that uses it.
type DiskEncryptionSet struct {
	Name                              string      `json:"name"`
	ID                                string      `json:"id"`
	Location                          string      `json:"location"`
	Subscription                      string      `json:"subscription"`
	ResourceGroup                     string      `json:"resourceGroup"`
	EncryptionType                    string      `json:"encryptionType"`
	ActiveKey                         KeyForDES   `json:"activeKey"`
	PreviousKeys                      []KeyForDES `json:"previousKeys"`
	RotationToLatestKeyVersionEnabled bool        `json:"rotationToLatestKeyVersionEnabled"`
	LastKeyRotationTimestamp          *time.Time  `json:"lastKeyRotationTimestamp,omitempty"`
	AutoKeyRotationError              string      `json:"autoKeyRotationError,omitempty"`
	// LastKeyVersionCheck is when auto-rotation last looked for a new
	// version of the key, and LastKeyVersionFound the version it found.
	LastKeyVersionCheck *time.Time `json:"lastKeyVersionCheck,omitempty"`
	LastKeyVersionFound string     `json:"lastKeyVersionFound,omitempty"`
	// NextKeyVersionCheck is when it looks next, while auto-rotation is on;
	// computed by show.
	NextKeyVersionCheck *time.Time `json:"nextKeyVersionCheck,omitempty"`
	Identity            Identity   `json:"identity"`
	// KeyAccessIdentity is which of the set's identities uses its key.
	KeyAccessIdentity KeyAccessIdentity `json:"keyAccessIdentity"`
	// KeyAccess says whether the identity can use the active key right now
	// ("ok", or why not and what to do); show and list check it.
	KeyAccess string `json:"keyAccess,omitempty"`
}

// Snapshot is a point-in-time copy of a disk: the same volume and data key,
// with its own wrap of the data key. An incremental snapshot stores only
// the chunks that differ from the previous incremental snapshot of the same
// disk.
type Snapshot struct {
	Name              string     `json:"name"`
	UniqueID          string     `json:"uniqueId"`
	ID                string     `json:"id"`
	Location          string     `json:"location"`
	Subscription      string     `json:"subscription"`
	ResourceGroup     string     `json:"resourceGroup"`
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

// Image is a disk image to create disks from: an independent encrypted copy
// of a disk or snapshot, with its own data key and volume identity.
type Image struct {
	Name              string     `json:"name"`
	UniqueID          string     `json:"uniqueId"`
	ID                string     `json:"id"`
	Location          string     `json:"location"`
	Subscription      string     `json:"subscription"`
	ResourceGroup     string     `json:"resourceGroup"`
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

// CopyProgress is how far a long copy has got, in bytes.
type CopyProgress struct {
	Operation string `json:"operation"`
	Done      int64  `json:"done"`
	Total     int64  `json:"total"`
}

// Progress is how far a transfer (import or export) is, in bytes of the
// image; Data counts the bytes of data copied so far.
type Progress struct {
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
	Data  int64 `json:"data"`
}

// TransferEvent is one line of a transfer's streamed answer: progress
// lines, then a last line holding the disk or the error.
type TransferEvent struct {
	Progress *Progress `json:"progress,omitempty"`
	Disk     *Disk     `json:"disk,omitempty"`
	Error    *Error    `json:"error,omitempty"`
}

// EncryptionReport says, for every place a VM's data lives, whether and how
// it is encrypted there.
type EncryptionReport struct {
	VM               string `json:"vm"`
	PowerState       string `json:"powerState"`
	EncryptionAtHost bool   `json:"encryptionAtHost"`
	// Warning is set when something on the host holds plaintext.
	Warning string        `json:"warning,omitempty"`
	Entries []ReportEntry `json:"entries"`
}

// ReportEntry is one layer of one disk.
type ReportEntry struct {
	Disk string `json:"disk"` // disk resource name, or "(temp)"
	// Image is the file the disk appears as while the VM runs.
	Image string `json:"image"`
	// Layer is "storage layer 1", "storage layer 2", "host cache" or
	// "temp disk".
	Layer string `json:"layer"`
	// Location is where the bytes are, as "storage: KEY" under the
	// storage root or "host: PATH" under the host directory; empty when
	// nothing is kept (a disk without a host cache).
	Location  string `json:"location"`
	Encrypted bool   `json:"encrypted"`
	// EncryptedBy is "host" when the bytes leave the host already
	// encrypted, "storage" when only the storage side encrypts them.
	EncryptedBy string `json:"encryptedBy,omitempty"`
	Algorithm   string `json:"algorithm,omitempty"`
	// Key is the key id with its version that wraps the layer's key, or
	// "platform" for a platform-managed key.
	Key        string `json:"key,omitempty"`
	KeyID      string `json:"keyId,omitempty"`
	Caching    string `json:"caching,omitempty"`
	DirtyBytes int64  `json:"dirtyBytes"`
	// Open says whether the layer is in use now (the VM runs).
	Open bool `json:"open"`
}

// Where a leftover is.
const (
	WhereStorage = "storage"    // the storage backend (--storage)
	WhereHost    = "host"       // the host-local backend (--host-dir): temp disks
	WhereCache   = "host-cache" // a host cache directory (--host-dir/cache)
)

// Leftover is something storage or the host directory holds that no record
// owns; host gc removes it.
type Leftover struct {
	Where string `json:"where"`
	// Path is a storage prefix, or a cache directory's name.
	Path string `json:"path"`
	// Reason says why it is a leftover: the creation it was for, a
	// deletion not finished, or that no record owns it.
	Reason string `json:"reason"`
	// UsedBytes is the space it takes, as the backend reports it.
	UsedBytes int64 `json:"usedBytes"`
	// Removed is set by a gc that is not a dry run once it is gone; Error
	// says why it could not be removed.
	Removed bool   `json:"removed"`
	Error   string `json:"error,omitempty"`
}

// GCReport is what host gc found and did.
type GCReport struct {
	DryRun    bool       `json:"dryRun"`
	Leftovers []Leftover `json:"leftovers"`
}

// States of a host (HostInfo.State).
const (
	// HostAlive: the host holds its registration lock; the store's
	// servers see its lease running.
	HostAlive = "alive"
	// HostLost: nobody holds the host's lock: the host stopped, died or
	// lost its way to the store for longer than its lease.
	HostLost = "lost"
	// HostFenced: a lost host whose VMs another host took over, fencing
	// its clients (blocklisted on the store) first.
	HostFenced = "fenced"
)

// HostInfo is a host that uses the store, as hostcrypt host list shows it.
type HostInfo struct {
	Name  string `json:"name"`
	State string `json:"state"`
	// This is the host that answered.
	This bool `json:"this"`
	// VMs are the VMs the records say run on the host.
	VMs []string `json:"vms"`
}
