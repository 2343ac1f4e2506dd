package control

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"hostcrypt/disk"
)

// UpdateDESRequest changes a disk encryption set's key or its rotation
// setting.
type UpdateDESRequest struct {
	KeyURL                string `json:"keyUrl,omitempty"`
	EnableAutoKeyRotation *bool  `json:"enableAutoKeyRotation,omitempty"`
}

// UpdateDES switches a set to another key (version) — every disk of the set
// is re-wrapped to it, data untouched, VMs running — or changes its
// auto-rotation setting.
func (h *Host) UpdateDES(ctx context.Context, name string, r UpdateDESRequest) (*DiskEncryptionSet, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	des, ok := h.st.DES[name]
	if !ok {
		return nil, notFound("disk encryption set", name)
	}
	if r.KeyURL == "" && r.EnableAutoKeyRotation == nil {
		return nil, badRequest("nothing to update: give --key-url or --enable-auto-key-rotation")
	}
	if r.KeyURL != "" {
		vault, err := parseKeyURL(r.KeyURL)
		if err != nil {
			return nil, err
		}
		if r.KeyURL != des.ActiveKey.KeyURL {
			if err := h.checkDESKeySwitch(ctx, des, vault, r.KeyURL); err != nil {
				return nil, err
			}
			if err := h.switchKey(ctx, des, KeyForDES{SourceVault: SourceVault{ID: vault}, KeyURL: r.KeyURL}); err != nil {
				return nil, err
			}
		}
	}
	if r.EnableAutoKeyRotation != nil {
		des.RotationToLatestKeyVersionEnabled = *r.EnableAutoKeyRotation
		if err := h.save(); err != nil {
			return nil, err
		}
	}
	return h.showDES(ctx, des), nil
}

// switchKey makes next the set's active key and re-wraps every disk of the
// set to it. While disks are left on the old key, previousKeys names it; a
// failure is recorded in autoKeyRotationError and the next attempt resumes.
// The caller holds h.mu.
func (h *Host) switchKey(ctx context.Context, des *DiskEncryptionSet, next KeyForDES) error {
	ck, err := h.customerKeys(des.Name)
	if err != nil {
		return err
	}
	if _, err := ck.WrapKey(ctx, next.KeyURL, make([]byte, 32)); errors.Is(err, ErrKeyAccessDenied) {
		return accessDenied(des, next.KeyURL, "wrapKey")
	} else if err != nil {
		return fmt.Errorf("the identity %s of disk encryption set %q cannot use key %s: %w", des.Identity.PrincipalID, des.Name, next.KeyURL, err)
	}
	if des.ActiveKey.KeyURL != next.KeyURL {
		des.PreviousKeys = append(des.PreviousKeys, des.ActiveKey)
		des.ActiveKey = next
		if err := h.save(); err != nil {
			return err
		}
	}
	return h.rewrapSet(ctx, des)
}

// rewrapSet re-wraps every disk of the set that is not on the active key yet.
func (h *Host) rewrapSet(ctx context.Context, des *DiskEncryptionSet) error {
	ck, err := h.customerKeys(des.Name)
	if err != nil {
		return err
	}
	wrap := wrapFunc(func(ctx context.Context, dek []byte) (disk.WrappedKey, error) {
		return ck.WrapKey(ctx, des.ActiveKey.KeyURL, dek)
	})
	// Every disk, snapshot and image of the set whose key is not wrapped by
	// the active key yet.
	type target struct {
		what, prefix string
		keyID        *string
		res          *Disk // for the unwrapper
	}
	var targets []target
	for n, d := range h.st.Disks {
		if d.Encryption.DiskEncryptionSetID == des.ID && d.KeyID != des.ActiveKey.KeyURL {
			targets = append(targets, target{"disk " + n, d.StoragePrefix, &d.KeyID, d})
		}
	}
	for n, sn := range h.st.Snapshots {
		if sn.Encryption.DiskEncryptionSetID == des.ID && sn.KeyID != des.ActiveKey.KeyURL {
			targets = append(targets, target{"snapshot " + n, sn.StoragePrefix, &sn.KeyID, &Disk{Name: "snapshot " + n, Encryption: sn.Encryption}})
		}
	}
	for n, im := range h.st.Images {
		if im.Encryption.DiskEncryptionSetID == des.ID && im.KeyID != des.ActiveKey.KeyURL {
			targets = append(targets, target{"image " + n, im.StoragePrefix, &im.KeyID, &Disk{Name: "image " + n, Encryption: im.Encryption}})
		}
	}
	sort.Slice(targets, func(i, j int) bool { return targets[i].what < targets[j].what })
	var errs []error
	for _, t := range targets {
		w, err := disk.Rewrap(ctx, h.cfg.Storage, t.prefix, 1, h.unwrapperFor(t.res), wrap)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.what, err))
			continue
		}
		*t.keyID = w.KeyID
		h.log.Info("key re-wrapped", "resource", t.what, "des", des.Name, "key", w.KeyID)
	}
	if err := errors.Join(errs...); err != nil {
		des.AutoKeyRotationError = err.Error()
		return errors.Join(err, h.save())
	}
	now := h.cfg.Now().UTC()
	des.PreviousKeys = []KeyForDES{}
	des.LastKeyRotationTimestamp = &now
	des.AutoKeyRotationError = ""
	return h.save()
}

// RotateKeys moves every set with auto-rotation on to the latest version of
// its key, and finishes re-wraps left unfinished.
func (h *Host) RotateKeys(ctx context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, des := range h.st.DES {
		if len(des.PreviousKeys) > 0 {
			_ = h.rewrapSet(ctx, des) // resume; errors are recorded on the set
		}
		if !des.RotationToLatestKeyVersionEnabled {
			continue
		}
		ck, err := h.customerKeys(des.Name)
		if err != nil {
			continue
		}
		latest, err := ck.LatestKeyID(ctx, des.ActiveKey.KeyURL)
		now := h.cfg.Now().UTC()
		des.LastKeyVersionCheck, des.LastKeyVersionFound = &now, latest
		if err != nil {
			des.AutoKeyRotationError = fmt.Sprintf("looking up the latest version of %s: %v", des.ActiveKey.KeyURL, err)
			_ = h.save()
			continue
		}
		if latest == "" || latest == des.ActiveKey.KeyURL || !strings.HasPrefix(latest, "https://") {
			_ = h.save()
			continue
		}
		h.log.Info("rotating disk encryption set to a new key version", "des", des.Name, "from", des.ActiveKey.KeyURL, "to", latest)
		if err := h.switchKey(ctx, des, KeyForDES{SourceVault: des.ActiveKey.SourceVault, KeyURL: latest}); err != nil {
			h.log.Warn("key rotation did not finish; it will be retried", "des", des.Name, "err", err)
			des.AutoKeyRotationError = err.Error()
			_ = h.save()
		}
	}
}

// RotateLoop runs RotateKeys every interval and when wake fires; show
// tells when the next run on the interval is.
func (h *Host) RotateLoop(ctx context.Context, interval time.Duration, wake <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	next := time.Now().Add(interval)
	h.setNextKeyCheck(next)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			next = time.Now().Add(interval)
			h.setNextKeyCheck(next)
		case <-wake:
		}
		h.RotateKeys(ctx)
	}
}

func (h *Host) setNextKeyCheck(t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextKeyCheck = t
}
