package control

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
)

// CreateDisk creates a managed disk, empty or copied from a snapshot or
// image.
func (h *Host) CreateDisk(ctx context.Context, req api.CreateDiskRequest) (*api.Disk, error) {
	d, err := h.createDisk(ctx, req, nil)
	if err != nil {
		return nil, err
	}
	return diskView(d, live{}), nil
}

// createDisk creates a disk. Its record goes into the store in one
// transaction with whatever finish adds (a VM created with it, an import's
// mark); its objects are made before, with no lock held, under an intent
// that holds the disk's name.
func (h *Host) createDisk(ctx context.Context, req api.CreateDiskRequest, finish func(r *store.Records, d *store.Disk) error) (*store.Disk, error) {
	if err := checkName("disk", req.Name); err != nil {
		return nil, err
	}
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	if err := nameTaken(r, "disk", req.Name); err != nil {
		return nil, err
	}
	if req.Sku == "" {
		req.Sku = api.DefaultSku
	}
	if err := checkSku(req.Sku); err != nil {
		return nil, err
	}
	var src *source
	if req.Source != "" {
		if src, err = h.openSource(ctx, r, req.Source, false, "disk "+req.Name); err != nil {
			return nil, err
		}
		defer src.close()
		if req.SizeBytes == 0 {
			req.SizeBytes = src.d.Size()
		}
		if req.SizeBytes < src.d.Size() {
			return nil, badRequest("%s %q is %d bytes; a disk made from it needs at least that (--size)", src.kind, src.name, src.d.Size())
		}
		if req.LogicalSectorSize != 0 && req.LogicalSectorSize != src.sector {
			return nil, badRequest("%s %q has %d-byte sectors; a disk made from it has the same (leave out --logical-sector-size)", src.kind, src.name, src.sector)
		}
		req.LogicalSectorSize = src.sector
		// Content the guest encrypted stays flagged wherever it is copied.
		req.ADE = req.ADE || src.ade
	}
	if req.LogicalSectorSize == 0 {
		req.LogicalSectorSize = api.DefaultSectorSize
	}
	if req.LogicalSectorSize != 512 && req.LogicalSectorSize != 4096 {
		return nil, badRequest("logical sector size %d: use 512 or 4096", req.LogicalSectorSize)
	}
	if err := checkDiskSize("sizeBytes", req.SizeBytes, req.LogicalSectorSize, req.Sku); err != nil {
		return nil, err
	}
	var des *store.DES
	switch {
	case req.DiskEncryptionSet != "":
		var ok bool
		if des, ok = desByID(r, req.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", req.DiskEncryptionSet)
		}
		if req.EncryptionType == "" {
			req.EncryptionType = des.EncryptionType
		}
		if req.EncryptionType == api.EncPlatformKey {
			return nil, badRequest("a disk with disk encryption set %q uses customer-managed keys: use %s or %s, or leave out --disk-encryption-set", des.Name, api.EncCustomerKey, api.EncPlatformAndCustomerKey)
		}
	case req.EncryptionType == "":
		req.EncryptionType = api.EncPlatformKey
	case req.EncryptionType == api.EncCustomerKey || req.EncryptionType == api.EncPlatformAndCustomerKey:
		return nil, badRequest("encryption type %s needs a disk encryption set (--disk-encryption-set)", req.EncryptionType)
	}
	switch req.EncryptionType {
	case api.EncPlatformKey, api.EncCustomerKey, api.EncPlatformAndCustomerKey:
	default:
		return nil, badRequest("encryption type %q: use %s, %s or %s", req.EncryptionType, api.EncPlatformKey, api.EncCustomerKey, api.EncPlatformAndCustomerKey)
	}
	p, err := h.checkCreateDisk(req, des)
	if err != nil {
		return nil, err
	}
	wrappers, err := h.wrappersFor(ctx, req.EncryptionType, des)
	if err != nil {
		return nil, err
	}
	uid := newID()
	prefix := "disks/" + uid
	size := req.SizeBytes
	if src != nil {
		size = src.d.Size()
	}
	// The intent goes first: a crash from here on leaves objects that
	// host gc knows to be a cut-short creation of this disk.
	done, err := h.beginIntent(ctx, prefix, "disk "+req.Name, "disk", req.Name, nil)
	if err != nil {
		return nil, err
	}
	defer done()
	d, err := disk.Create(ctx, h.cfg.Storage, prefix, disk.CreateOptions{
		Size: size, SectorSize: req.LogicalSectorSize, Layers: wrappers,
	})
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, fmt.Errorf("creating disk %q: %w", req.Name, err)
	}
	if src != nil {
		err = h.copyInto(ctx, src.d, d, api.KindDisks+"/"+req.Name, "copying "+src.kind+" "+src.name)
		if err == nil && req.SizeBytes > size {
			err = d.Resize(ctx, req.SizeBytes)
		}
		if err != nil {
			d.Close()
			h.abandonIntent(ctx, prefix)
			return nil, fmt.Errorf("disk %q from %s %q: %w", req.Name, src.kind, src.name, err)
		}
	}
	if err := d.Close(); err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	m, err := disk.ReadMetadata(ctx, h.cfg.Storage, prefix)
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	res := &store.Disk{
		Name:              req.Name,
		ID:                resourceID(p, typeDisks, req.Name),
		UniqueID:          uid,
		Placement:         p,
		ADE:               req.ADE,
		Sku:               store.Sku{Name: req.Sku},
		DiskSizeBytes:     req.SizeBytes,
		DiskSizeGB:        req.SizeBytes >> 30,
		LogicalSectorSize: req.LogicalSectorSize,
		Encryption:        store.Encryption{Type: req.EncryptionType},
		DiskState:         api.DiskUnattached,
		TimeCreated:       h.cfg.Now().UTC(),
		KeyID:             m.Layers[0].WrappedKeys[0].KeyID,
		StoragePrefix:     prefix,
	}
	if des != nil {
		res.Encryption.DiskEncryptionSetID = des.ID
	}
	if _, err := h.update(ctx, func(r *store.Records) error {
		if des != nil {
			if _, ok := desByID(r, des.ID); !ok {
				return conflict("disk encryption set %q was deleted while disk %q was created", des.Name, req.Name)
			}
		}
		r.Disks[req.Name] = res
		delete(r.Intents, prefix)
		if finish != nil {
			return finish(r, res)
		}
		return nil
	}); err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	h.log.Info("disk created", "disk", req.Name, "size", req.SizeBytes, "encryption", req.EncryptionType)
	return res, nil
}

