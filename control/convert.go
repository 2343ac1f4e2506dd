package control

import (
	"context"
	"errors"
	"fmt"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
	"hostcrypt/storage"
)

// converting refuses what must wait for a disk's conversion (or its import
// or export) to finish.
func converting(d *store.Disk) error {
	if err := transferring(d); err != nil {
		return err
	}
	if c := d.Conversion; c != nil {
		if c.Error != "" {
			return conflict("disk %q stopped converting to %s at chunk %d of %d: %s; fix the cause and restart hostcryptd to resume", d.Name, c.TargetEncryptionType, c.NextChunk, c.TotalChunks, c.Error)
		}
		return conflict("disk %q is being converted to %s (%d of %d chunks); wait for it to finish", d.Name, c.TargetEncryptionType, c.NextChunk, c.TotalChunks)
	}
	return nil
}

// startConversion turns double encryption on for an existing disk: its data
// is re-encrypted, chunk by chunk, into a new disk object with a fresh data
// key under the set's key plus an independent platform-wrapped
// infrastructure key, in the background. The record's Conversion is what
// keeps the disk from being used meanwhile.
//
// lk is the disk's writer lock (lockForOp): the conversion keeps it until
// it is done.
func (h *Host) startConversion(ctx context.Context, d *store.Disk, des *store.DES, lk *opLock) (*api.Disk, error) {
	if err := checkDoubleEncryptionSku(d.Name, d.Sku.Name); err != nil {
		return nil, err
	}
	wrappers, err := h.wrappersFor(ctx, api.EncPlatformAndCustomerKey, des)
	if err != nil {
		return nil, err
	}
	target := "disks/" + newID()
	done, err := h.beginIntent(ctx, target, "double-encrypted copy of disk "+d.Name, "", "", nil)
	if err != nil {
		return nil, err
	}
	defer done()
	nd, err := disk.Create(ctx, h.cfg.Storage, target, disk.CreateOptions{
		Size: d.DiskSizeBytes, SectorSize: d.LogicalSectorSize, Layers: wrappers,
	})
	if err != nil {
		h.abandonIntent(ctx, target)
		return nil, fmt.Errorf("disk %q: preparing the double-encrypted copy: %w", d.Name, err)
	}
	total := nd.ChunkCount()
	if err := nd.Close(); err != nil {
		h.abandonIntent(ctx, target)
		return nil, err
	}
	var out *store.Disk
	if _, err := h.update(ctx, func(r *store.Records) error {
		d, ok := r.Disks[d.Name]
		if !ok {
			return notFound("disk", d.Name)
		}
		if err := converting(d); err != nil {
			return err
		}
		d.Encryption.DiskEncryptionSetID = des.ID
		d.Conversion = &store.Conversion{Host: h.hostTag(), TargetEncryptionType: api.EncPlatformAndCustomerKey, TargetPrefix: target,
			TotalChunks: total, Started: h.cfg.Now().UTC()}
		delete(r.Intents, target)
		out = d
		return nil
	}); err != nil {
		h.abandonIntent(ctx, target)
		return nil, err
	}
	h.log.Info("converting disk to double encryption", "disk", d.Name, "chunks", total)
	h.goConvert(d.Name, lk.handOver())
	return diskView(out, h.liveNow()), nil
}

// goConvert runs the conversion of disk name in the background, under its
// writer lock lk, or one it takes when lk is nil (a conversion resumed).
func (h *Host) goConvert(name string, lk *opLock) {
	h.bgWG.Add(1)
	go func() {
		defer h.bgWG.Done()
		h.runConversion(h.bg, name, lk)
	}()
}

