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
	"time"

	"golang.org/x/sys/unix"

	"hostcrypt/disk"
	"hostcrypt/internal/imgfile"
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
// deleted meanwhile. An
// import that fails, is cancelled, or is cut short by a crash leaves no disk
// behind; an export that fails leaves no file behind.

// Disk states during a transfer.
const (
	DiskActiveUpload = "ActiveUpload"
	DiskActiveSAS    = "ActiveSAS"
)

// ImportDiskRequest creates a disk from an image file on the host. The
// fields of CreateDiskRequest choose the new disk's name, sku, sector size
// and encryption as for an empty disk; its size comes from the image, so
// sizeBytes must be left out.
type ImportDiskRequest struct {
	CreateDiskRequest
	// Source is the absolute path of a raw or qcow2 image.
	Source string `json:"source"`
}

// ExportDiskRequest writes a disk's plaintext to a raw image file.
type ExportDiskRequest struct {
	// Target is the absolute path of the file to write.
	Target string `json:"target"`
	// Force replaces an existing file.
	Force bool `json:"force,omitempty"`
}

// Progress is how far a transfer is, in bytes of the image.
type Progress = imgfile.Progress

// Transfer kinds.
const (
	TransferImport = "import"
	TransferExport = "export"
)

// Transfer is an import or export in progress. It is persisted, so that a
// transfer cut short by a crash is cleaned up at the next start, and it is
// what keeps the disk from being used meanwhile (the disk state alone is
// overwritten by a detach).
type Transfer struct {
	Kind    string    `json:"kind"`
	Path    string    `json:"path"`
	Started time.Time `json:"started"`
}

// transferring refuses what must wait for a disk's import or export.
func transferring(d *Disk) error {
	switch t := d.Transfer; {
	case t == nil:
		return nil
	case t.Kind == TransferImport:
		return conflict("disk %q is being imported from %s; wait for the import to finish", d.Name, t.Path)
	default:
		return conflict("disk %q is being exported to %s; wait for the export to finish", d.Name, t.Path)
	}
}

