package volume

import (
	"context"
	"errors"

	"hostcrypt/disk"
)

// InspectBlock returns the block holding byte off as the engine stores it
// (ciphertext only; see disk.InspectBlock). It registers with Use, so a
// volume that begins to close refuses it and Close waits for it.
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

// ReadGuest reads what the guest reads at off: the image the mount serves,
// through the plaintext host cache if there is one. It registers with Use
// as InspectBlock does.
func (v *Volume) ReadGuest(ctx context.Context, p []byte, off int64) (int, error) {
	_, release, err := v.Use(ctx)
	if err != nil {
		return 0, err
	}
	defer release()
	return v.img.ReadAt(p, off)
}
