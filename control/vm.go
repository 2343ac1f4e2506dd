package control

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"hostcrypt/cache"
	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/control/store"
	"hostcrypt/disk"
	"hostcrypt/storage"
	"hostcrypt/volume"
)

func imageName(lun *int) string {
	if lun == nil {
		return "os.img"
	}
	return fmt.Sprintf("data-%d.img", *lun)
}

const tempImage = "temp.img"

func tempPrefix(vm string) string { return "temp/" + vm }

// plainTempKey is the file of a temp disk without encryption at host.
func plainTempKey(vm string) string { return "temp-plain/" + vm }

// vmView returns the API's view of VM name as the store has it now.
func (h *Host) vmNow(ctx context.Context, name string) (*api.VM, error) {
	r, vm, err := h.loadVM(ctx, name)
	if err != nil {
		return nil, err
	}
	return vmView(vm, r, h.liveNow()), nil
}

// checkAttachable checks that disk name exists, is free and usable.
func (h *Host) checkAttachable(ctx context.Context, r *store.Records, name string) error {
	d, ok := r.Disks[name]
	if !ok {
		return notFound("disk", name)
	}
	if d.ManagedBy != "" {
		return conflict("disk %q is already attached to VM %q; a disk is attached to one VM at a time", name, d.ManagedBy)
	}
	return h.usable(ctx, d)
}

// CreateVM creates a VM with its OS disk (new or existing) and data disks,
// and starts it. The VM's record and its disks' attachment are one
// transaction (with the new OS disk's record, if any).
func (h *Host) CreateVM(ctx context.Context, req api.CreateVMRequest) (*api.VM, error) {
	if err := checkName("VM", req.Name); err != nil {
		return nil, err
	}
	release, err := h.claim("being created", "vm/"+req.Name)
	if err != nil {
		return nil, err
	}
	defer release()
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := r.VMs[req.Name]; ok {
		return nil, conflict("VM %q already exists; choose another name or delete it first", req.Name)
	}
	eah := req.EncryptionAtHost == nil || *req.EncryptionAtHost
	if (req.OsDisk == "") == (req.OsDiskSizeBytes == 0) {
		return nil, badRequest("give exactly one of --os-disk (an existing disk) or --os-disk-size (a new one)")
	}
	if req.OsDiskCaching == "" {
		req.OsDiskCaching = api.DefaultOsDiskCaching
	}
	if err := checkCaching(req.OsDiskCaching); err != nil {
		return nil, err
	}
	if req.TempDiskSize != 0 {
		if err := checkTempSize("tempDiskSizeBytes", req.TempDiskSize); err != nil {
			return nil, err
		}
	}
	if req.OsDiskSizeBytes != 0 {
		// The new OS disk has the default sku and sector size.
		if err := checkDiskSize("osDiskSizeBytes", req.OsDiskSizeBytes, api.DefaultSectorSize, api.DefaultSku); err != nil {
			return nil, err
		}
	}
	if len(req.DataDisks) > api.MaxDataDisks {
		return nil, badRequest("%d data disks: a VM has at most %d (LUNs 0 to %d)", len(req.DataDisks), api.MaxDataDisks, api.MaxDataDisks-1)
	}
	// Check every data disk before changing anything.
	seen := map[string]bool{}
	if req.OsDisk != "" {
		if err := h.checkAttachable(ctx, r, req.OsDisk); err != nil {
			return nil, err
		}
		seen[req.OsDisk] = true
	}
	data := make([]store.AttachedDisk, len(req.DataDisks))
	for i, dd := range req.DataDisks {
		if dd.Caching == "" {
			dd.Caching = api.DefaultDataDiskCaching
		}
		if err := checkCaching(dd.Caching); err != nil {
			return nil, err
		}
		if seen[dd.Name] {
			return nil, badRequest("disk %q is listed twice", dd.Name)
		}
		seen[dd.Name] = true
		if err := h.checkAttachable(ctx, r, dd.Name); err != nil {
			return nil, err
		}
		lun := i
		data[i] = store.AttachedDisk{Name: dd.Name, Lun: &lun, Caching: dd.Caching}
	}
	p, err := h.checkCreateVM(r, req)
	if err != nil {
		return nil, err
	}
	osName := req.OsDisk
	if osName == "" {
		osName = req.Name + "_OsDisk"
	}
	vm := &store.VM{
		Name:              req.Name,
		ID:                resourceID(p, typeVMs, req.Name),
		Placement:         p,
		ADE:               req.ADE,
		PowerState:        api.PowerDeallocated,
		SecurityProfile:   store.SecurityProfile{EncryptionAtHost: eah},
		StorageProfile:    store.StorageProfile{OsDisk: store.AttachedDisk{Name: osName, Caching: req.OsDiskCaching}, DataDisks: data},
		TempDiskSizeBytes: req.TempDiskSize,
		TimeCreated:       h.cfg.Now().UTC(),
	}
	add := func(r *store.Records) error {
		if _, ok := r.VMs[req.Name]; ok {
			return conflict("VM %q already exists; choose another name or delete it first", req.Name)
		}
		for _, n := range vm.DiskNames() {
			d := r.Disks[n]
			switch {
			case d == nil:
				return notFound("disk", n)
			case d.ManagedBy != "":
				return conflict("disk %q is already attached to VM %q; a disk is attached to one VM at a time", n, d.ManagedBy)
			}
			if err := converting(d); err != nil {
				return err
			}
		}
		r.VMs[req.Name] = vm
		for _, n := range vm.DiskNames() {
			r.Disks[n].ManagedBy, r.Disks[n].DiskState = req.Name, api.DiskReserved
		}
		return nil
	}
	if req.OsDisk == "" {
		_, err = h.createDisk(ctx, api.CreateDiskRequest{Name: osName, SizeBytes: req.OsDiskSizeBytes,
			Location: p.Location, Subscription: p.Subscription, ResourceGroup: p.ResourceGroup, ADE: req.ADE},
			func(r *store.Records, _ *store.Disk) error { return add(r) })
	} else {
		_, err = h.update(ctx, add)
	}
	if err != nil {
		return nil, err
	}
	if err := h.start(ctx, req.Name, nil); err != nil {
		return nil, fmt.Errorf("VM %q was created but did not start: %w", req.Name, err)
	}
	return h.vmNow(ctx, req.Name)
}

