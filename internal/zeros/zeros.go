// Package zeros tells whether a buffer holds only zero bytes: what the copy
// and discard paths use to keep holes as holes.
package zeros

// Is reports whether every byte of b is zero. It tests eight bytes at a
// time.
func Is(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