func (h *Host) runConversion(ctx context.Context, name string, lk *opLock) {
	if lk != nil {
		defer lk.Release()
	}
	r, err := h.load(ctx)
	if err != nil {
		h.log.Error("disk conversion: reading the state", "disk", name, "err", err)
		return
	}
	d := r.Disks[name]
	if d == nil || d.Conversion == nil {
		return
	}
	conv := *d.Conversion
	src, dst, unw := d.StoragePrefix, conv.TargetPrefix, h.unwrapperFor(r, "disk "+name, d.Encryption)

	// The copy runs under the disk's writer lock (a shared store's other
	// hosts are kept off it), until the record names the copy.
	if lk == nil {
		lk, err = h.lockForOp(ctx, d, "conversion to double encryption")
		if err == nil {
			defer lk.Release()
		}
	}
	if err == nil {
		err = h.copyForConversion(ctx, lk.Storage, name, src, dst, conv.NextChunk, unw, openOptions(d.Encryption)...)
	}
	if err != nil {
		if _, serr := h.recordDisk(ctx, name, func(d *store.Disk) error {
			if d.Conversion != nil && ctx.Err() == nil {
				d.Conversion.Error = err.Error()
			}
			return nil
		}); serr != nil {
			h.log.Error("saving a conversion's state", "disk", name, "err", serr)
		}
		if ctx.Err() == nil {
			h.log.Error("disk conversion stopped", "disk", name, "err", err)
		}
		return
	}
	m, err := disk.ReadMetadata(ctx, h.cfg.Storage, dst)
	if err != nil {
		h.recordDisk(ctx, name, func(d *store.Disk) error {
			if d.Conversion != nil {
				d.Conversion.Error = err.Error()
			}
			return nil
		})
		return
	}
	// The old copy goes last, recorded in the same transaction (see
	// removal.go): keys first, then data.
	if _, err := h.update(ctx, func(r *store.Records) error {
		d := r.Disks[name]
		if d == nil || d.Conversion == nil {
			return errors.New("the disk's conversion was cancelled")
		}
		d.StoragePrefix = dst
		d.Encryption.Type = conv.TargetEncryptionType
		d.KeyID = m.Layers[0].WrappedKeys[0].KeyID
		d.Conversion = nil
		h.addRemoval(r, src, "single-layer copy of disk "+name, 0)
		return nil
	}); err != nil {
		h.log.Error("saving a finished conversion", "disk", name, "err", err)
		return
	}
	lk.Release()
	h.log.Info("disk converted to double encryption", "disk", name)
	if err := h.finishRemoval(context.WithoutCancel(ctx), src); err != nil {
		h.log.Error("removing the single-layer copy after conversion; the next start tries again", "disk", name, "prefix", src, "err", err)
	}
}

// conversionProgress prefixes the progress key of a disk's conversion.
const conversionProgress = "conversions/"

// convertSaveEvery is how many chunks a conversion copies between two saves
// of its progress.
const convertSaveEvery = 64

// copyForConversion copies disk name's chunks from prefix src to prefix
// dst, both reached through be (what lockForOp gave), from chunk from on.
func (h *Host) copyForConversion(ctx context.Context, be storage.Backend, name, src, dst string, from int64, unw disk.KeyUnwrapper, opts ...disk.OpenOption) error {
	s, err := disk.Open(ctx, be, src, unw, opts...)
	if err != nil {
		return err
	}
	defer s.Close()
	t, err := disk.Open(ctx, be, dst, unw, opts...)
	if err != nil {
		return err
	}
	defer t.Close()
	// Progress is saved every convertSaveEvery chunks: CopyChunks reports
	// every chunk index, also the millions of a large disk that were never
	// written, and each save is a commit of the records. A resume from the
	// last save copies at most that many chunks again.
	saved := from
	pkey := conversionProgress + name
	defer h.prog.clear(pkey)
	total := s.ChunkCount()
	return disk.CopyChunks(ctx, s, t, from, func(next int64) error {
		// Shown at once (disk show), saved now and then.
		h.prog.set(pkey, "conversion of disk "+name, next, total)
		if err := h.copying(ctx, "conversion of disk "+name); err != nil {
			return err
		}
		if next-saved < convertSaveEvery {
			return nil
		}
		saved = next
		_, err := h.recordDisk(ctx, name, func(d *store.Disk) error {
			if d.Conversion == nil {
				return errors.New("the disk's conversion was cancelled")
			}
			d.Conversion.NextChunk = next
			return nil
		})
		return err
	})
}
