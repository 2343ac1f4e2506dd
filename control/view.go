package control

import (
	"context"
	"slices"
	"sort"
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/volume"
)

// The API's view of a resource: its record, with the counters of its open
// volume where it has one. Counters are read from the volumes without the
// control lock (volume.Stats).

// live is the counters of the running disks, gathered once per answer.
type live struct {
	disks map[string]volume.Stats // by disk resource
	// images and temp are by VM: the files shown in the tree, and the
	// temp disk's integrity errors.
	images map[string][]string
	temp   map[string]uint64
	// converted is how far running conversions are, in chunks, by disk:
	// ahead of what their records say, which is saved now and then.
	converted map[string]int64
}

// liveNow gathers the counters of every open volume.
func (h *Host) liveNow() live {
	type ref struct {
		vm string
		a  *attachment
	}
	h.mu.Lock()
	var refs []ref
	for vm, rv := range h.running {
		for _, a := range rv.images {
			refs = append(refs, ref{vm, a})
		}
	}
	h.mu.Unlock()
	l := live{disks: map[string]volume.Stats{}, images: map[string][]string{}, temp: map[string]uint64{}, converted: map[string]int64{}}
	h.prog.mu.Lock()
	for k, p := range h.prog.m {
		if name, ok := strings.CutPrefix(k, conversionProgress); ok {
			l.converted[name] = p.Done
		}
	}
	h.prog.mu.Unlock()
	for _, r := range refs {
		s := r.a.vol.Stats()
		l.images[r.vm] = append(l.images[r.vm], r.vm+"/"+r.a.file)
		if r.a.disk == "" {
			l.temp[r.vm] += s.IntegrityErrors
			continue
		}
		prev, ok := l.disks[r.a.disk]
		if ok {
			s.IntegrityErrors += prev.IntegrityErrors
		}
		l.disks[r.a.disk] = s
	}
	for vm := range l.images {
		slices.Sort(l.images[vm])
	}
	return l
}

func diskView(d *store.Disk, l live) *api.Disk {
	v := &api.Disk{
		Name: d.Name, ID: d.ID, UniqueID: d.UniqueID,
		Location: d.Location, Subscription: d.Subscription, ResourceGroup: d.ResourceGroup,
		Sku: api.Sku{Name: d.Sku.Name}, DiskSizeBytes: d.DiskSizeBytes, DiskSizeGB: d.DiskSizeGB,
		LogicalSectorSize: d.LogicalSectorSize,
		Encryption:        api.Encryption{Type: d.Encryption.Type, DiskEncryptionSetID: d.Encryption.DiskEncryptionSetID},
		DiskState:         d.DiskState, ManagedBy: d.ManagedBy, TimeCreated: d.TimeCreated, KeyID: d.KeyID,
		IntegrityErrors: d.IntegrityErrors, ADE: d.ADE, StoragePrefix: d.StoragePrefix, FailureReason: d.FailureReason,
	}
	if c := d.Conversion; c != nil {
		v.Conversion = &api.Conversion{TargetEncryptionType: c.TargetEncryptionType, TargetPrefix: c.TargetPrefix,
			NextChunk: max(c.NextChunk, l.converted[d.Name]), TotalChunks: c.TotalChunks, Started: c.Started, Error: c.Error}
	}
	if t := d.Transfer; t != nil {
		v.Transfer = &api.Transfer{Kind: t.Kind, Path: t.Path, Started: t.Started}
	}
	if s, ok := l.disks[d.Name]; ok {
		v.IntegrityErrors += s.IntegrityErrors
		v.Fenced = s.Fenced
	}
	return v
}

func attachedView(a store.AttachedDisk) api.AttachedDisk {
	return api.AttachedDisk{Name: a.Name, Lun: a.Lun, Caching: a.Caching}
}