// importSize is the size of a disk holding an image of n bytes: rounded up
// to the sector size and at least the smallest disk.
func importSize(n int64, sector int) int64 {
	s := int64(sector)
	return max((n+s-1)/s*s, MinDiskBytes)
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

// beginTransfer registers a transfer as background work, so that Shutdown
// cancels it and waits for its clean-up, and returns its context: cancelled
// when the client goes away or the daemon shuts down. The caller holds h.mu.
func (h *Host) beginTransfer(ctx context.Context) (context.Context, func(), error) {
	if h.bg.Err() != nil {
		return nil, nil, errorf(http.StatusServiceUnavailable, "ShuttingDown", "hostcryptd is shutting down; try again once it is back")
	}
	h.bgWG.Add(1)
	tctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(h.bg, cancel)
	return tctx, func() { stop(); cancel(); h.bgWG.Done() }, nil
}

// ImportDisk creates an encrypted disk holding the image at r.Source, with
// the encryption choices of CreateDisk. Only the image's data is read and
// written: holes and all-zero blocks stay holes of the new disk.
func (h *Host) ImportDisk(ctx context.Context, r ImportDiskRequest, progress func(Progress)) (*Disk, error) {
	if r.SizeBytes != 0 {
		return nil, badRequest("an imported disk takes its size from the image; leave out sizeBytes (grow it afterwards with disk update)")
	}
	if r.Source == "" || !filepath.IsAbs(r.Source) {
		return nil, badRequest("source %q: give the absolute path of a raw or qcow2 image file on the host", r.Source)
	}
	if err := checkName("disk", r.Name); err != nil {
		return nil, err
	}
	h.mu.Lock()
	_, taken := h.st.Disks[r.Name]
	h.mu.Unlock()
	if taken {
		return nil, conflict("disk %q already exists; choose another name or delete it first", r.Name)
	}
	src, err := imgfile.Open(ctx, r.Source)
	if err != nil {
		return nil, imageError(err)
	}
	defer src.Close()
	sector := r.LogicalSectorSize
	if sector == 0 {
		sector = 512
	}
	if n, maxb := src.Size(), MaxSizeOf(r.Sku); n < 0 || n > maxb {
		hint := ""
		if maxb < MaxUltraDiskBytes && n <= MaxUltraDiskBytes {
			hint = "; an UltraSSD_LRS or PremiumV2_LRS disk (--sku) takes up to 64 TiB"
		}
		return nil, badRequest("source %s: its virtual size, %d bytes, is above the largest disk, %d bytes (%d GiB)%s", r.Source, n, maxb, maxb>>30, hint)
	}
	r.SizeBytes = importSize(src.Size(), sector)

	h.mu.Lock()
	d, err := h.createDisk(ctx, r.CreateDiskRequest)
	if err != nil {
		h.mu.Unlock()
		return nil, err
	}
	res := h.st.Disks[r.Name]
	res.DiskState = DiskActiveUpload
	res.Transfer = &Transfer{Kind: TransferImport, Path: r.Source, Started: h.cfg.Now().UTC()}
	tctx, done, err := h.beginTransfer(ctx)
	if err == nil {
		err = h.save()
		if err != nil {
			done()
		}
	}
	if err != nil {
		h.dropImport(context.WithoutCancel(ctx), res)
		h.mu.Unlock()
		return nil, err
	}
	unw := h.unwrapperFor(res)
	h.mu.Unlock()
	defer done()

	h.log.Info("importing disk", "disk", r.Name, "source", r.Source, "format", src.Format(), "size", src.Size())
	err = h.copyIn(tctx, d.StoragePrefix, unw, src, progress)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.dropImport(context.WithoutCancel(ctx), res)
		if ctx.Err() == nil && tctx.Err() != nil {
			return nil, errorf(http.StatusServiceUnavailable, "ShuttingDown", "importing disk %q: hostcryptd is shutting down; the disk was removed, import it again once the daemon is back", r.Name)
		}
		return nil, fmt.Errorf("importing %s into disk %q (the disk was removed): %w", r.Source, r.Name, err)
	}
	res.DiskState, res.Transfer = DiskUnattached, nil
	if err := h.save(); err != nil {
		h.dropImport(context.WithoutCancel(ctx), res)
		return nil, err
	}
	h.log.Info("disk imported", "disk", r.Name, "format", src.Format(), "size", res.DiskSizeBytes)
	return h.showDisk(res), nil
}

func (h *Host) copyIn(ctx context.Context, prefix string, unw disk.KeyUnwrapper, src imgfile.Source, progress func(Progress)) error {
	dd, err := disk.Open(ctx, h.cfg.Storage, prefix, unw)
	if err != nil {
		return err
	}
	err = imgfile.Copy(ctx, dd, src, src.Size(), src.NextData, progress)
	if cerr := dd.Close(); err == nil {
		err = cerr
	}
	return err
}

// dropImport removes a disk whose import did not finish: keys first, then
// data, then the resource. The caller holds h.mu.
func (h *Host) dropImport(ctx context.Context, d *Disk) {
	if err := disk.Destroy(ctx, h.cfg.Storage, d.StoragePrefix); err != nil && !errors.Is(err, disk.ErrNotFound) {
		h.log.Error("removing a disk whose import failed", "disk", d.Name, "prefix", d.StoragePrefix, "err", err)
		// The resource stays, marked as an import, so that the next start
		// tries again.
		return
	}
	delete(h.st.Disks, d.Name)
	if err := h.save(); err != nil {
		h.log.Error("saving state after removing a failed import", "disk", d.Name, "err", err)
	}
	h.log.Info("unfinished import removed", "disk", d.Name)
}

// recoverTransfers cleans up after transfers that a crash cut short:
// half-imported disks are destroyed, exported ones go back to their state.
// The caller holds h.mu.
func (h *Host) recoverTransfers(ctx context.Context) {
	for _, d := range h.st.Disks {
		switch {
		case d.Transfer == nil:
		case d.Transfer.Kind == TransferImport:
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
			h.endExport(d)
		}
	}
}

