package control

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
)

// UpdateDES switches a set to another key (version) — every disk of the set
// is re-wrapped to it, data untouched, VMs running — or changes its
// auto-rotation setting or its identities. Identities change first, so a
// new key is checked as the identity that will use it.
func (h *Host) UpdateDES(ctx context.Context, name string, req api.UpdateDESRequest) (*api.DiskEncryptionSet, error) {
	if req.KeyURL == "" && req.EnableAutoKeyRotation == nil && req.UserAssignedIdentity == nil && req.SystemAssignedIdentity == nil {
		return nil, badRequest("nothing to update: give --key-url, --enable-auto-key-rotation, --mi-user-assigned or --mi-system-assigned")
	}
	release, err := h.claim("re-wrapping its disks", "des/"+name)
	if err != nil {
		return nil, err
	}
	defer release()
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	des, ok := r.DES[name]
	if !ok {
		return nil, notFound("disk encryption set", name)
	}
	if req.UserAssignedIdentity != nil || req.SystemAssignedIdentity != nil {
		if err := h.updateDESIdentity(ctx, r, des, req); err != nil {
			return nil, err
		}
		if r, err = h.load(ctx); err != nil {
			return nil, err
		}
		des = r.DES[name]
	}
	if req.KeyURL != "" {
		vault, err := parseKeyURL(req.KeyURL)
		if err != nil {
			return nil, err
		}
		if req.KeyURL != des.ActiveKey.KeyURL {
			if err := h.checkDESKeySwitch(ctx, des, vault, req.KeyURL); err != nil {
				return nil, err
			}
			if err := h.switchKey(ctx, des, store.KeyForDES{SourceVault: store.SourceVault{ID: vault}, KeyURL: req.KeyURL}); err != nil {
				return nil, err
			}
		}
	}
	if req.EnableAutoKeyRotation != nil {
		if _, err := h.recordDES(ctx, name, func(d *store.DES) { d.RotationToLatestKeyVersionEnabled = *req.EnableAutoKeyRotation }); err != nil {
			return nil, err
		}
	}
	return h.ShowDES(ctx, name)
}

// recordDES changes the record of set name in a transaction.
func (h *Host) recordDES(ctx context.Context, name string, change func(d *store.DES)) (*store.DES, error) {
	var out *store.DES
	_, err := h.update(ctx, func(r *store.Records) error {
		d, ok := r.DES[name]
		if !ok {
			return notFound("disk encryption set", name)
		}
		change(d)
		out = d
		return nil
	})
	return out, err
}

// switchKey makes next the set's active key and re-wraps every disk of the
// set to it. While disks are left on the old key, previousKeys names it; a
// failure is recorded in autoKeyRotationError and the next attempt resumes.
// The caller has claimed the set.
func (h *Host) switchKey(ctx context.Context, des *store.DES, next store.KeyForDES) error {
	ck, err := h.customerKeys(ctx, des)
	if err != nil {
		return err
	}
	if _, err := ck.WrapKey(ctx, next.KeyURL, make([]byte, 32)); err != nil {
		return h.keyProblem(err, des, "use key "+next.KeyURL)
	}
	if des.ActiveKey.KeyURL != next.KeyURL {
		if des, err = h.recordDES(ctx, des.Name, func(d *store.DES) {
			if d.ActiveKey.KeyURL != next.KeyURL {
				d.PreviousKeys = append(d.PreviousKeys, d.ActiveKey)
				d.ActiveKey = next
			}
		}); err != nil {
			return err
		}
	}
	return h.rewrapSet(ctx, des.Name)
}

