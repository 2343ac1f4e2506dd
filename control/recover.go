package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"

	"hostcrypt/disk"
	"hostcrypt/storage"
)

// Start-up is robust to one bad record: a disk whose record or meta.json
// cannot be used is marked failed with the reason (Disk.FailureReason), a
// VM that cannot come back is marked failed (PowerFailed) with the reason,
// and every other VM is served. Nothing is removed for it: the reason says
// what to fix, and a later start (or vm start) checks again.

// PowerFailed is the power state of a VM that was meant to run but could
// not start at the last start of the host: one of its disks could not be
// opened, or its record is inconsistent. PowerStateReason says why. vm
// start tries again; so does the next start of the host.
const PowerFailed = "failed"

// repair mends what a state file may hold and that no operation could use,
// where mending loses nothing: records that are JSON null, names that
// differ from their key, and disks claimed by a VM that does not list them.
// It logs each repair.
func (s *state) repair(log *slog.Logger) {
	dropNil(s.Disks, "disk", log)
	dropNil(s.VMs, "VM", log)
	dropNil(s.DES, "disk encryption set", log)
	dropNil(s.Snapshots, "snapshot", log)
	dropNil(s.Images, "image", log)
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
	}
	for name, d := range s.Disks {
		if d.ManagedBy == "" {
			continue
		}
		vm := s.VMs[d.ManagedBy]
		if vm == nil || !slices.Contains(vmDiskNames(vm), name) {
			log.Warn("state: a disk names a VM that does not list it; it is unattached now", "disk", name, "vm", d.ManagedBy)
			d.ManagedBy = ""
			if d.DiskState == DiskAttached || d.DiskState == DiskReserved {
				d.DiskState = DiskUnattached
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
func recordProblem(d *Disk) string {
	if err := checkSku(d.Sku.Name); err != nil {
		return fmt.Sprintf("its record names sku %q, which does not exist", d.Sku.Name)
	}
	if d.LogicalSectorSize != 512 && d.LogicalSectorSize != 4096 {
		return fmt.Sprintf("its record names a %d-byte sector; sectors are 512 or 4096 bytes", d.LogicalSectorSize)
	}
	if err := checkDiskSize("diskSizeBytes", d.DiskSizeBytes, d.LogicalSectorSize, d.Sku.Name); err != nil {
		return "its record has an impossible size: " + asError(err).Message
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

// checkDisk checks a disk's record and its meta.json in storage, marks the
// disk failed with the reason, or clears the mark. A meta.json of another
// valid size than the record (a resize whose state was not saved) is
// believed: it is what the engine serves. The caller holds h.mu and saves.
func (h *Host) checkDisk(ctx context.Context, d *Disk) error {
	reason := recordProblem(d)
	if reason == "" {
		reason = h.metaProblem(ctx, d)
	}
	if reason != d.FailureReason {
		if reason != "" {
			h.log.Error("disk cannot be used", "disk", d.Name, "reason", reason)
		} else {
			h.log.Info("disk can be used again", "disk", d.Name)
		}
		d.FailureReason = reason
	}
	return diskFailed(d)
}

// metaProblem reads the disk's meta.json and says what makes it unusable,
// or "".
func (h *Host) metaProblem(ctx context.Context, d *Disk) string {
	m, err := disk.ReadMetadata(ctx, h.cfg.Storage, d.StoragePrefix)
	switch {
	case errors.Is(err, disk.ErrNotFound):
		return fmt.Sprintf("its meta.json is missing from storage (%s/meta.json)", d.StoragePrefix)
	case err != nil:
		return fmt.Sprintf("its meta.json cannot be used: %v", err)
	case m.SectorSize != d.LogicalSectorSize:
		return fmt.Sprintf("its meta.json says %d-byte sectors, its record %d", m.SectorSize, d.LogicalSectorSize)
	}
	if err := checkDiskSize("size", m.Size, m.SectorSize, d.Sku.Name); err != nil {
		return "its meta.json has an impossible size: " + asError(err).Message
	}
	if m.Size != d.DiskSizeBytes {
		h.log.Warn("disk: meta.json and the record differ in size; using meta.json's", "disk", d.Name, "record", d.DiskSizeBytes, "meta", m.Size)
		d.DiskSizeBytes, d.DiskSizeGB = m.Size, m.Size>>30
	}
	return ""
}

// diskFailed refuses the use of a disk marked failed.
func diskFailed(d *Disk) error {
	if d.FailureReason == "" {
		return nil
	}
	return conflict("disk %q cannot be used: %s; fix that (restore its objects, or the record in state.json) and try again, or delete the disk", d.Name, d.FailureReason)
}

// usable refuses what must wait for a disk's conversion, import or export,
// or cannot be done on a disk marked failed; a failed disk is checked again
// first, so that a fixed one is usable at once. The caller holds h.mu.
func (h *Host) usable(ctx context.Context, d *Disk) error {
	if err := converting(d); err != nil {
		return err
	}
	if d.FailureReason == "" {
		return nil
	}
	err := h.checkDisk(ctx, d)
	if err == nil {
		_ = h.save()
	}
	return err
}

// checkVMRecord says what in a VM's record keeps it from starting: a disk it
// names that does not exist or is claimed by another VM, a disk named
// twice, a data disk without a valid LUN or two on one LUN, a caching mode
// or temp disk size no request could have given.
func (h *Host) checkVMRecord(vm *VM) error {
	seen := map[string]bool{}
	luns := map[int]string{}
	for i, ad := range append([]AttachedDisk{vm.StorageProfile.OsDisk}, vm.StorageProfile.DataDisks...) {
		d := h.st.Disks[ad.Name]
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
				return conflict("VM %q, disk %q: %s", vm.Name, ad.Name, asError(err).Message)
			}
		}
		if i == 0 {
			continue
		}
		if ad.Lun == nil || *ad.Lun < 0 || *ad.Lun > 63 {
			return conflict("VM %q: data disk %q has no LUN from 0 to 63 in its record", vm.Name, ad.Name)
		}
		if other, ok := luns[*ad.Lun]; ok {
			return conflict("VM %q: data disks %q and %q are both on LUN %d", vm.Name, other, ad.Name, *ad.Lun)
		}
		luns[*ad.Lun] = ad.Name
	}
	if vm.TempDiskSizeBytes != 0 {
		if err := checkTempSize("tempDiskSizeBytes", vm.TempDiskSizeBytes); err != nil {
			return conflict("VM %q: its record has an impossible temp disk: %s", vm.Name, asError(err).Message)
		}
	}
	return nil
}

// Recover brings the host back after a start, whether the last stop was
// clean or not: it cleans up transfers cut short, finishes the removals the
// state records, logs what storage holds that no record owns (host gc
// removes it), checks every disk, resumes conversions and starts again
// every VM that was running (or failed at the last start). A VM that cannot
// start is marked failed with the reason; the others are served.
func (h *Host) Recover(ctx context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recoverTransfers(ctx)
	h.finishRemovals(ctx)
	h.logLeftovers(ctx)
	names := make([]string, 0, len(h.st.Disks))
	for n := range h.st.Disks {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		_ = h.checkDisk(ctx, h.st.Disks[n])
	}
	for _, n := range names {
		d := h.st.Disks[n]
		if d.Conversion != nil && d.Conversion.Error == "" && d.FailureReason == "" {
			h.log.Info("resuming disk conversion", "disk", n, "chunk", d.Conversion.NextChunk, "of", d.Conversion.TotalChunks)
			h.goConvert(n)
		}
	}
	if err := h.save(); err != nil {
		h.log.Error("saving the state after the start-up checks", "err", err)
	}
	names = names[:0]
	for n, vm := range h.st.VMs {
		if vm.PowerState == PowerRunning || vm.PowerState == PowerFailed {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		vm := h.st.VMs[n]
		if err := h.startCaught(ctx, vm); err != nil {
			h.log.Error("VM did not come back after restart", "vm", n, "err", err)
			vm.PowerState, vm.PowerStateReason = PowerFailed, "could not start after a host restart: "+asError(err).Message
			if err := h.save(); err != nil {
				h.log.Error("saving the state", "err", err)
			}
		}
	}
}

// startCaught is start for Recover: a panic while opening one VM's disks
// fails that VM, not the host. The cause is a defect to fix; the stack is
// in the log.
func (h *Host) startCaught(ctx context.Context, vm *VM) (err error) {
	defer func() {
		if p := recover(); p != nil {
			h.log.Error("panic while starting a VM; the VM is marked failed", "vm", vm.Name, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("internal error while opening its disks: %v", p)
		}
	}()
	return h.start(ctx, vm)
}
