package control

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"hostcrypt/disk"
)

// UpdateVMRequest changes a deallocated VM's host-side settings. Absent
// fields stay as they are.
type UpdateVMRequest struct {
	EncryptionAtHost *bool `json:"encryptionAtHost,omitempty"`
	// OsDiskCaching is the OS disk's new host caching mode.
	OsDiskCaching string `json:"osDiskCaching,omitempty"`
	// DataDiskCaching maps a data disk's name to its new caching mode.
	DataDiskCaching map[string]string `json:"dataDiskCaching,omitempty"`
	// ADE true records that the VM uses guest-level disk encryption; the
	// record cannot be cleared.
	ADE *bool `json:"ade,omitempty"`
}

// UpdateVM changes encryption at host or the caching of a VM's disks. Both
// decide what the host keeps and how, so they change only while the VM is
// deallocated: its caches are written back and its temp disk is gone, and
// the next start builds them anew.
func (h *Host) UpdateVM(ctx context.Context, name string, r UpdateVMRequest) (*VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, err := h.vm(name)
	if err != nil {
		return nil, err
	}
	if r.EncryptionAtHost == nil && r.OsDiskCaching == "" && len(r.DataDiskCaching) == 0 && r.ADE == nil {
		return nil, badRequest("nothing to update: give --encryption-at-host, --os-disk-caching, --data-disk-caching or --ade")
	}
	if r.OsDiskCaching != "" {
		if err := checkCaching(r.OsDiskCaching); err != nil {
			return nil, err
		}
	}
	luns := map[string]int{}
	for i, dd := range vm.StorageProfile.DataDisks {
		luns[dd.Name] = i
	}
	for d, mode := range r.DataDiskCaching {
		if _, ok := luns[d]; !ok {
			return nil, notFound("data disk of VM "+name, d)
		}
		if err := checkCaching(mode); err != nil {
			return nil, err
		}
	}
	if vm.PowerState != PowerDeallocated {
		what := "its host caching"
		if r.EncryptionAtHost != nil {
			what = "encryption at host"
		}
		return nil, conflict("VM %q is %s: %s changes only while it is deallocated; run hostcrypt vm deallocate --name %s, update it, then start it again",
			name, vm.PowerState, what, name)
	}
	if err := h.checkVMUpdate(vm, r.EncryptionAtHost, r.ADE); err != nil {
		return nil, err
	}
	if r.EncryptionAtHost != nil {
		vm.SecurityProfile.EncryptionAtHost = *r.EncryptionAtHost
	}
	vm.ADE = vm.ADE || (r.ADE != nil && *r.ADE)
	if r.OsDiskCaching != "" {
		vm.StorageProfile.OsDisk.Caching = r.OsDiskCaching
	}
	for d, mode := range r.DataDiskCaching {
		vm.StorageProfile.DataDisks[luns[d]].Caching = mode
	}
	h.log.Info("VM updated", "vm", name, "encryptionAtHost", vm.SecurityProfile.EncryptionAtHost)
	return h.showVM(vm), h.save()
}

// EncryptionReport says, for every place a VM's data lives, whether and how
// it is encrypted there.
type EncryptionReport struct {
	VM               string `json:"vm"`
	PowerState       string `json:"powerState"`
	EncryptionAtHost bool   `json:"encryptionAtHost"`
	// Warning is set when something on the host holds plaintext.
	Warning string        `json:"warning,omitempty"`
	Entries []ReportEntry `json:"entries"`
}

// ReportEntry is one layer of one disk.
type ReportEntry struct {
	Disk string `json:"disk"` // disk resource name, or "(temp)"
	// Image is the file the disk appears as while the VM runs.
	Image string `json:"image"`
	// Layer is "storage layer 1", "storage layer 2", "host cache" or
	// "temp disk".
	Layer string `json:"layer"`
	// Location is where the bytes are, as "storage: KEY" under the
	// storage root or "host: PATH" under the host directory; empty when
	// nothing is kept (a disk without a host cache).
	Location  string `json:"location"`
	Encrypted bool   `json:"encrypted"`
	// EncryptedBy is "host" when the bytes leave the host already
	// encrypted, "storage" when only the storage side encrypts them.
	EncryptedBy string `json:"encryptedBy,omitempty"`
	Algorithm   string `json:"algorithm,omitempty"`
	// Key is the key id with its version that wraps the layer's key, or
	// "platform" for a platform-managed key.
	Key        string `json:"key,omitempty"`
	KeyID      string `json:"keyId,omitempty"`
	Caching    string `json:"caching,omitempty"`
	DirtyBytes int64  `json:"dirtyBytes"`
	// Open says whether the layer is in use now (the VM runs).
	Open bool `json:"open"`
}