// diskFor returns the record of disk name and checks it can be used (see
// usable).
func (h *Host) diskFor(ctx context.Context, name string) (*store.Records, *store.Disk, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, nil, err
	}
	d, ok := r.Disks[name]
	if !ok {
		return nil, nil, notFound("disk", name)
	}
	if err := h.usable(ctx, d); err != nil {
		return nil, nil, err
	}
	return r, d, nil
}

// UpdateDisk grows a disk, also while its VM runs (the image shows the new
// size at once), switches its keys, or records its use of guest-level
// encryption.
func (h *Host) UpdateDisk(ctx context.Context, name string, req api.UpdateDiskRequest) (*api.Disk, error) {
	release, err := h.claim("updating it", "disk/"+name)
	if err != nil {
		return nil, err
	}
	defer release()
	r, d, err := h.diskFor(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := h.diskElsewhere(r, d); err != nil {
		return nil, err
	}
	if req.ADE != nil {
		if req.SizeBytes != 0 || req.EncryptionType != "" || req.DiskEncryptionSet != "" {
			return nil, badRequest("record guest-level disk encryption (--ade) of disk %q in an update of its own", name)
		}
		return h.setDiskADE(ctx, name, *req.ADE)
	}
	if req.EncryptionType != "" || req.DiskEncryptionSet != "" {
		if req.SizeBytes != 0 {
			return nil, badRequest("change the size and the keys of disk %q in two updates", name)
		}
		op := "switch of its keys"
		if req.EncryptionType == api.EncPlatformAndCustomerKey {
			op = "conversion to double encryption"
		}
		lk, err := h.lockForOp(ctx, d, op)
		if err != nil {
			return nil, err
		}
		defer lk.Release()
		return h.switchDiskKeys(ctx, r, d, lk, req)
	}
	if req.SizeBytes == 0 {
		return nil, badRequest("nothing to update: give the new size (--size), --encryption-type or --disk-encryption-set")
	}
	if err := checkDiskSize("sizeBytes", req.SizeBytes, d.LogicalSectorSize, d.Sku.Name); err != nil {
		return nil, err
	}
	if req.SizeBytes < d.DiskSizeBytes {
		return nil, badRequest("disk %q is %d bytes; shrinking to %d is not supported (it would destroy data)", name, d.DiskSizeBytes, req.SizeBytes)
	}
	if req.SizeBytes == d.DiskSizeBytes {
		return diskView(d, h.liveNow()), nil
	}
	lk, err := h.lockForOp(ctx, d, "resize")
	if err != nil {
		return nil, err
	}
	defer lk.Release()
	if err := h.resize(ctx, r, d, lk, req.SizeBytes); err != nil {
		return nil, err
	}
	d, err = h.recordDisk(ctx, name, func(d *store.Disk) error {
		d.DiskSizeBytes, d.DiskSizeGB = req.SizeBytes, req.SizeBytes>>30
		return nil
	})
	if err != nil {
		return nil, err
	}
	return diskView(d, h.liveNow()), nil
}

// resize grows the disk's stored metadata: through its open volume while
// its VM runs (the image shows the new size at once), or opened for it
// under lk (what lockForOp gave).
func (h *Host) resize(ctx context.Context, r *store.Records, d *store.Disk, lk *opLock, size int64) error {
	if as := h.attachmentsOf(d.Name); len(as) > 0 {
		a := as[0]
		uctx, release, err := a.vol.Use(ctx)
		if err != nil {
			return conflict("%v; try again", err)
		}
		defer release()
		if err := a.vol.Resize(uctx, size); err != nil {
			return err
		}
		h.cfg.Tree.Resized(d.ManagedBy, a.file)
		return nil
	}
	if lk.InVM {
		return vmGone(d)
	}
	dd, err := disk.Open(ctx, lk.Storage, d.StoragePrefix, h.unwrapperFor(r, "disk "+d.Name, d.Encryption), openOptions(d.Encryption)...)
	if err != nil {
		return fmt.Errorf("opening disk %q: %w", d.Name, err)
	}
	err = dd.Resize(ctx, size)
	if cerr := dd.Close(); err == nil {
		err = cerr
	}
	return err
}

// recordDisk changes the record of disk name in a transaction.
func (h *Host) recordDisk(ctx context.Context, name string, change func(d *store.Disk) error) (*store.Disk, error) {
	var out *store.Disk
	_, err := h.update(ctx, func(r *store.Records) error {
		d, ok := r.Disks[name]
		if !ok {
			return notFound("disk", name)
		}
		out = d
		return change(d)
	})
	return out, err
}

// setDiskADE records that a disk uses guest-level disk encryption. The flag
// is never cleared: once used, a disk counts as an ADE disk for good.
func (h *Host) setDiskADE(ctx context.Context, name string, ade bool) (*api.Disk, error) {
	var changed bool
	var out *store.Disk
	_, err := h.update(ctx, func(r *store.Records) error {
		d, ok := r.Disks[name]
		if !ok {
			return notFound("disk", name)
		}
		if err := checkDiskADE(r, d, ade); err != nil {
			return err
		}
		changed = ade && !d.ADE
		d.ADE = d.ADE || ade
		out = d
		return nil
	})
	if err != nil {
		return nil, err
	}
	if changed {
		h.log.Info("disk marked as using guest-level encryption", "disk", name)
	}
	return diskView(out, h.liveNow()), nil
}

// switchDiskKeys moves a disk between platform and customer keys by
// re-wrapping its data key; the data is not touched. Only while the disk is
// unattached or its VM deallocated, as Azure requires. The key is
// re-wrapped through lk (what lockForOp gave), which a conversion keeps.
func (h *Host) switchDiskKeys(ctx context.Context, r *store.Records, d *store.Disk, lk *opLock, req api.UpdateDiskRequest) (*api.Disk, error) {
	if vm := r.VMs[d.ManagedBy]; d.ManagedBy != "" && vm != nil && vm.PowerState != api.PowerDeallocated {
		return nil, conflict("disk %q is attached to VM %q; deallocate the VM first (hostcrypt vm deallocate --name %s) to change its keys", d.Name, d.ManagedBy, d.ManagedBy)
	}
	var des *store.DES
	switch {
	case req.DiskEncryptionSet != "":
		var ok bool
		if des, ok = desByID(r, req.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", req.DiskEncryptionSet)
		}
		if req.EncryptionType == "" {
			req.EncryptionType = api.EncCustomerKey
		}
	case req.EncryptionType == api.EncPlatformAndCustomerKey:
		var ok bool
		if des, ok = desByID(r, d.Encryption.DiskEncryptionSetID); !ok {
			return nil, badRequest("double encryption needs a disk encryption set: give --disk-encryption-set")
		}
	case req.EncryptionType == api.EncPlatformKey:
	default:
		return nil, badRequest("encryption type %q: give %s (with no set) or a --disk-encryption-set", req.EncryptionType, api.EncPlatformKey)
	}
	if err := checkDiskKeys(r, d, des); err != nil {
		return nil, err
	}
	if d.Encryption.Type == api.EncPlatformAndCustomerKey {
		return nil, badRequest("disk %q is double-encrypted; switching it back to a single layer is not supported", d.Name)
	}
	if req.EncryptionType == api.EncPlatformKey && d.Encryption.DiskEncryptionSetID != "" {
		if s := incrementalSnapshotOf(r, d); s != "" {
			return nil, conflict("disk %q has incremental snapshots (%s): customer-managed keys cannot be turned off on such a disk; delete its incremental snapshots first, or keep the customer key", d.Name, s)
		}
	}
	switch req.EncryptionType {
	case api.EncPlatformAndCustomerKey:
		return h.startConversion(ctx, d, des, lk)
	case api.EncPlatformKey, api.EncCustomerKey:
	default:
		return nil, badRequest("encryption type %q: use %s, %s or %s", req.EncryptionType, api.EncPlatformKey, api.EncCustomerKey, api.EncPlatformAndCustomerKey)
	}
	wrappers, err := h.wrappersFor(ctx, req.EncryptionType, des)
	if err != nil {
		return nil, err
	}
	w, err := disk.Rewrap(ctx, lk.Storage, d.StoragePrefix, 1, h.unwrapperFor(r, "disk "+d.Name, d.Encryption), wrappers[0])
	if err != nil {
		return nil, fmt.Errorf("re-wrapping the key of disk %q: %w", d.Name, err)
	}
	d, err = h.recordDisk(ctx, d.Name, func(d *store.Disk) error {
		d.KeyID = w.KeyID
		d.Encryption = store.Encryption{Type: req.EncryptionType}
		if des != nil {
			d.Encryption.DiskEncryptionSetID = des.ID
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	h.log.Info("disk keys switched", "disk", d.Name, "encryption", d.Encryption.Type, "key", w.KeyID)
	return diskView(d, h.liveNow()), nil
}

// incrementalSnapshotOf names the incremental snapshots of d, or "".
func incrementalSnapshotOf(r *store.Records, d *store.Disk) string {
	var names []string
	for _, s := range r.Snapshots {
		if s.Incremental && s.SourceUniqueID == d.UniqueID {
			names = append(names, s.Name)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// DeleteDisk crypto-shreds an unattached disk: the deletion is recorded,
// then its wrapped keys are destroyed, then its data.
func (h *Host) DeleteDisk(ctx context.Context, name string) error {
	release, err := h.claim("deleting it", "disk/"+name)
	if err != nil {
		return err
	}
	defer release()
	// On a shared store no other host may use the disk meanwhile: its
	// writer lock is held until its objects are gone.
	r, err := h.load(ctx)
	if err != nil {
		return err
	}
	if d, ok := r.Disks[name]; ok && d.ManagedBy == "" {
		lk, err := h.lockForOp(ctx, d, "deletion")
		if err != nil {
			return err
		}
		defer lk.Release()
	}
	return h.deleteRecorded(ctx, "disk", name, func(r *store.Records) (string, int64, error) {
		d, ok := r.Disks[name]
		if !ok {
			return "", 0, notFound("disk", name)
		}
		if d.ManagedBy != "" {
			return "", 0, conflict("disk %q is attached to VM %q; detach it first (hostcrypt vm disk detach --vm-name %s --name %s)", name, d.ManagedBy, d.ManagedBy, name)
		}
		if err := converting(d); err != nil {
			return "", 0, err
		}
		delete(r.Disks, name)
		return d.StoragePrefix, 0, nil
	})
}
