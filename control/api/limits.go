package api

// Size limits of a disk. They are Azure's for a managed disk: 32,767 GiB
// for Standard_LRS, StandardSSD_LRS and Premium_LRS, 65,536 GiB for
// UltraSSD_LRS and PremiumV2_LRS. A size above them is refused before
// anything changes: at the CLI, at the API, and at start for a record or a
// meta.json that names one. They bound what a disk costs the host (its
// metadata, chunk table and host cache) to what a real cloud disk can be,
// and keep every size far from int64 overflow.
const (
	// MaxDiskBytes is the largest Standard_LRS, StandardSSD_LRS or
	// Premium_LRS disk: 32,767 GiB.
	MaxDiskBytes int64 = 32767 << 30
	// MaxUltraDiskBytes is the largest UltraSSD_LRS or PremiumV2_LRS disk:
	// 65,536 GiB (64 TiB).
	MaxUltraDiskBytes int64 = 65536 << 30
	// MaxTempDiskBytes is the largest temp disk. Azure's temp disks are
	// fixed by the VM size and far smaller; the bound is that of a
	// standard managed disk.
	MaxTempDiskBytes = MaxDiskBytes
	// MinDiskBytes is the smallest disk of any kind: 1 MiB.
	MinDiskBytes int64 = 1 << 20
	// MaxDataDisks is how many data disks a VM has at most (LUNs 0 to 63).
	MaxDataDisks = 64
)

// IsUltraOrV2 tells the skus with their own rules: UltraSSD_LRS and
// PremiumV2_LRS.
func IsUltraOrV2(sku string) bool { return sku == "UltraSSD_LRS" || sku == "PremiumV2_LRS" }

// MaxSizeOf returns the largest disk of a sku; an unknown sku gets the
// smaller bound.
func MaxSizeOf(sku string) int64 {
	if IsUltraOrV2(sku) {
		return MaxUltraDiskBytes
	}
	return MaxDiskBytes
}