// StartVM starts a stopped or deallocated VM.
func (h *Host) StartVM(ctx context.Context, name string) (*api.VM, error) {
	release, err := h.claim("starting", "vm/"+name)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := h.start(ctx, name, nil); err != nil {
		return nil, err
	}
	return h.vmNow(ctx, name)
}

// start opens every disk of VM name and shows it in the tree, then records
// the VM running and its disks attached, in one transaction. On failure
// nothing stays open or visible. The caller has claimed the VM.
//
// On a shared store the VM's disks are opened on w, a connection of the
// VM's own (opened here when nil); start closes w when it fails.
func (h *Host) start(ctx context.Context, name string, w VMWriter) error {
	owned := false
	defer func() {
		if !owned && w != nil {
			w.Close()
		}
	}()
	r, err := h.load(ctx)
	if err != nil {
		return err
	}
	vm, ok := r.VMs[name]
	if !ok {
		return notFound("VM", name)
	}
	if err := h.runsElsewhere(vm); err != nil {
		return err
	}
	if h.isRunning(name) || vm.PowerState == api.PowerRunning && !h.recovering(name) {
		return conflict("VM %q is already running", name)
	}
	if err := checkVMRecord(r, vm); err != nil {
		return err
	}
	for _, n := range vm.DiskNames() {
		if err := h.usable(ctx, r.Disks[n]); err != nil {
			return err
		}
	}
	// Its disks are claimed while they open: a copy of one of them that
	// began while it was not in use must finish first.
	var disks []string
	for _, n := range vm.DiskNames() {
		disks = append(disks, "disk/"+n)
	}
	releaseDisks, err := h.claim("VM "+name+" is starting with it", disks...)
	if err != nil {
		return err
	}
	defer releaseDisks()
	if err := h.checkStartKeys(ctx, r, vm); err != nil {
		return err
	}
	rv := &runningVM{name: name, images: map[string]*attachment{}}
	started := false
	defer func() {
		// Also when a panic goes through: nothing stays open or visible.
		if !started {
			h.closeAll(rv)
		}
	}()
	rv.w, owned = w, true // closeAll closes it
	if rv.w == nil && h.cfg.Writers != nil {
		if rv.w, err = h.cfg.Writers.Open(ctx, name); err != nil {
			return fmt.Errorf("VM %q: opening its own connection to the storage: %w", name, err)
		}
	}
	eah := vm.SecurityProfile.EncryptionAtHost
	for _, ad := range append([]store.AttachedDisk{vm.StorageProfile.OsDisk}, vm.StorageProfile.DataDisks...) {
		d := r.Disks[ad.Name]
		be, release, err := h.diskStorage(ctx, rv.w, name, d)
		if err != nil {
			return err
		}
		vol, err := h.openAttached(ctx, r, name, d, be, ad.Caching, eah)
		if err != nil {
			release()
			return err
		}
		file := imageName(ad.Lun)
		rv.images[file] = &attachment{file: file, disk: ad.Name, vol: vol, release: release}
		if err := h.cfg.Tree.AddImage(name, file, vol.Image()); err != nil {
			return err
		}
	}
	if vm.TempDiskSizeBytes > 0 {
		vol, err := h.openTemp(ctx, vm)
		if err != nil {
			return err
		}
		rv.images[tempImage] = &attachment{file: tempImage, vol: vol}
		if err := h.cfg.Tree.AddImage(name, tempImage, vol.Image()); err != nil {
			return err
		}
	}
	leaseUntil := time.Now().Add(h.cfg.DEKLease)
	for _, a := range rv.images {
		if d := r.Disks[a.disk]; d != nil && d.Encryption.DiskEncryptionSetID != "" {
			a.vol.SetLease(leaseUntil)
		}
	}
	if _, err := h.update(ctx, func(r *store.Records) error {
		vm, ok := r.VMs[name]
		if !ok {
			return notFound("VM", name)
		}
		if err := checkVMRecord(r, vm); err != nil {
			return err
		}
		// Another host may have started it since it was read: of two
		// hosts starting one VM, the first to commit runs it.
		if err := h.runsElsewhere(vm); err != nil {
			return err
		}
		for _, n := range vm.DiskNames() {
			if err := converting(r.Disks[n]); err != nil {
				return err
			}
		}
		vm.PowerState, vm.PowerStateReason, vm.KeyWarning = api.PowerRunning, "", ""
		vm.Host = h.hostTag()
		for _, n := range vm.DiskNames() {
			r.Disks[n].DiskState = api.DiskAttached
		}
		return nil
	}); err != nil {
		return err
	}
	h.mu.Lock()
	h.running[name] = rv
	h.mu.Unlock()
	started = true
	h.log.Info("VM started", "vm", name, "images", len(rv.images))
	return nil
}

