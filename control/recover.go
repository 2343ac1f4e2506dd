package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
	"hostcrypt/storage"
)

// Start-up is robust to one bad record: a disk whose record or meta.json
// cannot be used is marked failed with the reason (FailureReason), a VM
// that cannot come back is marked failed (PowerFailed) with the reason,
// and every other VM is served. Nothing is removed for it: the reason says
// what to fix, and a later start (or vm start) checks again.

// repair mends what a state file may hold and that no operation could use,
// where mending loses nothing: records that are JSON null, names that
// differ from their key, and disks claimed by a VM that does not list them.
// It logs each repair.
func repair(s *store.Records, log *slog.Logger) {
	dropNil(s.Disks, "disk", log)
	dropNil(s.VMs, "VM", log)
	dropNil(s.DES, "disk encryption set", log)
	dropNil(s.Snapshots, "snapshot", log)
	dropNil(s.Images, "image", log)
	dropNil(s.Intents, "intent", log)
	dropNil(s.Removals, "removal", log)
	dropNil(s.Identities, "user-assigned identity", log)
	dropNil(s.Galleries, "gallery", log)
	dropNil(s.GalleryImages, "image definition", log)
	dropNil(s.GalleryImageVersions, "image version", log)
	for name, d := range s.Disks {
		if d.Name != name {
			log.Warn("state: a disk record's name differs from its key; using the key", "disk", name, "recorded", d.Name)
			d.Name = name
		}
	}
	for name, vm := range s.VMs {
		if vm.Name != name {
			log.Warn("state: a VM record's name differs from its key; using the key", "vm", name, "recorded", vm.Name)
			vm.Name = name
		}
		if vm.StorageProfile.DataDisks == nil {
			vm.StorageProfile.DataDisks = []store.AttachedDisk{}
		}
	}
	for name, d := range s.Disks {
		if d.ManagedBy == "" {
			continue
		}
		vm := s.VMs[d.ManagedBy]
		if vm == nil || !slices.Contains(vm.DiskNames(), name) {
			log.Warn("state: a disk names a VM that does not list it; it is unattached now", "disk", name, "vm", d.ManagedBy)
			d.ManagedBy = ""
			if d.DiskState == api.DiskAttached || d.DiskState == api.DiskReserved {
				d.DiskState = api.DiskUnattached
			}
		}
	}
}

func dropNil[T any](m map[string]*T, kind string, log *slog.Logger) {
	for name, v := range m {
		if v == nil {
			log.Warn("state: dropping an empty (null) record", "kind", kind, "name", name)
			delete(m, name)
		}
	}
}

// recordProblem says what makes a disk record unusable whatever is in
// storage, or "".
func recordProblem(d *store.Disk) string {
	if err := checkSku(d.Sku.Name); err != nil {
		return fmt.Sprintf("its record names sku %q, which does not exist", d.Sku.Name)
	}
	if d.LogicalSectorSize != 512 && d.LogicalSectorSize != 4096 {
		return fmt.Sprintf("its record names a %d-byte sector; sectors are 512 or 4096 bytes", d.LogicalSectorSize)
	}
	if err := checkDiskSize("diskSizeBytes", d.DiskSizeBytes, d.LogicalSectorSize, d.Sku.Name); err != nil {
		return "its record has an impossible size: " + message(err)
	}
	if !validPrefix(d.StoragePrefix, "disks") {
		return fmt.Sprintf("its record names storage prefix %q, which is not one of a disk (disks/ID)", d.StoragePrefix)
	}
	if c := d.Conversion; c != nil && !validPrefix(c.TargetPrefix, "disks") {
		return fmt.Sprintf("its conversion names storage prefix %q, which is not one of a disk (disks/ID)", c.TargetPrefix)
	}
	return ""
}

// validPrefix tells whether prefix is root/ID: the only shape a resource's
// objects live under, so that a damaged record never leads a removal to
// another resource's objects.
func validPrefix(prefix, root string) bool {
	id, ok := strings.CutPrefix(prefix, root+"/")
	return ok && id != "" && !strings.Contains(id, "/") && storage.ValidKey(prefix) == nil
}

