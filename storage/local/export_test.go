package local

// OpenWalking is Open on a kernel without openat2: names are resolved one
// segment at a time.
func OpenWalking(dir string) (*Backend, error) { return open(dir, true) }

// Walking tells whether b resolves names one segment at a time.
func (b *Backend) Walking() bool { return b.walkOnly }