// recovering tells whether VM name is being brought back by Recover: its
// record says running, but nothing of it is open yet.
func (h *Host) recovering(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.busy["vm/"+name] == recoverOp
}

const recoverOp = "coming back after a restart of the host"

// cacheDir is the base of a disk's host cache directories ("" without
// host caching).
func (h *Host) cacheDir(d *store.Disk) string {
	if h.cfg.CacheDir == "" {
		return ""
	}
	return filepath.Join(h.cfg.CacheDir, d.UniqueID)
}

// openAttached opens a disk for running VM vm with the host cache its
// attachment asks for (see package volume).
func (h *Host) openAttached(ctx context.Context, r *store.Records, vm string, d *store.Disk, be storage.Backend, caching string, eah bool) (*volume.Volume, error) {
	if caching == "" {
		caching = api.CacheNone // records older than host caching
	}
	if err := checkCaching(caching); err != nil {
		return nil, err
	}
	return volume.Open(ctx, volume.Config{
		Name: d.Name, VM: vm, Observer: h.cfg.Observer, Storage: be, Prefix: d.StoragePrefix,
		Keys: h.unwrapperFor(r, "disk "+d.Name, d.Encryption), OpenOptions: openOptions(d.Encryption),
		Caching: cache.Mode(caching), EncryptionAtHost: eah,
		CacheDir: h.cacheDir(d), CacheBytes: h.cfg.CacheSize,
		SequentialCutoff: h.cfg.CacheSequentialCutoff, SlowStorage: h.cfg.CacheSlowStorage,
		FlushInterval: h.cfg.FlushInterval, Log: h.log,
		SharedStorage: h.shared(),
	})
}

