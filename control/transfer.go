package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
	"hostcrypt/internal/imgfile"
	"hostcrypt/storage"
)

// Disk import and export. hostcryptd runs as root on the same host as its
// clients (the socket is root's only), so it opens the image files itself:
// the request carries an absolute path, not the bytes. Both are long
// operations whose answer is a stream of progress lines (see
// serveTransfer); closing the connection cancels them.
//
// While a transfer runs, the disk carries a Transfer and is in state
// ActiveUpload (import) or ActiveSAS (export), as Azure names a disk being
// uploaded or read through a SAS: it cannot be attached, started, updated or
// deleted meanwhile. An import that fails, is cancelled, or is cut short by
// a crash leaves no disk behind; an export that fails leaves no file
// behind.

// transferring refuses what must wait for a disk's import or export.
func transferring(d *store.Disk) error {
	switch t := d.Transfer; {
	case t == nil:
		return nil
	case t.Kind == api.TransferImport:
		return conflict("disk %q is being imported from %s; wait for the import to finish", d.Name, t.Path)
	default:
		return conflict("disk %q is being exported to %s; wait for the export to finish", d.Name, t.Path)
	}
}

// importSize is the size of a disk holding an image of n bytes: rounded up
// to the sector size and at least the smallest disk.
func importSize(n int64, sector int) int64 {
	s := int64(sector)
	return max((n+s-1)/s*s, api.MinDiskBytes)
}

// imageError turns what imgfile refuses into a refusal of the request.
func imageError(err error) error {
	if errors.Is(err, imgfile.ErrNotImage) || errors.Is(err, imgfile.ErrUnsupportedFormat) ||
		errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
		return badRequest("%v", err)
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return badRequest("%v", err)
	}
	return err
}

func shuttingDown(format string, args ...any) *api.Error {
	return errorf(http.StatusServiceUnavailable, api.CodeShuttingDown, format, args...)
}

// beginTransfer registers a transfer as background work, so that Shutdown
// cancels it and waits for its clean-up, and returns its context: cancelled
// when the client goes away or the daemon shuts down.
func (h *Host) beginTransfer(ctx context.Context) (context.Context, func(), error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bg.Err() != nil {
		return nil, nil, shuttingDown("hostcryptd is shutting down; try again once it is back")
	}
	h.bgWG.Add(1)
	tctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(h.bg, cancel)
	return tctx, func() { stop(); cancel(); h.bgWG.Done() }, nil
}

