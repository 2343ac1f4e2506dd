package control

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
	"hostcrypt/volume"
)

// UpdateVM changes encryption at host or the caching of a VM's disks. Both
// decide what the host keeps and how, so they change only while the VM is
// deallocated: its caches are written back and its temp disk is gone, and
// the next start builds them anew.
func (h *Host) UpdateVM(ctx context.Context, name string, req api.UpdateVMRequest) (*api.VM, error) {
	if req.EncryptionAtHost == nil && req.OsDiskCaching == "" && len(req.DataDiskCaching) == 0 && req.ADE == nil {
		return nil, badRequest("nothing to update: give --encryption-at-host, --os-disk-caching, --data-disk-caching or --ade")
	}
	release, err := h.claim("updating", "vm/"+name)
	if err != nil {
		return nil, err
	}
	defer release()
	var vm *store.VM
	r, err := h.update(ctx, func(r *store.Records) error {
		var ok bool
		if vm, ok = r.VMs[name]; !ok {
			return notFound("VM", name)
		}
		if req.OsDiskCaching != "" {
			if err := checkCaching(req.OsDiskCaching); err != nil {
				return err
			}
		}
		luns := map[string]int{}
		for i, dd := range vm.StorageProfile.DataDisks {
			luns[dd.Name] = i
		}
		for d, mode := range req.DataDiskCaching {
			if _, ok := luns[d]; !ok {
				return notFound("data disk of VM "+name, d)
			}
			if err := checkCaching(mode); err != nil {
				return err
			}
		}
		if vm.PowerState != api.PowerDeallocated {
			what := "its host caching"
			if req.EncryptionAtHost != nil {
				what = "encryption at host"
			}
			return conflict("VM %q is %s: %s changes only while it is deallocated; run hostcrypt vm deallocate --name %s, update it, then start it again",
				name, vm.PowerState, what, name)
		}
		if err := checkVMUpdate(r, vm, req.EncryptionAtHost, req.ADE); err != nil {
			return err
		}
		if req.EncryptionAtHost != nil {
			vm.SecurityProfile.EncryptionAtHost = *req.EncryptionAtHost
		}
		vm.ADE = vm.ADE || (req.ADE != nil && *req.ADE)
		if req.OsDiskCaching != "" {
			vm.StorageProfile.OsDisk.Caching = req.OsDiskCaching
		}
		for d, mode := range req.DataDiskCaching {
			vm.StorageProfile.DataDisks[luns[d]].Caching = mode
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	h.log.Info("VM updated", "vm", name, "encryptionAtHost", vm.SecurityProfile.EncryptionAtHost)
	return vmView(vm, r, h.liveNow()), nil
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
func (h *Host) VMEncryptionReport(ctx context.Context, name string) (*api.EncryptionReport, error) {
	r, vm, err := h.loadVM(ctx, name)
	if err != nil {
		return nil, err
	}
	eah := vm.SecurityProfile.EncryptionAtHost
	rep := &api.EncryptionReport{VM: name, PowerState: vm.PowerState, EncryptionAtHost: eah, Entries: []api.ReportEntry{}}
	if !eah {
		rep.Warning = plaintextWarning(name)
	}
	images := h.runningImages(name)
	open := images != nil
	by := "host"
	if !eah {
		by = "storage"
	}
	for _, ad := range append([]store.AttachedDisk{vm.StorageProfile.OsDisk}, vm.StorageProfile.DataDisks...) {
		d := r.Disks[ad.Name]
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
			rep.Entries = append(rep.Entries, api.ReportEntry{
				Disk: d.Name, Image: file, Layer: fmt.Sprintf("storage layer %d", l.Layer),
				Location:  "storage: " + d.StoragePrefix,
				Encrypted: true, EncryptedBy: by, Algorithm: l.Algorithm,
				Key: keyOf(w), KeyID: w.KeyID, Open: open,
			})
			algs = append(algs, l.Algorithm)
			keys = append(keys, keyOf(w))
		}
		e := api.ReportEntry{Disk: d.Name, Image: file, Layer: "host cache", Caching: ad.Caching}
		dirs := volume.Config{CacheDir: h.cacheDir(d)}
		switch {
		case ad.Caching == api.CacheNone || ad.Caching == "" || h.cfg.CacheDir == "":
			e.Caching = api.CacheNone // nothing kept on the host: no location
		case eah:
			e.Location, e.Encrypted, e.EncryptedBy = "host: "+hostRel(h.cfg.CacheDir, dirs.SealedDir()), true, "host"
			e.Algorithm, e.Key = strings.Join(algs, " + "), strings.Join(keys, " + ")
		default:
			e.Location = "host: " + hostRel(h.cfg.CacheDir, dirs.PlainDir())
		}
		if a := images[file]; a != nil {
			if s := a.vol.Stats(); s.HasCache {
				e.DirtyBytes, e.Open = s.Cache.DirtyBytes, true
			}
		}
		rep.Entries = append(rep.Entries, e)
	}
	if vm.TempDiskSizeBytes > 0 {
		e := api.ReportEntry{Disk: "(temp)", Image: tempImage, Layer: "temp disk", Open: open}
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

func plaintextWarning(vm string) string {
	return fmt.Sprintf("encryption at host is off for VM %q: its host caches and temp disk are plaintext on this host; only storage is encrypted", vm)
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