// openTemp opens the VM's temp disk, creating an empty one if it has none
// (first start, or after a deallocation destroyed it). It lives on the
// host, never in storage. With encryption at host it is an encrypted disk
// under a platform-wrapped key of its own; without, a plaintext sparse file,
// as a host without encryption at host keeps it.
func (h *Host) openTemp(ctx context.Context, vm *store.VM) (*volume.Volume, error) {
	if !vm.SecurityProfile.EncryptionAtHost {
		ch, err := h.cfg.HostLocal.OpenChunk(ctx, plainTempKey(vm.Name), true)
		if err != nil {
			return nil, fmt.Errorf("temp disk of VM %q: %w", vm.Name, err)
		}
		return volume.Plain("temp disk of VM "+vm.Name, ch, vm.TempDiskSizeBytes), nil
	}
	d, err := disk.Open(ctx, h.cfg.HostLocal, tempPrefix(vm.Name), h.platformUnwrapper())
	if errors.Is(err, keys.ErrKeyGone) {
		// Its key was destroyed (a deallocation cut short, or files put
		// back from a copy): what is there can never be read again.
		h.log.Warn("the temp disk's key no longer exists; starting with a new, empty temp disk", "vm", vm.Name)
		err = disk.ErrNotFound
	}
	if errors.Is(err, disk.ErrNotFound) {
		// A destroyed temp disk whose removal was cut short: finish it.
		_ = disk.Destroy(ctx, h.cfg.HostLocal, tempPrefix(vm.Name))
		var w disk.KeyWrapper
		if w, err = h.keys.TempWrapper(ctx); err != nil {
			return nil, fmt.Errorf("temp disk of VM %q: creating its key: %w", vm.Name, classified(h.keys, err))
		}
		d, err = disk.Create(ctx, h.cfg.HostLocal, tempPrefix(vm.Name), disk.CreateOptions{
			Size: vm.TempDiskSizeBytes, SectorSize: 512, Layers: []disk.KeyWrapper{w},
		})
	}
	if err != nil {
		return nil, fmt.Errorf("temp disk of VM %q: %w", vm.Name, classified(h.keys, err))
	}
	return volume.FromDisk("temp disk of VM "+vm.Name, d, h.cfg.FlushInterval), nil
}

// closeAll removes a VM's images from the tree, then flushes and closes its
// disks, which wipes their keys from memory. It returns the integrity
// errors each disk counted while open, for its record.
func (h *Host) closeAll(rv *runningVM) (map[string]uint64, error) {
	var errs []error
	files := slices.Sorted(func(yield func(string) bool) {
		for f := range rv.images {
			if !yield(f) {
				return
			}
		}
	})
	for _, f := range files {
		if err := h.cfg.Tree.RemoveImage(rv.name, f); err != nil {
			errs = append(errs, err)
		}
	}
	_ = h.cfg.Tree.RemoveVM(rv.name)
	counts := map[string]uint64{}
	for _, f := range files {
		a := rv.images[f]
		n, err := a.close()
		if a.disk != "" {
			counts[a.disk] += n
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("flushing %s of VM %q: %w", f, rv.name, err))
		}
	}
	if rv.w != nil {
		if err := rv.w.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the storage connection of VM %q: %w", rv.name, err))
		}
	}
	return counts, errors.Join(errs...)
}

// addIntegrityErrors adds what closed volumes counted to their disks'
// records.
func addIntegrityErrors(r *store.Records, counts map[string]uint64) {
	for name, n := range counts {
		if d := r.Disks[name]; d != nil {
			d.IntegrityErrors += n
		}
	}
}