// rewrapSet re-wraps every disk, snapshot, image and gallery image version
// of the set that is not
// on its active key yet, with no lock held, and records the new key ids and
// the set's rotation state in one transaction. The caller has claimed the
// set.
func (h *Host) rewrapSet(ctx context.Context, name string) error {
	if h.shared() {
		if idle, err := h.rewrapLeftToOthers(ctx, name); err != nil || idle {
			return err
		}
		release, err := h.claimRewrap(ctx, name)
		if err != nil {
			return err
		}
		defer release()
	}
	r, err := h.load(ctx)
	if err != nil {
		return err
	}
	des, ok := r.DES[name]
	if !ok {
		return notFound("disk encryption set", name)
	}
	w, err := h.customerWrapper(ctx, des)
	if err != nil {
		return err
	}
	type target struct {
		kind, name, prefix string
		enc                store.Encryption
		disk               *store.Disk // a disk's record; nil for the others
	}
	var targets []target
	for n, d := range r.Disks {
		if d.Encryption.DiskEncryptionSetID == des.ID && d.KeyID != des.ActiveKey.KeyURL {
			if h.diskElsewhere(r, d) != nil {
				// Its VM runs on another host: that host re-wraps it,
				// at its own rotation pass (previousKeys stays).
				h.log.Info("key re-wrap left to the host running the disk's VM", "disk", n, "des", des.Name, "host", r.VMs[d.ManagedBy].Host)
				continue
			}
			targets = append(targets, target{"disk", n, d.StoragePrefix, d.Encryption, d})
		}
	}
	for n, sn := range r.Snapshots {
		if sn.Encryption.DiskEncryptionSetID == des.ID && sn.KeyID != des.ActiveKey.KeyURL {
			targets = append(targets, target{"snapshot", n, sn.StoragePrefix, sn.Encryption, nil})
		}
	}
	for n, im := range r.Images {
		if im.Encryption.DiskEncryptionSetID == des.ID && im.KeyID != des.ActiveKey.KeyURL {
			targets = append(targets, target{"image", n, im.StoragePrefix, im.Encryption, nil})
		}
	}
	for n, gv := range r.GalleryImageVersions {
		if gv.Encryption.DiskEncryptionSetID == des.ID && gv.KeyID != des.ActiveKey.KeyURL {
			targets = append(targets, target{"galleryImageVersion", n, gv.StoragePrefix, gv.Encryption, nil})
		}
	}
	sort.Slice(targets, func(i, j int) bool { return targets[i].kind+" "+targets[i].name < targets[j].kind+" "+targets[j].name })
	var errs []error
	done := map[string]string{} // "kind name" -> new key id
	h.cfg.Recorder.Rewrapping(name, 0, len(targets))
	for i, t := range targets {
		what := t.kind + " " + t.name
		release, err := h.claim("re-wrapping its key", t.kind+"/"+t.name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			continue
		}
		be, unlock := h.cfg.Storage, func() {}
		if t.disk != nil {
			// A disk is re-wrapped under its writer lock: a host that
			// starts its VM or works on it meanwhile is refused, and
			// this one leaves it to the next pass while another does.
			lk, err := h.lockForOp(ctx, t.disk, "re-wrap of its key")
			if err != nil {
				release()
				errs = append(errs, fmt.Errorf("%s: %w", what, err))
				continue
			}
			be, unlock = lk.Storage, lk.Release
		}
		nw, err := disk.Rewrap(ctx, be, t.prefix, 1, h.unwrapperFor(r, what, t.enc), w)
		unlock()
		release()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			continue
		}
		done[what] = nw.KeyID
		h.log.Info("key re-wrapped", "resource", what, "des", des.Name, "key", nw.KeyID)
		h.cfg.Recorder.Rewrapping(name, i+1, len(targets))
	}
	failed := errors.Join(errs...)
	now := h.cfg.Now().UTC()
	_, err = h.update(ctx, func(r *store.Records) error {
		for what, kid := range done {
			kind, n, _ := strings.Cut(what, " ")
			switch kind {
			case "disk":
				if d := r.Disks[n]; d != nil {
					d.KeyID = kid
				}
			case "snapshot":
				if s := r.Snapshots[n]; s != nil {
					s.KeyID = kid
				}
			case "image":
				if im := r.Images[n]; im != nil {
					im.KeyID = kid
				}
			case "galleryImageVersion":
				if gv := r.GalleryImageVersions[n]; gv != nil {
					gv.KeyID = kid
				}
			}
		}
		d := r.DES[name]
		if d == nil {
			return nil
		}
		if failed != nil {
			d.AutoKeyRotationError = failed.Error()
			return nil
		}
		if behind := behindActiveKey(r, d); behind != "" {
			// Left to another host, or put on another key meanwhile:
			// the set's rotation is not over.
			h.log.Info("disk encryption set still has resources on earlier keys", "des", name, "first", behind)
			d.AutoKeyRotationError = ""
			return nil
		}
		d.PreviousKeys = []store.KeyForDES{}
		d.LastKeyRotationTimestamp = &now
		d.AutoKeyRotationError = ""
		return nil
	})
	return errors.Join(failed, err)
}