// ImportDisk creates an encrypted disk holding the image at r.Source, with
// the encryption choices of CreateDisk. Only the image's data is read and
// written: holes and all-zero blocks stay holes of the new disk.
func (h *Host) ImportDisk(ctx context.Context, req api.ImportDiskRequest, progress func(api.Progress)) (*api.Disk, error) {
	if req.SizeBytes != 0 {
		return nil, badRequest("an imported disk takes its size from the image; leave out sizeBytes (grow it afterwards with disk update)")
	}
	if req.Source == "" || !filepath.IsAbs(req.Source) {
		return nil, badRequest("source %q: give the absolute path of a raw or qcow2 image file on the host", req.Source)
	}
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
	src, err := imgfile.Open(ctx, req.Source)
	if err != nil {
		return nil, imageError(err)
	}
	defer src.Close()
	sector := req.LogicalSectorSize
	if sector == 0 {
		sector = api.DefaultSectorSize
	}
	if n, maxb := src.Size(), api.MaxSizeOf(req.Sku); n < 0 || n > maxb {
		hint := ""
		if maxb < api.MaxUltraDiskBytes && n <= api.MaxUltraDiskBytes {
			hint = "; an UltraSSD_LRS or PremiumV2_LRS disk (--sku) takes up to 64 TiB"
		}
		return nil, badRequest("source %s: its virtual size, %d bytes, is above the largest disk, %d bytes (%d GiB)%s", req.Source, n, maxb, maxb>>30, hint)
	}
	req.SizeBytes = importSize(src.Size(), sector)

	tctx, done, err := h.beginTransfer(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	// The disk's record says it is being imported from the moment it
	// exists: nothing uses it until the import is done.
	started := h.cfg.Now().UTC()
	d, err := h.createDisk(ctx, req.CreateDiskRequest, func(r *store.Records, d *store.Disk) error {
		d.DiskState = api.DiskActiveUpload
		d.Transfer = &store.Transfer{Kind: api.TransferImport, Path: req.Source, Started: started, Host: h.hostTag()}
		return nil
	})
	if err != nil {
		return nil, err
	}
	r, err = h.load(ctx)
	if err != nil {
		h.dropImport(context.WithoutCancel(ctx), d)
		return nil, err
	}
	unw := h.unwrapperFor(r, "disk "+d.Name, d.Encryption)

	h.log.Info("importing disk", "disk", req.Name, "source", req.Source, "format", src.Format(), "size", src.Size())
	err = h.copyIn(tctx, d.StoragePrefix, unw, src, progress)
	if err != nil {
		h.dropImport(context.WithoutCancel(ctx), d)
		if ctx.Err() == nil && tctx.Err() != nil {
			return nil, shuttingDown("importing disk %q: hostcryptd is shutting down; the disk was removed, import it again once the daemon is back", req.Name)
		}
		return nil, fmt.Errorf("importing %s into disk %q (the disk was removed): %w", req.Source, req.Name, err)
	}
	d, err = h.recordDisk(ctx, req.Name, func(d *store.Disk) error {
		d.DiskState, d.Transfer = api.DiskUnattached, nil
		return nil
	})
	if err != nil {
		h.dropImport(context.WithoutCancel(ctx), d)
		return nil, err
	}
	h.log.Info("disk imported", "disk", req.Name, "format", src.Format(), "size", d.DiskSizeBytes)
	return diskView(d, h.liveNow()), nil
}

func (h *Host) copyIn(ctx context.Context, prefix string, unw disk.KeyUnwrapper, src imgfile.Source, progress func(api.Progress)) error {
	dd, err := disk.Open(ctx, h.cfg.Storage, prefix, unw)
	if err != nil {
		return err
	}
	err = imgfile.Copy(ctx, dd, src, src.Size(), src.NextData, progressFunc(progress))
	if cerr := dd.Close(); err == nil {
		err = cerr
	}
	return err
}

// progressFunc adapts a progress callback of the API to imgfile's.
func progressFunc(p func(api.Progress)) func(imgfile.Progress) {
	if p == nil {
		return nil
	}
	return func(ip imgfile.Progress) { p(api.Progress{Done: ip.Done, Total: ip.Total, Data: ip.Data}) }
}

// dropImport removes a disk whose import did not finish: keys first, then
// data, then the record.
func (h *Host) dropImport(ctx context.Context, d *store.Disk) {
	if err := disk.Destroy(ctx, h.cfg.Storage, d.StoragePrefix); err != nil && !errors.Is(err, disk.ErrNotFound) {
		h.log.Error("removing a disk whose import failed", "disk", d.Name, "prefix", d.StoragePrefix, "err", err)
		// The record stays, marked as an import, so that the next start
		// tries again.
		return
	}
	if _, err := h.update(ctx, func(r *store.Records) error {
		if cur := r.Disks[d.Name]; cur != nil && cur.StoragePrefix == d.StoragePrefix {
			delete(r.Disks, d.Name)
		}
		return nil
	}); err != nil {
		h.log.Error("saving state after removing a failed import", "disk", d.Name, "err", err)
	}
	h.log.Info("unfinished import removed", "disk", d.Name)
}

// recoverTransfers cleans up after transfers that a crash cut short:
// half-imported disks are destroyed, exported ones go back to their state.
func (h *Host) recoverTransfers(ctx context.Context) {
	r, err := h.load(ctx)
	if err != nil {
		h.log.Error("cleaning up transfers", "err", err)
		return
	}
	for _, name := range sortedKeys(r.Disks) {
		d := r.Disks[name]
		switch {
		case d.Transfer == nil:
		case !h.mine(d.Transfer.Host):
			// Another host's: its file is on that host.
		case d.Transfer.Kind == api.TransferImport:
			h.dropImport(ctx, d)
		default:
			// The partial copy holds plaintext: it goes too.
			prefix := exportTemp(d.Transfer.Path)
			entries, _ := os.ReadDir(filepath.Dir(prefix))
			for _, e := range entries {
				if tmp := filepath.Join(filepath.Dir(prefix), e.Name()); strings.HasPrefix(tmp, prefix) {
					if err := os.Remove(tmp); err != nil {
						h.log.Error("removing the partial file of an export cut short", "disk", d.Name, "file", tmp, "err", err)
					}
				}
			}
			h.endExport(ctx, d.Name)
		}
	}
}

// ExportDisk writes the plaintext of disk name as a raw image to r.Target:
// sparse (holes wherever the disk has none written), created 0600, and put
// in place only when complete. The disk of a running VM is refused: the
// guest would be writing while it is read, and the copy would match no
// moment of the disk.
func (h *Host) ExportDisk(ctx context.Context, name string, req api.ExportDiskRequest, progress func(api.Progress)) (*api.Disk, error) {
	if req.Target == "" || !filepath.IsAbs(req.Target) {
		return nil, badRequest("target %q: give the absolute path of the file to write on the host", req.Target)
	}
	target := filepath.Clean(req.Target)
	if st, err := os.Stat(filepath.Dir(target)); err != nil || !st.IsDir() {
		return nil, badRequest("target %s: directory %s does not exist; create it first", target, filepath.Dir(target))
	}
	if st, err := os.Lstat(target); err == nil {
		if !req.Force {
			return nil, conflict("target %s exists; choose another path or pass --force true to replace it", target)
		}
		if !st.Mode().IsRegular() && st.Mode()&os.ModeSymlink == 0 {
			return nil, badRequest("target %s exists and is not a regular file; choose another path", target)
		}
	}
	// The disk is claimed until its record says it is being exported: from
	// then on the record keeps a VM from starting on it (see usable).
	release, err := h.claim("its export is starting", "disk/"+name)
	if err != nil {
		return nil, err
	}
	r, d, err := h.diskFor(ctx, name)
	if err != nil {
		release()
		return nil, err
	}
	if err := h.diskElsewhere(r, d); err != nil {
		release()
		return nil, err
	}
	if vm := r.VMs[d.ManagedBy]; vm != nil && h.isRunning(vm.Name) {
		release()
		return nil, conflict("disk %q is attached to VM %q, which is running; stop it first (hostcrypt vm stop --name %s) so that the export is a consistent image", name, vm.Name, vm.Name)
	}
	lk, err := h.lockForOp(ctx, d, "export")
	if err != nil {
		release()
		return nil, err
	}
	defer lk.Release()
	tctx, done, err := h.beginTransfer(ctx)
	if err != nil {
		release()
		return nil, err
	}
	defer done()
	_, err = h.recordDisk(ctx, name, func(d *store.Disk) error {
		if err := converting(d); err != nil {
			return err
		}
		d.DiskState = api.DiskActiveSAS
		d.Transfer = &store.Transfer{Kind: api.TransferExport, Path: target, Started: h.cfg.Now().UTC(), Host: h.hostTag()}
		return nil
	})
	release()
	if err != nil {
		return nil, err
	}
	prefix, unw := d.StoragePrefix, h.unwrapperFor(r, "disk "+name, d.Encryption)

	h.log.Info("exporting disk", "disk", name, "target", target)
	err = h.copyOut(tctx, lk.Storage, prefix, unw, target, req.Force, progress, openOptions(d.Encryption)...)
	d = h.endExport(ctx, name)
	if err != nil {
		if tctx.Err() != nil && ctx.Err() == nil {
			return nil, shuttingDown("exporting disk %q: hostcryptd is shutting down; nothing was written, export again once the daemon is back", name)
		}
		var e *api.Error
		if errors.As(err, &e) {
			return nil, e
		}
		return nil, fmt.Errorf("exporting disk %q to %s (nothing was written): %w", name, target, err)
	}
	h.log.Info("disk exported", "disk", name, "target", target)
	if d == nil {
		return nil, notFound("disk", name)
	}
	return diskView(d, h.liveNow()), nil
}

// endExport puts an exported disk back in the state it had: reserved by its
// VM, which cannot have run meanwhile, or unattached.
func (h *Host) endExport(ctx context.Context, name string) *store.Disk {
	d, err := h.recordDisk(context.WithoutCancel(ctx), name, func(d *store.Disk) error {
		d.Transfer = nil
		if d.DiskState == api.DiskActiveSAS {
			d.DiskState = api.DiskUnattached
			if d.ManagedBy != "" {
				d.DiskState = api.DiskReserved
			}
		}
		return nil
	})
	if err != nil {
		h.log.Error("saving state after an export", "disk", name, "err", err)
		return nil
	}
	return d
}

// exportTemp is the prefix of the name of an export's temporary file, in
// the target's directory.
func exportTemp(target string) string {
	return filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".export-")
}

