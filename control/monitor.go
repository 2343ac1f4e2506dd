package control

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"hostcrypt/disk"
)

// KeyProblem classifies the answer of the key store about a customer key.
type KeyProblem int

// What a key check found.
const (
	KeyUsable      KeyProblem = iota
	KeyRevoked                // disabled, deleted, not yet valid, or access revoked
	KeyExpired                // past its expiry: wrap refused, unwrap still works
	KeyUnreachable            // no answer: not a revocation
)

// KeyClassifier tells the kinds of key store errors apart. The key service
// implements it.
type KeyClassifier interface {
	Classify(err error) KeyProblem
}

// Expiry policies for a running VM whose customer key expires.
const (
	ExpiryShutdown  = "shutdown"
	ExpiryNextStart = "next-start"
)

// MonitorConfig sets the key-state enforcement loop.
type MonitorConfig struct {
	// Interval between checks of every running VM's customer keys.
	Interval time.Duration
	// Lease is how long a data key serves I/O after a successful check.
	Lease time.Duration
	// OnExpiry is ExpiryShutdown or ExpiryNextStart.
	OnExpiry string
}

// probeKey asks the key store, as the set's identity, whether the key version
// kid may be used now: a wrap of a throw-away key succeeds only for an
// enabled, unexpired key the identity still has access to.
func (h *Host) probeKey(ctx context.Context, des *DiskEncryptionSet, kid string) (KeyProblem, error) {
	ck, err := h.customerKeys(des.Name)
	if err != nil {
		return KeyRevoked, err
	}
	probe := make([]byte, 32)
	rand.Read(probe)
	_, err = ck.WrapKey(ctx, kid, probe)
	if err == nil {
		return KeyUsable, nil
	}
	if c, ok := h.cfg.Keys.(KeyClassifier); ok {
		return c.Classify(err), err
	}
	return KeyRevoked, err
}

// cmkDisks lists the open customer-key disks of a running VM with their sets.
type cmkDisk struct {
	name string
	kid  string
	des  *DiskEncryptionSet
	d    *disk.Disk
}

func (h *Host) cmkDisksOf(vm string) []cmkDisk {
	var out []cmkDisk
	rv := h.running[vm]
	if rv == nil {
		return nil
	}
	for _, od := range rv.images {
		r := h.st.Disks[od.resource]
		if r == nil || r.Encryption.DiskEncryptionSetID == "" {
			continue
		}
		if des, ok := h.desByID(r.Encryption.DiskEncryptionSetID); ok {
			out = append(out, cmkDisk{name: r.Name, kid: r.KeyID, des: des, d: od.d})
		}
	}
	return out
}

// MonitorKeys runs until ctx ends: every Interval, and at once when wake
// fires (an event from the key store), it checks the customer keys of every
// running VM and enforces what it finds.
func (h *Host) MonitorKeys(ctx context.Context, mc MonitorConfig, wake <-chan struct{}) {
	t := time.NewTicker(mc.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
		h.CheckKeys(ctx, mc)
	}
}

// CheckKeys checks every running VM's customer keys once:
//   - usable: the disks' leases are extended;
//   - revoked (disabled, deleted, access removed): the VM is stopped — its
//     disks flushed, its keys wiped — with a reason naming the key;
//   - expired: the same, unless OnExpiry is next-start;
//   - key store unreachable: nothing is revoked; the leases are not
//     extended, so I/O fails with EIO once they run out; a warning shows
//     in vm show.
func (h *Host) CheckKeys(ctx context.Context, mc MonitorConfig) {
	h.mu.Lock()
	type vmKeys struct {
		vm    string
		disks []cmkDisk
	}
	var work []vmKeys
	for name := range h.running {
		if ds := h.cmkDisksOf(name); len(ds) > 0 {
			work = append(work, vmKeys{name, ds})
		}
	}
	h.mu.Unlock()

	for _, w := range work {
		var stopReason, warning string
		for _, cd := range w.disks {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			problem, err := h.probeKey(cctx, cd.des, cd.kid)
			cancel()
			switch {
			case problem == KeyUsable || (problem == KeyExpired && mc.OnExpiry == ExpiryNextStart):
				cd.d.SetLease(time.Now().Add(mc.Lease))
			case problem == KeyUnreachable:
				warning = fmt.Sprintf("key store unreachable at %s (%v); I/O continues until the data key lease ends", time.Now().UTC().Format(time.RFC3339), err)
				h.log.Warn("key store unreachable; keeping the leased data keys", "vm", w.vm, "disk", cd.name, "key", cd.kid, "err", err)
			default:
				stopReason = fmt.Sprintf("key %s of disk encryption set %q is not usable: %v", cd.kid, cd.des.Name, err)
			}
			if stopReason != "" {
				break
			}
		}
		h.mu.Lock()
		vm := h.st.VMs[w.vm]
		if vm != nil && vm.PowerState == PowerRunning && h.running[w.vm] != nil {
			if stopReason != "" {
				h.log.Warn("stopping VM: its customer key is not usable", "vm", w.vm, "reason", stopReason)
				if err := h.stop(vm, PowerStopped, stopReason); err != nil {
					h.log.Error("stopping VM", "vm", w.vm, "err", err)
				}
			} else if vm.KeyWarning != warning {
				vm.KeyWarning = warning
				_ = h.save()
			}
		}
		h.mu.Unlock()
	}
}

// checkStartKeys asks the key store, at start time, whether every customer
// key of vm may be used; it refuses with the key, its state and the fix.
func (h *Host) checkStartKeys(ctx context.Context, vm *VM) error {
	for _, name := range vmDiskNames(vm) {
		r := h.st.Disks[name]
		if r == nil || r.Encryption.DiskEncryptionSetID == "" {
			continue
		}
		des, ok := h.desByID(r.Encryption.DiskEncryptionSetID)
		if !ok {
			return conflict("disk %q uses a disk encryption set that no longer exists", name)
		}
		problem, err := h.probeKey(ctx, des, r.KeyID)
		switch problem {
		case KeyUsable:
			continue
		case KeyUnreachable:
			return errorf(503, "KeyStoreUnreachable", "VM %q cannot start: the key store did not answer for key %s of disk %q: %v; try again when it is back", vm.Name, r.KeyID, name, err)
		case KeyExpired:
			return conflict("VM %q cannot start: key %s of disk %q (disk encryption set %q) has expired: %v; set a later expiry on the key (hostcrypt key set-attributes --expires …) or give the set a new key", vm.Name, r.KeyID, name, des.Name, err)
		default:
			return conflict("VM %q cannot start: key %s of disk %q (disk encryption set %q) is not usable: %v; enable or recover the key, or restore the access policy of identity %s", vm.Name, r.KeyID, name, des.Name, err, des.Identity.PrincipalID)
		}
	}
	return nil
}
