package control

import (
	"context"
	"net/http"

	"hostcrypt/control/api"
	"hostcrypt/disk"
)

// openDisk returns the open volume of disk name of running VM vm, or a
// refusal: a block is looked at only where a running VM has it open.
func (h *Host) openDisk(vm, name string) (*attachment, error) {
	for _, a := range h.runningImages(vm) {
		if a.disk == name {
			return a, nil
		}
	}
	if !h.isRunning(vm) {
		return nil, errorf(http.StatusConflict, api.CodeConflict, "VM %q is not running on this host: only a running VM's disks are open", vm)
	}
	return nil, notFound("disk of VM "+vm, name)
}

// InspectBlock returns the stored block holding byte off of disk name, which
// running VM vm has open, taken apart by layer (ciphertext only). It holds
// the control lock only to find the disk.
func (h *Host) InspectBlock(ctx context.Context, vm, name string, off int64) (*disk.BlockView, error) {
	a, err := h.openDisk(vm, name)
	if err != nil {
		return nil, err
	}
	return a.vol.InspectBlock(ctx, off)
}

// ReadGuest reads what running VM vm reads from disk name at off. It holds
// the control lock only to find the disk.
func (h *Host) ReadGuest(ctx context.Context, vm, name string, p []byte, off int64) (int, error) {
	a, err := h.openDisk(vm, name)
	if err != nil {
		return 0, err
	}
	return a.vol.ReadGuest(ctx, p, off)
}
