package control

import "hostcrypt/control/api"

// The size bounds themselves are the API's (control/api/limits.go), so that
// a client checks them before it sends a request; these apply them.

// checkDiskSize refuses a disk size outside [MinDiskBytes, max of the sku]
// or not a multiple of the sector size. field names what the client sent
// (sizeBytes, osDiskSizeBytes...).
func checkDiskSize(field string, size int64, sector int, sku string) error {
	if size < api.MinDiskBytes {
		return badRequest("%s %d bytes: a disk is at least %d bytes (1 MiB)", field, size, api.MinDiskBytes)
	}
	if maxb := api.MaxSizeOf(sku); size > maxb {
		return badRequest("%s %d bytes is above the largest %s disk, %d bytes (%d GiB)", field, size, sku, maxb, maxb>>30)
	}
	if sector > 0 && size%int64(sector) != 0 {
		return badRequest("%s %d bytes is not a multiple of the %d-byte sector size", field, size, sector)
	}
	return nil
}

// checkTempSize refuses a temp disk size out of bounds.
func checkTempSize(field string, size int64) error {
	if size < api.MinDiskBytes || size > api.MaxTempDiskBytes || size%512 != 0 {
		return badRequest("%s %d bytes: a temp disk is %d bytes (1 MiB) to %d bytes (%d GiB), a multiple of 512", field, size, api.MinDiskBytes, api.MaxTempDiskBytes, api.MaxTempDiskBytes>>30)
	}
	return nil
}
