// Package units reads and writes sizes in binary units: 512M is 512 MiB,
// 8G is 8 GiB.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize reads a size: a whole number of bytes, optionally followed by a
// binary unit K, M, G or T, written alone or as Ki/KiB, Mi/MiB and so on (in
// either case), or by B for plain bytes. 1G is 2^30 bytes.
//
// Decimal units (KB, MB, GB, TB) are refused rather than read as binary:
// tools disagree on them (truncate and dd read 1GB as 10^9 bytes, fio as
// 2^30), and a disk 7 % off the size meant is a silent mistake. The error
// says what to write instead. A size that does not fit in 63 bits is an
// error, never a wrapped-around number.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return r < '0' || r > '9' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], t[i:]
	if num == "" || strings.ContainsAny(unit, "0123456789.,-+ ") {
		return 0, fmt.Errorf("size %q: use a whole number with a binary unit, e.g. 512M (MiB) or 8G (GiB)", s)
	}
	shift := 0
	switch u := strings.ToUpper(unit); u {
	case "", "B":
	case "K", "KI", "KIB":
		shift = 10
	case "M", "MI", "MIB":
		shift = 20
	case "G", "GI", "GIB":
		shift = 30
	case "T", "TI", "TIB":
		shift = 40
	case "KB", "MB", "GB", "TB":
		bin := u[:1]
		return 0, fmt.Errorf("size %q: %s is ambiguous; write %s%s (or %s%siB) for binary units, or the number of bytes (sizes here are binary: 1G is 2^30 bytes)", s, unit, num, bin, num, bin)
	default:
		return 0, fmt.Errorf("size %q: unit %q is not known; use K, M, G or T (binary: 1G is 2^30 bytes), e.g. 512M or 8G", s, unit)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q is too large: it does not fit in 63 bits (8 EiB)", s)
	}
	return n << shift, nil
}

// FormatSize writes n with the largest binary unit that divides it.
func FormatSize(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{40, "T"}, {30, "G"}, {20, "M"}, {10, "K"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.name)
		}
	}
	return strconv.FormatInt(n, 10)
}