// StopVM stops a running VM: its images disappear, every disk is flushed and
// closed and its keys wiped. The temp disk is kept.
func (h *Host) StopVM(ctx context.Context, name, reason string) (*api.VM, error) {
	release, err := h.claim("stopping", "vm/"+name)
	if err != nil {
		return nil, err
	}
	defer release()
	_, vm, err := h.loadVM(ctx, name)
	if err != nil {
		return nil, err
	}
	if vm.PowerState != api.PowerRunning {
		return nil, conflict("VM %q is not running (it is %s)", name, vm.PowerState)
	}
	if err := h.runsElsewhere(vm); err != nil {
		return nil, err
	}
	if err := h.stop(ctx, name, api.PowerStopped, reason); err != nil {
		return nil, err
	}
	return h.vmNow(ctx, name)
}

// stop closes what of VM name is open and records its new state. The
// caller has claimed the VM.
func (h *Host) stop(ctx context.Context, name, state, reason string) error {
	h.mu.Lock()
	rv := h.running[name]
	delete(h.running, name)
	h.mu.Unlock()
	var counts map[string]uint64
	var cerr error
	if rv != nil {
		counts, cerr = h.closeAll(rv)
	}
	if reason == "" {
		reason = "stopped by the user"
	}
	_, err := h.update(ctx, func(r *store.Records) error {
		addIntegrityErrors(r, counts)
		vm := r.VMs[name]
		if vm == nil || h.runsElsewhere(vm) != nil {
			return nil // another host's to record
		}
		vm.PowerState, vm.PowerStateReason, vm.Host = state, reason, ""
		if state == api.PowerDeallocated {
			for _, n := range vm.DiskNames() {
				if d := r.Disks[n]; d != nil {
					d.DiskState = api.DiskReserved
				}
			}
		}
		return nil
	})
	h.log.Info("VM stopped", "vm", name, "state", state, "reason", reason)
	return errors.Join(cerr, err)
}

// DeallocateVM stops a VM (if running) and destroys its temp disk: the key
// first, then the file. Its disks become Reserved.
func (h *Host) DeallocateVM(ctx context.Context, name string) (*api.VM, error) {
	release, err := h.claim("deallocating", "vm/"+name)
	if err != nil {
		return nil, err
	}
	defer release()
	r, vm, err := h.loadVM(ctx, name)
	if err != nil {
		return nil, err
	}
	if vm.PowerState == api.PowerDeallocated {
		return vmView(vm, r, h.liveNow()), nil
	}
	if err := h.runsElsewhere(vm); err != nil {
		return nil, err
	}
	if err := h.stop(ctx, name, api.PowerDeallocated, "deallocated by the user"); err != nil {
		return nil, err
	}
	if err := h.destroyTemp(ctx, name); err != nil {
		return nil, err
	}
	return h.vmNow(ctx, name)
}