// diskProblem checks a disk's record and its meta.json in storage and
// says what makes the disk unusable, or "". size is what meta.json says
// (0 when it says nothing usable): a meta.json of another valid size than
// the record (a resize whose record was not saved) is believed, as it is
// what the engine serves.
func (h *Host) diskProblem(ctx context.Context, d *store.Disk) (reason string, size int64) {
	if reason := recordProblem(d); reason != "" {
		return reason, 0
	}
	m, err := disk.ReadMetadata(ctx, h.cfg.Storage, d.StoragePrefix)
	switch {
	case errors.Is(err, disk.ErrNotFound):
		return fmt.Sprintf("its meta.json is missing from storage (%s/meta.json)", d.StoragePrefix), 0
	case err != nil:
		return fmt.Sprintf("its meta.json cannot be used: %v", err), 0
	case m.SectorSize != d.LogicalSectorSize:
		return fmt.Sprintf("its meta.json says %d-byte sectors, its record %d", m.SectorSize, d.LogicalSectorSize), 0
	}
	if err := checkDiskSize("size", m.Size, m.SectorSize, d.Sku.Name); err != nil {
		return "its meta.json has an impossible size: " + message(err), 0
	}
	return "", m.Size
}

// checkDisk checks a disk and records what it finds: the failure reason
// (set or cleared), and meta.json's size where it differs from the record's.
func (h *Host) checkDisk(ctx context.Context, name string) (*store.Disk, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	d, ok := r.Disks[name]
	if !ok {
		return nil, notFound("disk", name)
	}
	reason, size := h.diskProblem(ctx, d)
	if reason == d.FailureReason && (size == 0 || size == d.DiskSizeBytes) {
		return d, diskFailed(d)
	}
	d, err = h.recordDisk(ctx, name, func(d *store.Disk) error {
		if reason != d.FailureReason {
			if reason != "" {
				h.log.Error("disk cannot be used", "disk", d.Name, "reason", reason)
			} else {
				h.log.Info("disk can be used again", "disk", d.Name)
			}
			d.FailureReason = reason
		}
		if size != 0 && size != d.DiskSizeBytes {
			h.log.Warn("disk: meta.json and the record differ in size; using meta.json's", "disk", d.Name, "record", d.DiskSizeBytes, "meta", size)
			d.DiskSizeBytes, d.DiskSizeGB = size, size>>30
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return d, diskFailed(d)
}

// diskFailed refuses the use of a disk marked failed.
func diskFailed(d *store.Disk) error {
	if d.FailureReason == "" {
		return nil
	}
	return conflict("disk %q cannot be used: %s; fix that (restore its objects, or the record in state.json) and try again, or delete the disk", d.Name, d.FailureReason)
}

// usable refuses what must wait for a disk's conversion, import or export,
// or cannot be done on a disk marked failed; a failed disk is checked again
// first, so that a fixed one is usable at once.
func (h *Host) usable(ctx context.Context, d *store.Disk) error {
	if d == nil {
		return nil
	}
	if err := converting(d); err != nil {
		return err
	}
	if d.FailureReason == "" {
		return nil
	}
	fresh, err := h.checkDisk(ctx, d.Name)
	if fresh != nil {
		*d = *fresh
	}
	return err
}

// checkVMRecord says what in a VM's record keeps it from starting: a disk it
// names that does not exist or is claimed by another VM, a disk named
// twice, a data disk without a valid LUN or two on one LUN, a caching mode
// or temp disk size no request could have given.
func checkVMRecord(r *store.Records, vm *store.VM) error {
	seen := map[string]bool{}
	luns := map[int]string{}
	for i, ad := range append([]store.AttachedDisk{vm.StorageProfile.OsDisk}, vm.StorageProfile.DataDisks...) {
		d := r.Disks[ad.Name]
		switch {
		case d == nil:
			return conflict("VM %q names disk %q, which does not exist; detach it (hostcrypt vm disk detach --vm-name %s --name %s) or delete the VM", vm.Name, ad.Name, vm.Name, ad.Name)
		case seen[ad.Name]:
			return conflict("VM %q names disk %q twice", vm.Name, ad.Name)
		case d.ManagedBy != vm.Name:
			return conflict("VM %q names disk %q, which is attached to VM %q", vm.Name, ad.Name, d.ManagedBy)
		}
		seen[ad.Name] = true
		// Records older than host caching have none: no cache.
		if ad.Caching != "" {
			if err := checkCaching(ad.Caching); err != nil {
				return conflict("VM %q, disk %q: %s", vm.Name, ad.Name, message(err))
			}
		}
		if i == 0 {
			continue
		}
		if ad.Lun == nil || *ad.Lun < 0 || *ad.Lun > api.MaxDataDisks-1 {
			return conflict("VM %q: data disk %q has no LUN from 0 to 63 in its record", vm.Name, ad.Name)
		}
		if other, ok := luns[*ad.Lun]; ok {
			return conflict("VM %q: data disks %q and %q are both on LUN %d", vm.Name, other, ad.Name, *ad.Lun)
		}
		luns[*ad.Lun] = ad.Name
	}
	if vm.TempDiskSizeBytes != 0 {
		if err := checkTempSize("tempDiskSizeBytes", vm.TempDiskSizeBytes); err != nil {
			return conflict("VM %q: its record has an impossible temp disk: %s", vm.Name, message(err))
		}
	}
	return nil
}

// Recover brings the host back after a start, whether the last stop was
// clean or not: it cleans up transfers cut short, finishes the removals the
// state records, logs what storage holds that no record owns (host gc
// removes it), checks every disk, resumes conversions (also those that
// stopped on an error: they are tried again) and starts again
// every VM that was running (or failed at the last start). A VM that cannot
// start is marked failed with the reason; the others are served.
func (h *Host) Recover(ctx context.Context) {
	h.recoverTransfers(ctx)
	h.finishRemovals(ctx)
	h.logLeftovers(ctx)
	r, err := h.load(ctx)
	if err != nil {
		h.log.Error("start-up: reading the state", "err", err)
		return
	}
	names := sortedKeys(r.Disks)
	for _, n := range names {
		if _, err := h.checkDisk(ctx, n); err != nil && api.StatusOf(err) != 409 {
			h.log.Error("checking a disk at start", "disk", n, "err", err)
		}
	}
	if r, err = h.load(ctx); err != nil {
		h.log.Error("start-up: reading the state", "err", err)
		return
	}
	for _, n := range names {
		d := r.Disks[n]
		if d == nil || d.Conversion == nil || d.FailureReason != "" || !h.mine(d.Conversion.Host) {
			continue
		}
		// One that stopped on an error is tried again, from the chunk it
		// reached: its error tells the user that a restart resumes it.
		if stopped := d.Conversion.Error; stopped != "" {
			if _, err := h.recordDisk(ctx, n, func(d *store.Disk) error {
				if d.Conversion != nil {
					d.Conversion.Error = ""
				}
				return nil
			}); err != nil {
				h.log.Error("start-up: clearing a stopped conversion's error", "disk", n, "err", err)
				continue
			}
			h.log.Info("retrying a disk conversion that stopped", "disk", n, "stopped", stopped)
		}
		h.log.Info("resuming disk conversion", "disk", n, "chunk", d.Conversion.NextChunk, "of", d.Conversion.TotalChunks)
		h.goConvert(n, nil)
	}
	var vms []string
	for n, vm := range r.VMs {
		// On a shared store, only the VMs this host ran: another host's
		// are its own to bring back.
		if (vm.PowerState == api.PowerRunning || vm.PowerState == api.PowerFailed) && h.mine(vm.Host) {
			vms = append(vms, n)
		}
	}
	slices.Sort(vms)
	for _, n := range vms {
		if startErr := h.startCaught(ctx, n); startErr != nil {
			h.log.Error("VM did not come back after restart", "vm", n, "err", startErr)
			if _, err := h.update(ctx, func(r *store.Records) error {
				if vm := r.VMs[n]; vm != nil && h.mine(vm.Host) {
					vm.PowerState, vm.PowerStateReason = api.PowerFailed, "could not start after a host restart: "+message(startErr)
				}
				return nil
			}); err != nil {
				h.log.Error("saving the state", "err", err)
			}
		}
	}
}

// startCaught is start for Recover: a panic while opening one VM's disks
// fails that VM, not the host. The cause is a defect to fix; the stack is
// in the log.
func (h *Host) startCaught(ctx context.Context, name string) (err error) {
	release, err := h.claim(recoverOp, "vm/"+name)
	if err != nil {
		return err
	}
	defer release()
	defer func() {
		if p := recover(); p != nil {
			h.log.Error("panic while starting a VM; the VM is marked failed", "vm", name, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("internal error while opening its disks: %v", p)
		}
	}()
	return h.start(ctx, name, nil)
}
