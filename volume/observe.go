package volume

import (
	"context"
	"errors"
	"io"
	"time"

	"hostcrypt/disk"
	hfs "hostcrypt/fs"
)

// Observer is told when a disk's volume opens and closes, and of every I/O
// of its image in between: the metrics (package observe) and the web
// console's view of a disk come from it. The volume calls it; it never
// calls back into the control plane.
type Observer interface {
	// Opened is called once the volume is open, before its image serves
	// any I/O; the IO it returns receives every read, write, flush and
	// discard of the image until IO.Closed.
	Opened(v *Volume) IO
}

// IO receives one volume's I/O as it completes. Its methods run on the data
// path, concurrently: they must not block, lock or allocate.
type IO interface {
	Read(bytes int, took time.Duration, err error)
	Write(bytes int, took time.Duration, err error)
	Flush(took time.Duration, err error)
	Discard(bytes int64, took time.Duration, err error)
	// Closed is called once the volume has closed; nothing is observed
	// after.
	Closed()
}

// Name is the disk's resource name (or "temp disk of VM ..."), and VM the
// VM it is attached to, as the volume was opened with.
func (v *Volume) Name() string { return v.name }

// VM is the VM the volume serves, if the opener said.
func (v *Volume) VM() string { return v.vm }

// observe puts the observer between the tree and the image: the tree calls
// the decorator, which times each call into the image. The image's optional
// interfaces stay what they were: a Lender or Zeroer is called as such,
// and their absence is answered as the tree answers it (ReadAt, Discard);
// Seeker is kept only by an image that has it (seekingImage).
func (v *Volume) observe(o Observer) {
	oi := &observedImage{img: v.img}
	if s, ok := v.img.(hfs.Seeker); ok {
		v.img = &seekingImage{observedImage: oi, s: s}
	} else {
		v.img = oi
	}
	v.io = o.Opened(v)
	oi.io = v.io
}

// observedImage times every call into the image it wraps.
type observedImage struct {
	img hfs.Image
	io  IO
}

var (
	_ hfs.Lender = (*observedImage)(nil)
	_ hfs.Zeroer = (*observedImage)(nil)
	_ hfs.Seeker = (*seekingImage)(nil)
)

// readErr is a read's error as a failure: reaching the end is not one.
func readErr(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func (o *observedImage) ReadAt(p []byte, off int64) (int, error) {
	start := time.Now()
	n, err := o.img.ReadAt(p, off)
	o.io.Read(n, time.Since(start), readErr(err))
	return n, err
}

func (o *observedImage) ReadLent(p []byte, off int64) ([]byte, func(), error) {
	start := time.Now()
	var (
		data    []byte
		release func()
		err     error
	)
	if l, ok := o.img.(hfs.Lender); ok {
		data, release, err = l.ReadLent(p, off)
	} else {
		var n int
		n, err = o.img.ReadAt(p, off)
		data = p[:n]
	}
	o.io.Read(len(data), time.Since(start), readErr(err))
	return data, release, err
}

func (o *observedImage) WriteAt(p []byte, off int64) (int, error) {
	start := time.Now()
	n, err := o.img.WriteAt(p, off)
	o.io.Write(n, time.Since(start), err)
	return n, err
}

func (o *observedImage) Discard(off, n int64) error {
	start := time.Now()
	err := o.img.Discard(off, n)
	o.io.Discard(n, time.Since(start), err)
	return err
}

func (o *observedImage) ZeroRange(off, n int64) error {
	start := time.Now()
	var err error
	if z, ok := o.img.(hfs.Zeroer); ok {
		err = z.ZeroRange(off, n)
	} else {
		err = o.img.Discard(off, n)
	}
	o.io.Discard(n, time.Since(start), err)
	return err
}

func (o *observedImage) Sync() error {
	start := time.Now()
	err := o.img.Sync()
	o.io.Flush(time.Since(start), err)
	return err
}

func (o *observedImage) Size() int64 { return o.img.Size() }

// seekingImage is an observed image whose image answers SEEK_DATA and
// SEEK_HOLE.
type seekingImage struct {
	*observedImage
	s hfs.Seeker
}

func (s *seekingImage) SeekData(off int64) (int64, error) { return s.s.SeekData(off) }
func (s *seekingImage) SeekHole(off int64) (int64, error) { return s.s.SeekHole(off) }

// InspectBlock returns the block holding byte off as the engine stores it
// (ciphertext only; see disk.InspectBlock), without waiting for anything
// but the block's own lock. It registers with Use, so a volume that begins
// to close refuses it and Close waits for it.
func (v *Volume) InspectBlock(ctx context.Context, off int64) (*disk.BlockView, error) {
	if v.d == nil {
		return nil, errors.New("a plaintext temp disk stores no encrypted blocks")
	}
	_, release, err := v.Use(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	return v.d.InspectBlock(off)
}

// ReadGuest reads what the guest reads at off (through the plaintext host
// cache, if any), without counting it as the guest's I/O. It registers
// with Use as InspectBlock does.
func (v *Volume) ReadGuest(ctx context.Context, p []byte, off int64) (int, error) {
	_, release, err := v.Use(ctx)
	if err != nil {
		return 0, err
	}
	defer release()
	return v.raw.ReadAt(p, off)
}

// DiskStats returns the volume's engine counters and its lease, read without a
// lock: ok is false for a plaintext temp disk.
func (v *Volume) DiskStats() (s disk.Stats, lease time.Duration, leased, ok bool) {
	if v.d == nil {
		return disk.Stats{}, 0, false, false
	}
	lease, leased = v.d.LeaseLeft()
	return v.d.Stats(), lease, leased, true
}
