package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/control/store"
	"hostcrypt/volume"
)

// cmkDisk is an open customer-key disk of a running VM, with its set.
type cmkDisk struct {
	name string
	kid  string
	des  *store.DES
	vol  *volume.Volume
}

// cmkDisksOf lists the open customer-key disks of the running VMs, by VM.
// The volumes are read under the control lock; the records come from r.
func (h *Host) cmkDisks(r *store.Records) map[string][]cmkDisk {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string][]cmkDisk{}
	for vm, rv := range h.running {
		for _, a := range rv.images {
			d := r.Disks[a.disk]
			if d == nil || d.Encryption.DiskEncryptionSetID == "" {
				continue
			}
			if des, ok := desByID(r, d.Encryption.DiskEncryptionSetID); ok {
				out[vm] = append(out[vm], cmkDisk{name: d.Name, kid: d.KeyID, des: des, vol: a.vol})
			}
		}
	}
	return out
}

// MonitorKeys runs until ctx ends: every KeyCheckInterval, and at once when
// wake fires (an event from the key store), it checks the customer keys of
// every running VM and enforces what it finds. A VM it could not stop at
// once (another operation had claimed it) is checked again a moment later.
func (h *Host) MonitorKeys(ctx context.Context, wake <-chan struct{}) {
	t := time.NewTicker(h.cfg.KeyCheckInterval)
	defer t.Stop()
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
		case <-retry:
		}
		retry = nil
		if h.CheckKeys(ctx) > 0 {
			retry = time.After(time.Second)
		}
	}
}

// CheckKeys checks every running VM's customer keys once, with no lock held
// across the key store's answers:
//   - usable: the disks' leases are extended;
//   - revoked (disabled, deleted, access removed): the VM is stopped — its
//     disks flushed, its keys wiped — with a reason naming the key;
//   - expired: the same, unless OnKeyExpiry is next-start;
//   - key store unreachable: nothing is revoked; the leases are not
//     extended, so I/O fails with EIO once they run out; a warning shows
//     in vm show.
//
// It returns how many VMs it should have stopped but found claimed by
// another operation; the caller checks again soon.
func (h *Host) CheckKeys(ctx context.Context) (deferred int) {
	r, err := h.load(ctx)
	if err != nil {
		h.log.Error("key check: reading the state", "err", err)
		return 0
	}
	for vm, ds := range h.cmkDisks(r) {
		var stopReason, warning string
		for _, cd := range ds {
			cctx, cancel := context.WithTimeout(ctx, keys.DefaultTimeout)
			problem, err := h.probeKey(cctx, cd.des, cd.kid)
			cancel()
			h.cfg.Recorder.KeyChecked(vm, cd.name, problem.String())
			switch {
			case problem == keys.Usable || (problem == keys.Expired && h.cfg.OnKeyExpiry == ExpiryNextStart):
				cd.vol.SetLease(time.Now().Add(h.cfg.DEKLease))
			case problem == keys.Unreachable:
				warning = fmt.Sprintf("key store unreachable at %s (%v); I/O continues until the data key lease ends", time.Now().UTC().Format(time.RFC3339), err)
				h.log.Warn("key store unreachable; keeping the leased data keys", "vm", vm, "disk", cd.name, "key", cd.kid, "err", err)
			default:
				stopReason = fmt.Sprintf("key %s of disk encryption set %q is not usable: %v", cd.kid, cd.des.Name, err)
			}
			if stopReason != "" {
				break
			}
		}
		if stopReason != "" {
			h.log.Warn("stopping VM: its customer key is not usable", "vm", vm, "reason", stopReason)
			if err := h.stopForKeys(ctx, vm, stopReason); err != nil {
				if api.StatusOf(err) == http.StatusConflict {
					deferred++
				}
				h.log.Error("stopping VM", "vm", vm, "err", err)
			}
			continue
		}
		if v := r.VMs[vm]; v == nil || v.KeyWarning == warning {
			continue
		}
		if _, err := h.update(ctx, func(r *store.Records) error {
			if v := r.VMs[vm]; v != nil && v.PowerState == api.PowerRunning && h.mine(v.Host) {
				v.KeyWarning = warning
			}
			return nil
		}); err != nil {
			h.log.Error("recording a key warning", "vm", vm, "err", err)
		}
	}
	return deferred
}

// stopForKeys stops a running VM whose customer key is not usable.
func (h *Host) stopForKeys(ctx context.Context, vm, reason string) error {
	release, err := h.claim("stopping: its customer key is not usable", "vm/"+vm)
	if err != nil {
		return err
	}
	defer release()
	if !h.isRunning(vm) {
		return nil
	}
	return h.stop(ctx, vm, api.PowerStopped, reason)
}

// checkStartKeys asks the key store, at start time, whether every customer
// key of vm may be used; it refuses with the key, its state and the fix.
func (h *Host) checkStartKeys(ctx context.Context, r *store.Records, vm *store.VM) error {
	for _, name := range vm.DiskNames() {
		d := r.Disks[name]
		if d == nil || d.Encryption.DiskEncryptionSetID == "" {
			continue
		}
		des, ok := desByID(r, d.Encryption.DiskEncryptionSetID)
		if !ok {
			return conflict("disk %q uses a disk encryption set that no longer exists", name)
		}
		problem, err := h.probeKey(ctx, des, d.KeyID)
		switch problem {
		case keys.Usable:
			continue
		case keys.Unreachable:
			return errorf(http.StatusServiceUnavailable, api.CodeKeyStoreUnreachable, "VM %q cannot start: the key store did not answer for key %s of disk %q: %v; try again when it is back", vm.Name, d.KeyID, name, err)
		case keys.Expired:
			return conflict("VM %q cannot start: key %s of disk %q (disk encryption set %q) has expired: %v; set a later expiry on the key (hostcrypt key set-attributes --expires …) or give the set a new key", vm.Name, d.KeyID, name, des.Name, err)
		default:
			var e *api.Error
			if errors.As(err, &e) {
				return err
			}
			return conflict("VM %q cannot start: key %s of disk %q (disk encryption set %q) is not usable: %v; enable or recover the key, or restore the access policy of identity %s", vm.Name, d.KeyID, name, des.Name, err, keyIdentityOf(des).principal)
		}
	}
	return nil
}

// watchEvents follows the key store's events and wakes the key monitor and
// rotation on every one, so a disable or a revocation is enforced at once
// rather than at the next interval.
func (h *Host) watchEvents(ctx context.Context, wakes ...chan<- struct{}) {
	var after uint64
	// Start from now: earlier events were handled by earlier checks.
	if evs, err := h.keys.Events(ctx, 0, 0); err == nil && len(evs) > 0 {
		after = evs[len(evs)-1].Sequence
	}
	backoff := time.Second
	for ctx.Err() == nil {
		evs, err := h.keys.Events(ctx, after, 25*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			h.log.Warn("key store event stream: retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Minute)
			continue
		}
		backoff = time.Second
		for _, e := range evs {
			after = max(after, e.Sequence)
		}
		if len(evs) > 0 {
			for _, w := range wakes {
				wake(w)
			}
		}
	}
}