func vmView(vm *store.VM, r *store.Records, l live) *api.VM {
	v := &api.VM{
		Name: vm.Name, ID: vm.ID, Location: vm.Location, Subscription: vm.Subscription, ResourceGroup: vm.ResourceGroup,
		PowerState: vm.PowerState, PowerStateReason: vm.PowerStateReason, Host: vm.Host, KeyWarning: vm.KeyWarning,
		SecurityProfile: api.SecurityProfile{EncryptionAtHost: vm.SecurityProfile.EncryptionAtHost},
		StorageProfile: api.StorageProfile{OsDisk: attachedView(vm.StorageProfile.OsDisk),
			DataDisks: make([]api.AttachedDisk, 0, len(vm.StorageProfile.DataDisks))},
		TempDiskSizeBytes: vm.TempDiskSizeBytes, TimeCreated: vm.TimeCreated, ADE: vm.ADE,
		Images: l.images[vm.Name],
	}
	for _, dd := range vm.StorageProfile.DataDisks {
		v.StorageProfile.DataDisks = append(v.StorageProfile.DataDisks, attachedView(dd))
	}
	for _, n := range vm.DiskNames() {
		if d := r.Disks[n]; d != nil {
			v.IntegrityErrors += diskView(d, l).IntegrityErrors
		}
	}
	v.IntegrityErrors += l.temp[vm.Name]
	return v
}

func desView(d *store.DES) *api.DiskEncryptionSet {
	v := &api.DiskEncryptionSet{
		Name: d.Name, ID: d.ID, Location: d.Location, Subscription: d.Subscription, ResourceGroup: d.ResourceGroup,
		EncryptionType:                    d.EncryptionType,
		ActiveKey:                         keyView(d.ActiveKey),
		PreviousKeys:                      []api.KeyForDES{},
		RotationToLatestKeyVersionEnabled: d.RotationToLatestKeyVersionEnabled,
		LastKeyRotationTimestamp:          d.LastKeyRotationTimestamp,
		AutoKeyRotationError:              d.AutoKeyRotationError,
		LastKeyVersionCheck:               d.LastKeyVersionCheck,
		LastKeyVersionFound:               d.LastKeyVersionFound,
		Identity:                          api.Identity{Type: d.Identity.Type, PrincipalID: d.Identity.PrincipalID, TenantID: d.Identity.TenantID},
	}
	if ua := d.Identity.UserAssigned; ua != nil {
		v.Identity.UserAssignedIdentities = map[string]api.UserAssignedIdentityValue{ua.ID: {PrincipalID: ua.PrincipalID, ClientID: ua.ClientID}}
	}
	ki := keyIdentityOf(d)
	v.KeyAccessIdentity = api.KeyAccessIdentity{Type: ki.typ, PrincipalID: ki.principal, TenantID: ki.tenant}
	if d.Identity.UserAssigned != nil {
		v.KeyAccessIdentity.UserAssignedIdentity = d.Identity.UserAssigned.ID
	}
	for _, k := range d.PreviousKeys {
		v.PreviousKeys = append(v.PreviousKeys, keyView(k))
	}
	return v
}

func keyView(k store.KeyForDES) api.KeyForDES {
	return api.KeyForDES{SourceVault: api.SourceVault{ID: k.SourceVault.ID}, KeyURL: k.KeyURL}
}

func encView(e store.Encryption) api.Encryption {
	return api.Encryption{Type: e.Type, DiskEncryptionSetID: e.DiskEncryptionSetID}
}

func snapshotView(s *store.Snapshot) *api.Snapshot {
	return &api.Snapshot{
		Name: s.Name, UniqueID: s.UniqueID, ID: s.ID, Location: s.Location, Subscription: s.Subscription, ResourceGroup: s.ResourceGroup,
		Sku: api.Sku{Name: s.Sku.Name}, SourceDisk: s.SourceDisk, SourceResourceID: s.SourceResourceID, SourceUniqueID: s.SourceUniqueID,
		Incremental: s.Incremental, DiskSizeBytes: s.DiskSizeBytes, LogicalSectorSize: s.LogicalSectorSize,
		Encryption: encView(s.Encryption), KeyID: s.KeyID, TimeCreated: s.TimeCreated, UsedBytes: s.UsedBytes,
		ChunksCopied: s.ChunksCopied, ChunksShared: s.ChunksShared, FreezePauseMicros: s.FreezePauseMicros,
		StoragePrefix: s.StoragePrefix, ObjectBytes: s.ObjectBytes, ADE: s.ADE,
	}
}