// behindActiveKey names a disk, snapshot, image or gallery image version
// of set d not on its active key, or is "".
func behindActiveKey(r *store.Records, d *store.DES) string {
	for n, x := range r.Disks {
		if x.Encryption.DiskEncryptionSetID == d.ID && x.KeyID != d.ActiveKey.KeyURL {
			return "disk " + n
		}
	}
	for n, x := range r.Snapshots {
		if x.Encryption.DiskEncryptionSetID == d.ID && x.KeyID != d.ActiveKey.KeyURL {
			return "snapshot " + n
		}
	}
	for n, x := range r.Images {
		if x.Encryption.DiskEncryptionSetID == d.ID && x.KeyID != d.ActiveKey.KeyURL {
			return "image " + n
		}
	}
	for n, x := range r.GalleryImageVersions {
		if x.Encryption.DiskEncryptionSetID == d.ID && x.KeyID != d.ActiveKey.KeyURL {
			return "gallery image version " + n
		}
	}
	return ""
}

// rewrapLeftToOthers tells whether everything of set name behind its
// active key is a disk whose VM runs on another host: then this host has
// nothing to re-wrap, and claims nothing (no commit at every pass while
// it waits for that host).
func (h *Host) rewrapLeftToOthers(ctx context.Context, name string) (bool, error) {
	r, err := h.load(ctx)
	if err != nil {
		return false, err
	}
	des, ok := r.DES[name]
	if !ok {
		return false, notFound("disk encryption set", name)
	}
	if behindActiveKey(r, des) == "" {
		return false, nil // the set's rotation is to be closed
	}
	for _, d := range r.Disks {
		if d.Encryption.DiskEncryptionSetID == des.ID && d.KeyID != des.ActiveKey.KeyURL && h.diskElsewhere(r, d) == nil {
			return false, nil
		}
	}
	for _, x := range r.Snapshots {
		if x.Encryption.DiskEncryptionSetID == des.ID && x.KeyID != des.ActiveKey.KeyURL {
			return false, nil
		}
	}
	for _, x := range r.Images {
		if x.Encryption.DiskEncryptionSetID == des.ID && x.KeyID != des.ActiveKey.KeyURL {
			return false, nil
		}
	}
	for _, x := range r.GalleryImageVersions {
		if x.Encryption.DiskEncryptionSetID == des.ID && x.KeyID != des.ActiveKey.KeyURL {
			return false, nil
		}
	}
	return true, nil
}

// errRewrapElsewhere marks a set that another host is re-wrapping.
var errRewrapElsewhere = errors.New("re-wrapped by another host")

// rewrapElsewhere is the refusal of a set another host is re-wrapping: a
// Conflict for a client, errRewrapElsewhere for the rotation loop.
type rewrapElsewhere struct{ refusal *api.Error }

func (e rewrapElsewhere) Error() string   { return e.refusal.Error() }
func (e rewrapElsewhere) Unwrap() []error { return []error{e.refusal, errRewrapElsewhere} }