// ExportDisk writes the plaintext of disk name as a raw image to r.Target:
// sparse (holes wherever the disk has none written), created 0600, and put
// in place only when complete. The disk of a running VM is refused: the
// guest would be writing while it is read, and the copy would match no
// moment of the disk.
func (h *Host) ExportDisk(ctx context.Context, name string, r ExportDiskRequest, progress func(Progress)) (*Disk, error) {
	if r.Target == "" || !filepath.IsAbs(r.Target) {
		return nil, badRequest("target %q: give the absolute path of the file to write on the host", r.Target)
	}
	target := filepath.Clean(r.Target)
	if st, err := os.Stat(filepath.Dir(target)); err != nil || !st.IsDir() {
		return nil, badRequest("target %s: directory %s does not exist; create it first", target, filepath.Dir(target))
	}
	if st, err := os.Lstat(target); err == nil {
		if !r.Force {
			return nil, conflict("target %s exists; choose another path or pass --force true to replace it", target)
		}
		if !st.Mode().IsRegular() && st.Mode()&os.ModeSymlink == 0 {
			return nil, badRequest("target %s exists and is not a regular file; choose another path", target)
		}
	}

	h.mu.Lock()
	d, ok := h.st.Disks[name]
	if !ok {
		h.mu.Unlock()
		return nil, notFound("disk", name)
	}
	if err := h.usable(ctx, d); err != nil {
		h.mu.Unlock()
		return nil, err
	}
	if vm := h.st.VMs[d.ManagedBy]; vm != nil && h.running[vm.Name] != nil {
		h.mu.Unlock()
		return nil, conflict("disk %q is attached to VM %q, which is running; stop it first (vm stop --name %s) so that the export is a consistent image", name, vm.Name, vm.Name)
	}
	tctx, done, err := h.beginTransfer(ctx)
	if err != nil {
		h.mu.Unlock()
		return nil, err
	}
	defer done()
	d.DiskState = DiskActiveSAS
	d.Transfer = &Transfer{Kind: TransferExport, Path: target, Started: h.cfg.Now().UTC()}
	if err := h.save(); err != nil {
		h.endExport(d)
		h.mu.Unlock()
		return nil, err
	}
	prefix, unw := d.StoragePrefix, h.unwrapperFor(d)
	h.mu.Unlock()

	h.log.Info("exporting disk", "disk", name, "target", target)
	err = h.copyOut(tctx, prefix, unw, target, r.Force, progress)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.endExport(d)
	if err != nil {
		if tctx.Err() != nil && ctx.Err() == nil {
			return nil, errorf(http.StatusServiceUnavailable, "ShuttingDown", "exporting disk %q: hostcryptd is shutting down; nothing was written, export again once the daemon is back", name)
		}
		var e *Error
		if errors.As(err, &e) {
			return nil, e
		}
		return nil, fmt.Errorf("exporting disk %q to %s (nothing was written): %w", name, target, err)
	}
	h.log.Info("disk exported", "disk", name, "target", target)
	return h.showDisk(d), nil
}

// endExport puts an exported disk back in the state it had: reserved by its
// VM, which cannot have run meanwhile, or unattached. The caller holds h.mu.
func (h *Host) endExport(d *Disk) {
	d.Transfer = nil
	if d.DiskState == DiskActiveSAS {
		d.DiskState = DiskUnattached
		if d.ManagedBy != "" {
			d.DiskState = DiskReserved
		}
	}
	if err := h.save(); err != nil {
		h.log.Error("saving state after an export", "disk", d.Name, "err", err)
	}
}

// exportTemp is the prefix of the name of an export's temporary file, in
// the target's directory.
func exportTemp(target string) string {
	return filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".export-")
}

// copyOut writes the disk's plaintext into a new file beside target and
// moves it into place once it is complete and durable.
func (h *Host) copyOut(ctx context.Context, prefix string, unw disk.KeyUnwrapper, target string, force bool, progress func(Progress)) (err error) {
	dd, err := disk.Open(ctx, h.cfg.Storage, prefix, unw)
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
	if err := imgfile.Copy(ctx, f, dd, size, next, progress); err != nil {
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

// StopBackground cancels the imports and exports in progress (each removes
// what it had made) and the other background work, which resumes at the
// next start. The daemon calls it as soon as it begins shutting down, so
// that a long transfer does not hold the shutdown up.
func (h *Host) StopBackground() { h.cancelBg() }
