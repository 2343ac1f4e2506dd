package disk

// ObjectBytes is the most bytes one chunk object of this disk can hold: a
// byte-for-byte copy of the disk's objects (a snapshot) reads this far,
// and everything past it reads as zeros.
func (d *Disk) ObjectBytes() int64 {
	return d.lay.objectBytes()
}