// copyOut writes the disk's plaintext into a new file beside target and
// moves it into place once it is complete and durable.
func (h *Host) copyOut(ctx context.Context, be storage.Backend, prefix string, unw disk.KeyUnwrapper, target string, force bool, progress func(api.Progress), opts ...disk.OpenOption) (err error) {
	dd, err := disk.Open(ctx, be, prefix, unw, opts...)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := dd.Close(); err == nil {
			err = cerr
		}
	}()
	f, err := os.CreateTemp(filepath.Dir(target), filepath.Base(exportTemp(target))+"*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	size := dd.Size()
	if err := f.Truncate(size); err != nil {
		return err
	}
	next := func(off int64) (int64, int64, error) {
		start, err := dd.SeekData(off)
		if errors.Is(err, syscall.ENXIO) {
			return size, size, nil
		}
		if err != nil {
			return 0, 0, err
		}
		end, err := dd.SeekHole(start)
		return start, end, err
	}
	if err := imgfile.Copy(ctx, f, dd, size, next, progressFunc(progress)); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		f = nil
		return err
	}
	f = nil
	if force {
		err = os.Rename(tmp, target)
	} else {
		// No replacing a file that appeared while the export ran.
		err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, target, unix.RENAME_NOREPLACE)
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSYS) {
			// A file system without RENAME_NOREPLACE: a hard link is just
			// as exclusive.
			if err = os.Link(tmp, target); err == nil {
				os.Remove(tmp)
			}
		}
		if errors.Is(err, syscall.EEXIST) {
			return conflict("target %s appeared while the export ran; choose another path or pass --force true to replace it", target)
		}
	}
	if err != nil {
		return err
	}
	if dir, err := os.Open(filepath.Dir(target)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}