// destroyTempKeys destroys the keys the temp disk under prefix is wrapped
// with. A temp disk without metadata has nothing to destroy.
func (h *Host) destroyTempKeys(ctx context.Context, prefix string) error {
	m, err := disk.ReadMetadata(ctx, h.cfg.HostLocal, prefix)
	if errors.Is(err, disk.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range m.Layers {
		for _, w := range l.WrappedKeys {
			errs = append(errs, classified(h.keys, h.keys.DestroyTempKey(ctx, w.KeyID)))
		}
	}
	return errors.Join(errs...)
}

func (h *Host) destroyTemp(ctx context.Context, vm string) error {
	// The key first: from then on the data is unreadable, also from a copy
	// of the files. The files go even if that fails.
	var errs []error
	if err := h.destroyTempKeys(ctx, tempPrefix(vm)); err != nil {
		err = fmt.Errorf("VM %q: destroying the temp disk's key in the key store: %w (its files are removed; the key remains until it is deleted there)", vm, err)
		h.log.Error("temp disk key not destroyed", "vm", vm, "err", err)
		errs = append(errs, err)
	}
	if err := disk.Destroy(ctx, h.cfg.HostLocal, tempPrefix(vm)); err != nil && !errors.Is(err, disk.ErrNotFound) {
		errs = append(errs, fmt.Errorf("destroying the temp disk of VM %q: %w", vm, err))
	}
	if err := h.cfg.HostLocal.Delete(ctx, plainTempKey(vm)); err != nil && !errors.Is(err, storage.ErrNotFound) {
		errs = append(errs, fmt.Errorf("removing the plaintext temp disk of VM %q: %w", vm, err))
	}
	return errors.Join(errs...)
}

// DeleteVM deletes a VM that is not running. Its disks stay, unattached; its
// temp disk is destroyed.
func (h *Host) DeleteVM(ctx context.Context, name string) error {
	release, err := h.claim("being deleted", "vm/"+name)
	if err != nil {
		return err
	}
	defer release()
	r, err := h.load(ctx)
	if err != nil {
		return err
	}
	vm, ok := r.VMs[name]
	if !ok {
		return notFound("VM", name)
	}
	if vm.PowerState == api.PowerRunning {
		return conflict("VM %q is running; stop or deallocate it first (hostcrypt vm deallocate --name %s)", name, name)
	}
	if err := h.destroyTemp(ctx, name); err != nil {
		return err
	}
	_, err = h.update(ctx, func(r *store.Records) error {
		vm, ok := r.VMs[name]
		if !ok {
			return notFound("VM", name)
		}
		if vm.PowerState == api.PowerRunning {
			return conflict("VM %q is running; stop or deallocate it first (hostcrypt vm deallocate --name %s)", name, name)
		}
		for _, n := range vm.DiskNames() {
			if d := r.Disks[n]; d != nil && d.ManagedBy == name {
				d.ManagedBy, d.DiskState = "", api.DiskUnattached
			}
		}
		delete(r.VMs, name)
		return nil
	})
	return err
}

// AttachDisk attaches a disk as a data disk; on a running VM its image
// appears at once.
func (h *Host) AttachDisk(ctx context.Context, vmName string, req api.AttachRequest) (*api.VM, error) {
	release, err := h.claim("attaching disk "+req.Disk, "vm/"+vmName, "disk/"+req.Disk)
	if err != nil {
		return nil, err
	}
	defer release()
	r, vm, err := h.loadVM(ctx, vmName)
	if err != nil {
		return nil, err
	}
	if err := h.runsElsewhere(vm); err != nil {
		return nil, err
	}
	if err := h.checkAttachable(ctx, r, req.Disk); err != nil {
		return nil, err
	}
	d := r.Disks[req.Disk]
	if err := checkAttach(vm, d); err != nil {
		return nil, err
	}
	if req.Caching == "" {
		req.Caching = api.DefaultDataDiskCaching
	}
	if err := checkCaching(req.Caching); err != nil {
		return nil, err
	}
	lun, err := pickLun(vm, req.Lun)
	if err != nil {
		return nil, err
	}
	var a *attachment
	if h.isRunning(vmName) {
		h.mu.Lock()
		var w VMWriter
		if rv := h.running[vmName]; rv != nil {
			w = rv.w
		}
		h.mu.Unlock()
		be, release, err := h.diskStorage(ctx, w, vmName, d)
		if err != nil {
			return nil, err
		}
		vol, err := h.openAttached(ctx, r, vmName, d, be, req.Caching, vm.SecurityProfile.EncryptionAtHost)
		if err != nil {
			release()
			return nil, err
		}
		a = &attachment{file: imageName(&lun), disk: req.Disk, vol: vol, release: release}
		if err := h.cfg.Tree.AddImage(vmName, a.file, vol.Image()); err != nil {
			a.close()
			return nil, err
		}
		if d.Encryption.DiskEncryptionSetID != "" {
			vol.SetLease(time.Now().Add(h.cfg.DEKLease))
		}
	}
	_, err = h.update(ctx, func(r *store.Records) error {
		vm, ok := r.VMs[vmName]
		if !ok {
			return notFound("VM", vmName)
		}
		d, ok := r.Disks[req.Disk]
		if !ok {
			return notFound("disk", req.Disk)
		}
		if d.ManagedBy != "" {
			return conflict("disk %q is already attached to VM %q; a disk is attached to one VM at a time", req.Disk, d.ManagedBy)
		}
		if _, err := pickLun(vm, &lun); err != nil {
			return err
		}
		d.ManagedBy, d.DiskState = vmName, api.DiskReserved
		if a != nil {
			d.DiskState = api.DiskAttached
		}
		vm.StorageProfile.DataDisks = append(vm.StorageProfile.DataDisks, store.AttachedDisk{Name: req.Disk, Lun: &lun, Caching: req.Caching})
		sort.Slice(vm.StorageProfile.DataDisks, func(i, j int) bool {
			return *vm.StorageProfile.DataDisks[i].Lun < *vm.StorageProfile.DataDisks[j].Lun
		})
		return nil
	})
	if a != nil {
		if err != nil {
			h.cfg.Tree.RemoveImage(vmName, a.file)
			a.close()
		} else {
			h.mu.Lock()
			if rv := h.running[vmName]; rv != nil {
				rv.images[a.file] = a
			}
			h.mu.Unlock()
		}
	}
	if err != nil {
		return nil, err
	}
	return h.vmNow(ctx, vmName)
}

// pickLun returns the LUN asked for, checked, or the lowest free one.
func pickLun(vm *store.VM, want *int) (int, error) {
	used := map[int]string{}
	for _, dd := range vm.StorageProfile.DataDisks {
		if dd.Lun != nil {
			used[*dd.Lun] = dd.Name
		}
	}
	if want != nil {
		lun := *want
		if lun < 0 || lun > api.MaxDataDisks-1 {
			return 0, badRequest("LUN %d: use 0 to %d", lun, api.MaxDataDisks-1)
		}
		if other, ok := used[lun]; ok {
			return 0, conflict("LUN %d of VM %q is in use by disk %q; pick a free LUN or leave --lun out", lun, vm.Name, other)
		}
		return lun, nil
	}
	lun := 0
	for used[lun] != "" {
		lun++
	}
	if lun > api.MaxDataDisks-1 {
		return 0, conflict("VM %q has %d data disks, the most a VM has", vm.Name, api.MaxDataDisks)
	}
	return lun, nil
}

// DetachDisk detaches a data disk; on a running VM its image disappears and
// the disk is flushed and closed first.
func (h *Host) DetachDisk(ctx context.Context, vmName, diskName string) (*api.VM, error) {
	release, err := h.claim("detaching disk "+diskName, "vm/"+vmName, "disk/"+diskName)
	if err != nil {
		return nil, err
	}
	defer release()
	_, vm, err := h.loadVM(ctx, vmName)
	if err != nil {
		return nil, err
	}
	if err := h.runsElsewhere(vm); err != nil {
		return nil, err
	}
	if vm.StorageProfile.OsDisk.Name == diskName {
		return nil, conflict("disk %q is the OS disk of VM %q; an OS disk cannot be detached", diskName, vmName)
	}
	i := slices.IndexFunc(vm.StorageProfile.DataDisks, func(a store.AttachedDisk) bool { return a.Name == diskName })
	if i < 0 {
		return nil, notFound("data disk of VM "+vmName, diskName)
	}
	file := imageName(vm.StorageProfile.DataDisks[i].Lun)
	var counts map[string]uint64
	h.mu.Lock()
	var a *attachment
	if rv := h.running[vmName]; rv != nil {
		a = rv.images[file]
	}
	h.mu.Unlock()
	if a != nil {
		if err := h.cfg.Tree.RemoveImage(vmName, file); err != nil {
			return nil, err
		}
		h.mu.Lock()
		if rv := h.running[vmName]; rv != nil {
			delete(rv.images, file)
		}
		h.mu.Unlock()
		n, err := a.close()
		counts = map[string]uint64{diskName: n}
		if err != nil {
			return nil, fmt.Errorf("flushing disk %q: %w", diskName, err)
		}
	}
	_, err = h.update(ctx, func(r *store.Records) error {
		addIntegrityErrors(r, counts)
		vm, ok := r.VMs[vmName]
		if !ok {
			return notFound("VM", vmName)
		}
		vm.StorageProfile.DataDisks = slices.DeleteFunc(vm.StorageProfile.DataDisks, func(a store.AttachedDisk) bool { return a.Name == diskName })
		// A record naming a disk that does not exist is mended this way too.
		if d := r.Disks[diskName]; d != nil && d.ManagedBy == vmName {
			d.ManagedBy, d.DiskState = "", api.DiskUnattached
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return h.vmNow(ctx, vmName)
}
