package control

// Size limits of a disk. They are Azure's for a managed disk: 32,767 GiB
// for Standard_LRS, StandardSSD_LRS and Premium_LRS, 65,536 GiB for
// UltraSSD_LRS and PremiumV2_LRS. A size above them is refused before
// anything changes: at the CLI, at the API, and at start for a record or a
// meta.json that names one. They bound what a disk costs the host (its
// metadata, chunk table and host cache) to what a real cloud disk can be,
// and keep every size far from int64 overflow. This file depends on nothing,
// so that it can move with the API types.
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
)

// MaxSizeOf returns the largest disk of a sku; an unknown sku gets the
// smaller bound.
func MaxSizeOf(sku string) int64 {
	if isUltraOrV2(sku) {
		return MaxUltraDiskBytes
	}
	return MaxDiskBytes
}

// checkDiskSize refuses a disk size outside [MinDiskBytes, max of the sku]
// or not a multiple of the sector size. field names what the client sent
// (sizeBytes, osDiskSizeBytes...).
func checkDiskSize(field string, size int64, sector int, sku string) error {
	if size < MinDiskBytes {
		return badRequest("%s %d bytes: a disk is at least %d bytes (1 MiB)", field, size, MinDiskBytes)
	}
	if maxb := MaxSizeOf(sku); size > maxb {
		return badRequest("%s %d bytes is above the largest %s disk, %d bytes (%d GiB)", field, size, sku, maxb, maxb>>30)
	}
	if sector > 0 && size%int64(sector) != 0 {
		return badRequest("%s %d bytes is not a multiple of the %d-byte sector size", field, size, sector)
	}
	return nil
}

// checkTempSize refuses a temp disk size out of bounds.
func checkTempSize(field string, size int64) error {
	if size < MinDiskBytes || size > MaxTempDiskBytes || size%512 != 0 {
		return badRequest("%s %d bytes: a temp disk is %d bytes (1 MiB) to %d bytes (%d GiB), a multiple of 512", field, size, MinDiskBytes, MaxTempDiskBytes, MaxTempDiskBytes>>30)
	}
	return nil
}
