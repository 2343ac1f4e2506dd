package control

import (
	"strings"
	"time"
)

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
)

// VM power states.
const (
	PowerRunning     = "running"
	PowerStopped     = "stopped"
	PowerDeallocated = "deallocated"
)

// Caching modes of a disk attached to a VM.
const (
	CacheNone      = "None"
	CacheReadOnly  = "ReadOnly"
	CacheReadWrite = "ReadWrite"
)

// DefaultSku is the sku of a disk created without one (an OS disk made by
// vm create, too).
const DefaultSku = "Premium_LRS"

// Skus a managed disk may have.
var diskSkus = []string{"Standard_LRS", "StandardSSD_LRS", "Premium_LRS", "PremiumV2_LRS", "UltraSSD_LRS"}

// Disk is a managed disk as the API shows it.
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
	// set it stays (see restrict.go).
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
	// start, cleared once a check finds it usable again (see recover.go).
	FailureReason string `json:"failureReason,omitempty"`
}

// Conversion is the progress of re-encrypting a disk. It is persisted after
// every chunk, so an interrupted conversion resumes where it stopped.
type Conversion struct {
	TargetEncryptionType string    `json:"targetEncryptionType"`
	TargetPrefix         string    `json:"targetPrefix"`
	NextChunk            int64     `json:"nextChunk"`
	TotalChunks          int64     `json:"totalChunks"`
	Started              time.Time `json:"started"`
	Error                string    `json:"error,omitempty"`
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

// VM is a virtual machine as the API shows it.
type VM struct {
	Name             string `json:"name"`
	ID               string `json:"id"`
	Location         string `json:"location"`
	Subscription     string `json:"subscription"`
	ResourceGroup    string `json:"resourceGroup"`
	PowerState       string `json:"powerState"`
	PowerStateReason string `json:"powerStateReason,omitempty"`
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
	// set it stays (see restrict.go).
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

// checkName enforces Azure's rules for a managed resource's name, kept to what
// is also safe as a file name in the mount: 1-80 of letters, digits, '_', '-'
// and '.', starting with a letter or digit, not ending with '.'.
func checkName(kind, name string) error {
	if name == "" {
		return badRequest("a %s needs a name (--name)", kind)
	}
	if len(name) > 80 {
		return badRequest("%s name %q is longer than 80 characters", kind, name)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || (i > 0 && strings.ContainsRune("_-.", r))
		if !ok {
			return badRequest("%s name %q: use letters, digits, '_', '-' and '.', starting with a letter or digit", kind, name)
		}
	}
	if strings.HasSuffix(name, ".") {
		return badRequest("%s name %q must not end with '.'", kind, name)
	}
	return nil
}

func checkCaching(mode string) error {
	switch mode {
	case CacheNone, CacheReadOnly, CacheReadWrite:
		return nil
	}
	return badRequest("caching mode %q: use None, ReadOnly or ReadWrite", mode)
}

func checkSku(sku string) error {
	for _, s := range diskSkus {
		if s == sku {
			return nil
		}
	}
	return badRequest("sku %q: use one of %s", sku, strings.Join(diskSkus, ", "))
}
