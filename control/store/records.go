package store

import "time"

// The records below are what the store keeps, and their JSON is the
// format of state.json: a field renamed here is a record lost on load. They
// are the control plane's own, not the API's (package control/api): a
// field the API shows may be computed (a running disk's counters), and a
// field kept here (a storage prefix, a conversion's next chunk) is there
// for the host's work.

// Placement is where a resource lives: subscription, resource group and
// location, from which its resource id is built.
type Placement struct {
	Subscription  string `json:"subscription"`
	ResourceGroup string `json:"resourceGroup"`
	Location      string `json:"location"`
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

// Disk is a managed disk.
type Disk struct {
	Name     string `json:"name"`
	ID       string `json:"id"`
	UniqueID string `json:"uniqueId"`
	Placement
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
	// IntegrityErrors counts the blocks that failed authentication while
	// the disk was open, up to its last close.
	IntegrityErrors uint64 `json:"integrityErrors"`
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
	// FailureReason says why the disk cannot be used; set at start,
	// cleared once a check finds it usable again.
	FailureReason string `json:"failureReason,omitempty"`
}

// Conversion is the progress of re-encrypting a disk, saved every few
// chunks, so an interrupted conversion resumes where it stopped.
type Conversion struct {
	TargetEncryptionType string    `json:"targetEncryptionType"`
	TargetPrefix         string    `json:"targetPrefix"`
	NextChunk            int64     `json:"nextChunk"`
	TotalChunks          int64     `json:"totalChunks"`
	Started              time.Time `json:"started"`
	Error                string    `json:"error,omitempty"`
	// Host is the host that runs the conversion, on a store that several
	// hosts share (empty on a host's own store): only it resumes it.
	Host string `json:"host,omitempty"`
}

// Transfer is an import or export in progress. It is kept so that a
// transfer cut short by a crash is cleaned up at the next start, and it is
// what keeps the disk from being used meanwhile.
type Transfer struct {
	Kind    string    `json:"kind"`
	Path    string    `json:"path"`
	Started time.Time `json:"started"`
	// Host is the host whose file the transfer reads or writes, on a
	// store that several hosts share (empty on a host's own store): only
	// it cleans the transfer up.
	Host string `json:"host,omitempty"`
}

// VM is a virtual machine.
type VM struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	Placement
	PowerState       string `json:"powerState"`
	PowerStateReason string `json:"powerStateReason,omitempty"`
	// Host is the host that runs the VM (or last failed to), on a store
	// that several hosts share; empty on a host's own store and while
	// the VM is stopped or deallocated.
	Host string `json:"host,omitempty"`
	// KeyWarning says that the key store could not be asked about the VM's
	// customer keys at the last check.
	KeyWarning        string          `json:"keyWarning,omitempty"`
	SecurityProfile   SecurityProfile `json:"securityProfile"`
	StorageProfile    StorageProfile  `json:"storageProfile"`
	TempDiskSizeBytes int64           `json:"tempDiskSizeBytes"`
	TimeCreated       time.Time       `json:"timeCreated"`
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
	Name string `json:"name"`
	Lun  *int   `json:"lun,omitempty"`
	// Caching is empty in records older than host caching: no cache.
	Caching string `json:"caching"`
}

// DiskNames returns the names of the VM's disks, the OS disk first.
func (vm *VM) DiskNames() []string {
	names := []string{vm.StorageProfile.OsDisk.Name}
	for _, d := range vm.StorageProfile.DataDisks {
		names = append(names, d.Name)
	}
	return names
}

// Identity is the identities of a disk encryption set: its system-assigned
// one (PrincipalID, TenantID; empty without one) and the user-assigned one
// it was given. Type is "SystemAssigned", "UserAssigned" or
// "SystemAssigned, UserAssigned". The set reaches its key as the
// user-assigned identity when it has one, else as the system-assigned one.
type Identity struct {
	Type        string `json:"type"`
	PrincipalID string `json:"principalId"`
	TenantID    string `json:"tenantId"`
	// UserAssigned is the user-assigned identity the set was given.
	UserAssigned *UserAssignedRef `json:"userAssigned,omitempty"`
}

// UserAssignedRef names a user-assigned identity from a set: its name (the
// key of Records.Identities), resource id, and the ids it has in the key
// store, which never change.
type UserAssignedRef struct {
	Name        string `json:"name"`
	ID          string `json:"id"`
	PrincipalID string `json:"principalId"`
	ClientID    string `json:"clientId"`
	TenantID    string `json:"tenantId"`
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

// DES is a disk encryption set. Its identity's credential is a secret,
// kept apart from the records.
type DES struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	Placement
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
	Identity            Identity   `json:"identity"`
	// Rewrapping, on a store that several hosts share, names the host
	// re-wrapping the set's disks to its active key, so that no other
	// host re-wraps them too; it stands while that host is alive.
	Rewrapping *RewrapClaim `json:"rewrapping,omitempty"`
}

// RewrapClaim is a host's claim on re-wrapping a set's disks.
type RewrapClaim struct {
	Host  string    `json:"host"`
	Since time.Time `json:"since"`
}

// Located is where a snapshot or an image lives, with its resource id.
type Located struct {
	ID string `json:"id"`
	Placement
}

// Snapshot is a point-in-time copy of a disk (see control/snapshot.go).
type Snapshot struct {
	Name     string `json:"name"`
	UniqueID string `json:"uniqueId"`
	Located
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
	UsedBytes         int64      `json:"usedBytes"`
	ChunksCopied      int64      `json:"chunksCopied"`
	ChunksShared      int64      `json:"chunksShared"`
	FreezePauseMicros int64      `json:"freezePauseMicroseconds"`
	StoragePrefix     string     `json:"storagePrefix"`
	// ObjectBytes is how long a chunk object of the disk's layout can be.
	ObjectBytes int64 `json:"objectBytes"`
	ADE         bool  `json:"ade,omitempty"`
}

// Image is a disk image: an independent encrypted copy of a disk or
// snapshot.
type Image struct {
	Name     string `json:"name"`
	UniqueID string `json:"uniqueId"`
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

// Intent is a creation in progress, by storage prefix: recorded before its
// first object, dropped with the record of what it made. While it stands
// it also holds the new resource's name (Kind, Name), so that no other
// creation takes the name meanwhile. A crash leaves one behind; host gc
// removes its objects.
type Intent struct {
	// What names the creation, for the log: "disk d1".
	What  string    `json:"what"`
	Since time.Time `json:"since"`
	// Kind and Name are the resource the creation makes ("disk", "d1");
	// empty in intents that only guard objects.
	Kind string `json:"kind,omitempty"`
	Name string `json:"name,omitempty"`
	// Host is the host making it, on a store that several hosts share:
	// another host's creation in progress is no leftover.
	Host string `json:"host,omitempty"`
}

// Removal is a deletion whose objects are still to go, by storage prefix:
// recorded (with the resource's record gone) before the first object is
// touched, dropped once the last is removed.
type Removal struct {
	// What names the resource, for the log: "snapshot s1".
	What  string    `json:"what"`
	Since time.Time `json:"since"`
	// ObjectBytes is a snapshot's chunk object length: chunks that later
	// snapshots share are copied for them before the removal.
	ObjectBytes int64 `json:"objectBytes,omitempty"`
}
