package control

import (
	"context"
	"errors"
	"fmt"

	"hostcrypt/disk"
)

// converting refuses what must wait for a disk's conversion (or its import
// or export) to finish.
func converting(d *Disk) error {
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
// infrastructure key, in the background. The caller holds h.mu.
func (h *Host) startConversion(ctx context.Context, d *Disk, des *DiskEncryptionSet) (*Disk, error) {
	if err := checkDoubleEncryptionSku(d.Name, d.Sku.Name); err != nil {
		return nil, err
	}
	wrappers, err := h.wrappersFor(ctx, EncPlatformAndCustomerKey, des)
	if err != nil {
		return nil, err
	}
	target := "disks/" + newID()
	if err := h.beginIntent(target, "double-encrypted copy of disk "+d.Name); err != nil {
		return nil, err
	}
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
	old := *d
	d.Encryption.DiskEncryptionSetID = des.ID
	d.Conversion = &Conversion{TargetEncryptionType: EncPlatformAndCustomerKey, TargetPrefix: target,
		TotalChunks: total, Started: h.cfg.Now().UTC()}
	delete(h.st.Intents, target)
	if err := h.save(); err != nil {
		*d = old
		h.abandonIntent(ctx, target)
		return nil, err
	}
	h.log.Info("converting disk to double encryption", "disk", d.Name, "chunks", total)
	h.goConvert(d.Name)
	return h.showDisk(d), nil
}

func (h *Host) goConvert(name string) {
	h.bgWG.Add(1)
	go func() {
		defer h.bgWG.Done()
		h.runConversion(h.bg, name)
	}()
}

func (h *Host) runConversion(ctx context.Context, name string) {
	h.mu.Lock()
	d := h.st.Disks[name]
	if d == nil || d.Conversion == nil {
		h.mu.Unlock()
		return
	}
	conv := *d.Conversion
	src, dst, unw := d.StoragePrefix, conv.TargetPrefix, h.unwrapperFor(d)
	h.mu.Unlock()

	err := h.copyForConversion(ctx, name, src, dst, conv.NextChunk, unw)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			d.Conversion.Error = err.Error()
			h.log.Error("disk conversion stopped", "disk", name, "err", err)
		}
		_ = h.save()
		return
	}
	m, err := disk.ReadMetadata(ctx, h.cfg.Storage, dst)
	if err != nil {
		d.Conversion.Error = err.Error()
		_ = h.save()
		return
	}
	old := *d
	d.StoragePrefix = dst
	d.Encryption.Type = conv.TargetEncryptionType
	d.KeyID = m.Layers[0].WrappedKeys[0].KeyID
	d.Conversion = nil
	// The old copy goes last, recorded in the same save (see removal.go):
	// keys first, then data.
	h.recordRemoval(src, "single-layer copy of disk "+name, 0)
	if err := h.save(); err != nil {
		*d = old
		delete(h.st.Removals, src)
		h.log.Error("saving a finished conversion", "disk", name, "err", err)
		return
	}
	h.log.Info("disk converted to double encryption", "disk", name)
	if err := h.finishRemoval(context.WithoutCancel(ctx), src); err != nil {
		h.log.Error("removing the single-layer copy after conversion; the next start tries again", "disk", name, "prefix", src, "err", err)
	}
}

// convertSaveEvery is how many chunks a conversion copies between two saves
// of its progress.
const convertSaveEvery = 64

func (h *Host) copyForConversion(ctx context.Context, name, src, dst string, from int64, unw disk.KeyUnwrapper) error {
	s, err := disk.Open(ctx, h.cfg.Storage, src, unw)
	if err != nil {
		return err
	}
	defer s.Close()
	t, err := disk.Open(ctx, h.cfg.Storage, dst, unw)
	if err != nil {
		return err
	}
	defer t.Close()
	// Progress shows at every chunk and is saved every convertSaveEvery
	// chunks: CopyChunks reports every chunk index, also the millions of a
	// large disk that were never written, and each save is an fsync under
	// the control lock. A resume from the last save copies at most that
	// many chunks again.
	saved := from
	return disk.CopyChunks(ctx, s, t, from, func(next int64) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		if d := h.st.Disks[name]; d != nil && d.Conversion != nil {
			d.Conversion.NextChunk = next
			if next-saved < convertSaveEvery {
				return nil
			}
			saved = next
			return h.save()
		}
		return errors.New("the disk's conversion was cancelled")
	})
}
