package cli

import (
	"fmt"

	"hostcrypt/control/api"
	"hostcrypt/internal/units"
)

// sizeValue is a size in bytes written with binary units: 512M is 512 MiB,
// 8G is 8 GiB; K, M, G, T (optionally followed by "i" or "iB") or plain
// bytes. Decimal units (GB...) are refused: see units.ParseSize.
type sizeValue struct{ v int64 }

func (s *sizeValue) String() string {
	if s.v == 0 {
		return ""
	}
	return formatSize(s.v)
}

func (s *sizeValue) Set(str string) error {
	n, err := units.ParseSize(str)
	if err != nil {
		return err
	}
	s.v = n
	return nil
}

func (s *sizeValue) Type() string { return "size" }

func (f *flags) size(name, usage string) *sizeValue {
	v := &sizeValue{}
	f.Var(v, name, usage)
	return v
}

func parseSize(s string) (int64, error) { return units.ParseSize(s) }

func formatSize(n int64) string { return units.FormatSize(n) }

// checkDiskSize refuses, before anything is sent, a disk size the host
// would refuse: below 1 MiB, not a multiple of the sector size (when known,
// sector > 0), or above the largest disk of the sku (when known; the
// largest of any sku otherwise, and the host checks the disk's own).
func checkDiskSize(flag string, n int64, sector int, sku string) error {
	maxb := api.MaxUltraDiskBytes
	if sku != "" {
		maxb = api.MaxSizeOf(sku)
	}
	what := "disk"
	if sku != "" {
		what = sku + " disk"
	}
	switch {
	case n < api.MinDiskBytes:
		return fmt.Errorf("--%s %s: the smallest disk is 1M (1 MiB, %d bytes)", flag, sizeArg(n), api.MinDiskBytes)
	case n > maxb:
		return fmt.Errorf("--%s %s: the largest %s is %s (%d GiB)", flag, sizeArg(n), what, formatSize(maxb), maxb>>30)
	case sector > 0 && n%int64(sector) != 0:
		return fmt.Errorf("--%s %s: the size of a disk with %d-byte sectors is a multiple of %d bytes", flag, sizeArg(n), sector, sector)
	}
	return nil
}

// checkTempSize is checkDiskSize for a temp disk.
func checkTempSize(flag string, n int64) error {
	switch {
	case n < api.MinDiskBytes:
		return fmt.Errorf("--%s %s: the smallest temp disk is 1M (1 MiB, %d bytes)", flag, sizeArg(n), api.MinDiskBytes)
	case n > api.MaxTempDiskBytes:
		return fmt.Errorf("--%s %s: the largest temp disk is %s (%d GiB)", flag, sizeArg(n), formatSize(api.MaxTempDiskBytes), api.MaxTempDiskBytes>>30)
	case n%512 != 0:
		return fmt.Errorf("--%s %s: the size of a temp disk is a multiple of 512 bytes", flag, sizeArg(n))
	}
	return nil
}

// sizeArg writes a size as the user may have: with its unit, or in bytes.
func sizeArg(n int64) string {
	if s := formatSize(n); s != fmt.Sprint(n) {
		return s
	}
	return fmt.Sprintf("%d (bytes)", n)
}