// claimRewrap claims the re-wrap of set name for this host in the shared
// records, unless another live host holds it: the commit is a
// compare-and-swap, so of two hosts' rotation loops exactly one re-wraps
// the set's disks, and the other leaves them. release gives the claim up.
func (h *Host) claimRewrap(ctx context.Context, name string) (release func(), err error) {
	_, err = h.update(ctx, func(r *store.Records) error {
		d, ok := r.DES[name]
		if !ok {
			return notFound("disk encryption set", name)
		}
		if c := d.Rewrapping; c != nil && c.Host != h.cfg.HostName && h.hostAlive(ctx, c.Host) {
			return rewrapElsewhere{conflict("disk encryption set %q is being re-wrapped by host %q (since %s); its disks move to the set's active key at that host's or the next rotation pass (hostcryptd --rotation-interval)",
				name, c.Host, c.Since.Format(time.RFC3339))}
		}
		d.Rewrapping = &store.RewrapClaim{Host: h.cfg.HostName, Since: h.cfg.Now().UTC()}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return func() {
		if _, err := h.update(ctx, func(r *store.Records) error {
			if d := r.DES[name]; d != nil && d.Rewrapping != nil && d.Rewrapping.Host == h.cfg.HostName {
				d.Rewrapping = nil
			}
			return nil
		}); err != nil {
			h.log.Error("giving up the claim on a set's re-wrap", "des", name, "err", err)
		}
	}, nil
}

// RotateKeys moves every set with auto-rotation on to the latest version of
// its key, and finishes re-wraps left unfinished. A set busy with another
// operation is left for the next round.
func (h *Host) RotateKeys(ctx context.Context) {
	r, err := h.load(ctx)
	if err != nil {
		h.log.Error("key rotation: reading the state", "err", err)
		return
	}
	for _, name := range sortedKeys(r.DES) {
		if d := r.DES[name]; !d.RotationToLatestKeyVersionEnabled && len(d.PreviousKeys) == 0 {
			// Nothing to do: claiming it would only turn a user's
			// des update away for nothing ("busy").
			continue
		}
		release, err := h.claim("rotating its key", "des/"+name)
		if err != nil {
			continue
		}
		h.rotate(ctx, name)
		release()
	}
}

// rotate is RotateKeys for one set, which the caller has claimed.
func (h *Host) rotate(ctx context.Context, name string) {
	r, err := h.load(ctx)
	if err != nil {
		return
	}
	des := r.DES[name]
	if des == nil {
		return
	}
	if len(des.PreviousKeys) > 0 {
		_ = h.rewrapSet(ctx, name) // resume; errors are recorded on the set
	}
	if des.Rewrapping != nil && des.Rewrapping.Host != h.cfg.HostName && h.hostAlive(ctx, des.Rewrapping.Host) {
		return // another host is at it; the next pass looks again
	}
	if !des.RotationToLatestKeyVersionEnabled {
		return
	}
	fail := func(msg string) {
		if _, err := h.recordDES(ctx, name, func(d *store.DES) { d.AutoKeyRotationError = msg }); err != nil {
			h.log.Error("recording a rotation error", "des", name, "err", err)
		}
	}
	ck, err := h.customerKeys(ctx, des)
	if err != nil {
		fail(message(err))
		return
	}
	latest, err := ck.LatestKeyID(ctx, des.ActiveKey.KeyURL)
	now := h.cfg.Now().UTC()
	if _, rerr := h.recordDES(ctx, name, func(d *store.DES) {
		d.LastKeyVersionCheck, d.LastKeyVersionFound = &now, latest
		if err == nil {
			d.AutoKeyRotationError = ""
		}
	}); rerr != nil {
		h.log.Error("recording a look for a new key version", "des", name, "err", rerr)
	}
	if err != nil {
		fail(fmt.Sprintf("looking up the latest version of %s: %v", des.ActiveKey.KeyURL, err))
		return
	}
	if latest == "" || latest == des.ActiveKey.KeyURL || !strings.HasPrefix(latest, "https://") {
		return
	}
	h.log.Info("rotating disk encryption set to a new key version", "des", name, "from", des.ActiveKey.KeyURL, "to", latest)
	if err := h.switchKey(ctx, des, store.KeyForDES{SourceVault: des.ActiveKey.SourceVault, KeyURL: latest}); errors.Is(err, errRewrapElsewhere) {
		h.log.Info("key rotation: another host re-wraps the set", "des", name, "err", err)
	} else if err != nil {
		h.log.Warn("key rotation did not finish; it will be retried", "des", name, "err", err)
		fail(err.Error())
	}
}

// RotateLoop runs RotateKeys every RotationInterval and when wake fires.
func (h *Host) RotateLoop(ctx context.Context, wake <-chan struct{}) {
	t := time.NewTicker(h.cfg.RotationInterval)
	defer t.Stop()
	h.nextKeyCheck.Store(time.Now().Add(h.cfg.RotationInterval).UnixNano())
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.nextKeyCheck.Store(time.Now().Add(h.cfg.RotationInterval).UnixNano())
		case <-wake:
		}
		h.RotateKeys(ctx)
	}
}