// keyOf names the key protecting a wrap: customer keys wrap with RSA,
// platform keys with AES key wrap.
func keyOf(w disk.WrappedKey) string {
	if !strings.HasPrefix(w.Algorithm, "RSA") {
		return "platform"
	}
	return w.KeyID
}

// VMEncryptionReport reports, for every disk of the VM and every layer
// (storage layers, host cache, temp disk), where it lives, whether it is
// encrypted, with what and under which key.
func (h *Host) VMEncryptionReport(ctx context.Context, name string) (*EncryptionReport, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, err := h.vm(name)
	if err != nil {
		return nil, err
	}
	eah := vm.SecurityProfile.EncryptionAtHost
	rep := &EncryptionReport{VM: name, PowerState: vm.PowerState, EncryptionAtHost: eah, Entries: []ReportEntry{}}
	if !eah {
		rep.Warning = plaintextWarning(name)
	}
	rv := h.running[name]
	by := "host"
	if !eah {
		by = "storage"
	}
	attached := append([]AttachedDisk{vm.StorageProfile.OsDisk}, vm.StorageProfile.DataDisks...)
	for _, ad := range attached {
		d := h.st.Disks[ad.Name]
		if d == nil {
			continue
		}
		file := imageName(ad.Lun)
		m, err := disk.ReadMetadata(ctx, h.cfg.Storage, d.StoragePrefix)
		if err != nil {
			return nil, fmt.Errorf("disk %q: %w", d.Name, err)
		}
		var algs, keys []string
		for _, l := range m.Layers {
			w := l.WrappedKeys[0]
			rep.Entries = append(rep.Entries, ReportEntry{
				Disk: d.Name, Image: file, Layer: fmt.Sprintf("storage layer %d", l.Layer),
				Location:  "storage: " + d.StoragePrefix,
				Encrypted: true, EncryptedBy: by, Algorithm: l.Algorithm,
				Key: keyOf(w), KeyID: w.KeyID, Open: rv != nil,
			})
			algs = append(algs, l.Algorithm)
			keys = append(keys, keyOf(w))
		}
		e := ReportEntry{Disk: d.Name, Image: file, Layer: "host cache", Caching: ad.Caching}
		var od *openDisk
		if rv != nil {
			od = rv.images[file]
		}
		sealedDir, plainDir := h.cacheDirs(d)
		switch {
		case ad.Caching == CacheNone || h.cfg.CacheDir == "":
			e.Caching = CacheNone // nothing kept on the host: no location
		case eah:
			e.Location, e.Encrypted, e.EncryptedBy = "host: "+hostRel(h.cfg.CacheDir, sealedDir), true, "host"
			e.Algorithm, e.Key = strings.Join(algs, " + "), strings.Join(keys, " + ")
		default:
			e.Location = "host: " + hostRel(h.cfg.CacheDir, plainDir)
		}
		if od != nil {
			if s, ok := od.cacheStats(); ok {
				e.DirtyBytes, e.Open = s.DirtyBytes, true
			}
		}
		rep.Entries = append(rep.Entries, e)
	}
	if vm.TempDiskSizeBytes > 0 {
		e := ReportEntry{Disk: "(temp)", Image: tempImage, Layer: "temp disk", Open: rv != nil}
		if eah {
			e.Location = "host: " + tempPrefix(name)
			e.Encrypted, e.EncryptedBy, e.Key = true, "host", "platform"
			if m, err := disk.ReadMetadata(ctx, h.cfg.HostLocal, tempPrefix(name)); err == nil {
				e.Algorithm, e.KeyID = m.Layers[0].Algorithm, m.Layers[0].WrappedKeys[0].KeyID
			} else {
				e.Algorithm = "XAES-256-GCM"
			}
		} else {
			e.Location = "host: " + plainTempKey(name)
		}
		rep.Entries = append(rep.Entries, e)
	}
	return rep, nil
}

// hostRel names a host cache directory as the report names every location:
// relative to its side's root, here the host directory the cache directory
// lies in (cache/ID, as temp disks are temp/VM).
func hostRel(cacheDir, dir string) string {
	if rel, err := filepath.Rel(filepath.Dir(cacheDir), dir); err == nil {
		return rel
	}
	return dir
}

func plaintextWarning(vm string) string {
	return fmt.Sprintf("encryption at host is off for VM %q: its host caches and temp disk are plaintext on this host; only storage is encrypted", vm)
}