func imageView(im *store.Image) *api.Image {
	return &api.Image{
		Name: im.Name, UniqueID: im.UniqueID, ID: im.ID, Location: im.Location, Subscription: im.Subscription, ResourceGroup: im.ResourceGroup,
		SourceKind: im.SourceKind, Source: im.Source, SourceResourceID: im.SourceResourceID, DiskSizeBytes: im.DiskSizeBytes,
		LogicalSectorSize: im.LogicalSectorSize, Encryption: encView(im.Encryption), KeyID: im.KeyID,
		TimeCreated: im.TimeCreated, UsedBytes: im.UsedBytes, StoragePrefix: im.StoragePrefix, ADE: im.ADE,
	}
}

// sortedViews returns the views of every record of m, sorted by name.
func sortedViews[R, V any](m map[string]*R, view func(*R) *V) []*V {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*V, 0, len(names))
	for _, n := range names {
		out = append(out, view(m[n]))
	}
	return out
}

// ShowDisk returns one disk.
func (h *Host) ShowDisk(name string) (*api.Disk, error) {
	r, err := h.load(context.Background())
	if err != nil {
		return nil, err
	}
	d, ok := r.Disks[name]
	if !ok {
		return nil, notFound("disk", name)
	}
	return diskView(d, h.liveNow()), nil
}

// ListDisks returns every disk, sorted by name.
func (h *Host) ListDisks() ([]*api.Disk, error) {
	r, err := h.load(context.Background())
	if err != nil {
		return nil, err
	}
	l := h.liveNow()
	return sortedViews(r.Disks, func(d *store.Disk) *api.Disk { return diskView(d, l) }), nil
}

// ShowVM returns one VM.
func (h *Host) ShowVM(name string) (*api.VM, error) {
	r, err := h.load(context.Background())
	if err != nil {
		return nil, err
	}
	vm, ok := r.VMs[name]
	if !ok {
		return nil, notFound("VM", name)
	}
	return vmView(vm, r, h.liveNow()), nil
}

// ListVMs returns every VM, sorted by name.
func (h *Host) ListVMs() ([]*api.VM, error) {
	r, err := h.load(context.Background())
	if err != nil {
		return nil, err
	}
	l := h.liveNow()
	return sortedViews(r.VMs, func(vm *store.VM) *api.VM { return vmView(vm, r, l) }), nil
}

// ShowSnapshot returns one snapshot.
func (h *Host) ShowSnapshot(name string) (*api.Snapshot, error) {
	r, err := h.load(context.Background())
	if err != nil {
		return nil, err
	}
	s, ok := r.Snapshots[name]
	if !ok {
		return nil, notFound("snapshot", name)
	}
	return snapshotView(s), nil
}

// ListSnapshots returns every snapshot, sorted by name.
func (h *Host) ListSnapshots() ([]*api.Snapshot, error) {
	r, err := h.load(context.Background())
	if err != nil {
		return nil, err
	}
	return sortedViews(r.Snapshots, snapshotView), nil
}

// ShowImage returns one image.
func (h *Host) ShowImage(name string) (*api.Image, error) {
	r, err := h.load(context.Background())
	if err != nil {
		return nil, err
	}
	im, ok := r.Images[name]
	if !ok {
		return nil, notFound("image", name)
	}
	return imageView(im), nil
}

// ListImages returns every image, sorted by name.
func (h *Host) ListImages() ([]*api.Image, error) {
	r, err := h.load(context.Background())
	if err != nil {
		return nil, err
	}
	return sortedViews(r.Images, imageView), nil
}
