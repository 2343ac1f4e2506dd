package control

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
	"hostcrypt/internal/atomicfile"
	"hostcrypt/storage"
)

// Many hosts on one store. When several hosts share the storage (a RADOS
// pool), they share the records too (Config.Store is a store.Shared): every
// host sees every disk, snapshot, image, disk encryption set and VM, and a
// creation racing another host's of the same name loses to it as it would
// to a request of its own host. What runs is a host's own: a VM's record
// names the host that runs it (VM.Host), only that host stops it, changes
// it or its disks, or brings it back after a restart; the others refuse,
// naming it. Conversions and transfers likewise belong to the host that
// began them.

// Peers tells which hosts use a shared store, and whether each is alive
// as the store's servers see it (never by comparing clocks).
type Peers interface {
	Hosts(ctx context.Context) ([]Peer, error)
}

// Peer is a host registered on a shared store.
type Peer struct {
	Name  string
	Alive bool
	// Fenced says another host fenced its clients to take its VMs over
	// since it last joined.
	Fenced bool
}

// shared tells whether the records are shared with other hosts.
func (h *Host) shared() bool { return h.cfg.Peers != nil }

// hostTag is what a record says of the host that owns a run, a conversion
// or a transfer: this host's name on a shared store, "" on its own.
func (h *Host) hostTag() string {
	if !h.shared() {
		return ""
	}
	return h.cfg.HostName
}

// mine tells whether something a record gives to host owner is this
// host's to carry on: always on a host's own store; on a shared one, only
// what names this host.
func (h *Host) mine(owner string) bool {
	return !h.shared() || owner == h.cfg.HostName
}

// runsElsewhere refuses, naming the host, what must be done by the host
// that runs VM vm while another host runs it.
func (h *Host) runsElsewhere(vm *store.VM) error {
	if vm == nil || vm.PowerState != api.PowerRunning || h.mine(vm.Host) || vm.Host == "" {
		return nil
	}
	return conflict("VM %q runs on host %q; do this on that host (its hostcryptd), or stop the VM there first", vm.Name, vm.Host)
}

// diskElsewhere refuses what must be done by the host that runs the VM a
// disk is attached to, while another host runs it.
func (h *Host) diskElsewhere(r *store.Records, d *store.Disk) error {
	if d == nil || d.ManagedBy == "" {
		return nil
	}
	if err := h.runsElsewhere(r.VMs[d.ManagedBy]); err != nil {
		return conflict("disk %q is attached to VM %q, which runs on host %q; do this on that host, or stop the VM there first", d.Name, d.ManagedBy, r.VMs[d.ManagedBy].Host)
	}
	return nil
}

// ListHosts lists the hosts that use the store with their state and the
// VMs the records say they run: on a host's own store, this host alone.
func (h *Host) ListHosts(ctx context.Context) ([]api.HostInfo, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	if !h.shared() {
		name := h.cfg.HostName
		if name == "" {
			name, _ = os.Hostname()
		}
		hi := api.HostInfo{Name: name, State: api.HostAlive, This: true, VMs: []string{}}
		for _, n := range sortedKeys(r.VMs) {
			if r.VMs[n].PowerState == api.PowerRunning {
				hi.VMs = append(hi.VMs, n)
			}
		}
		return []api.HostInfo{hi}, nil
	}
	peers, err := h.cfg.Peers.Hosts(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing the hosts of the store: %w", err)
	}
	byName := map[string]*api.HostInfo{}
	for _, p := range peers {
		st := api.HostLost
		switch {
		case p.Alive:
			st = api.HostAlive
		case p.Fenced:
			st = api.HostFenced
		}
		byName[p.Name] = &api.HostInfo{Name: p.Name, State: st, This: p.Name == h.cfg.HostName, VMs: []string{}}
	}
	for _, n := range sortedKeys(r.VMs) {
		vm := r.VMs[n]
		if vm.Host == "" || vm.PowerState != api.PowerRunning && vm.PowerState != api.PowerFailed {
			continue
		}
		hi := byName[vm.Host]
		if hi == nil {
			// A host whose registration is gone: the VM still names it.
			hi = &api.HostInfo{Name: vm.Host, State: api.HostLost, VMs: []string{}}
			byName[vm.Host] = hi
		}
		hi.VMs = append(hi.VMs, n)
	}
	out := make([]api.HostInfo, 0, len(byName))
	for _, n := range sortedKeys(byName) {
		out = append(out, *byName[n])
	}
	return out, nil
}

// hostAlive tells whether host name is alive on the shared store; when
// that cannot be told it answers yes, which keeps what the host may still
// be using.
func (h *Host) hostAlive(ctx context.Context, name string) bool {
	if !h.shared() {
		return false
	}
	peers, err := h.cfg.Peers.Hosts(ctx)
	if err != nil {
		return true
	}
	for _, p := range peers {
		if p.Name == name {
			return p.Alive
		}
	}
	return false
}

// Writers gives each running VM, on a shared store, a connection to the
// storage of its own (one client instance of the cluster, so that fencing
// one VM's writer fences no other VM) and each of its disks a writer lock
// under a lease.
//
// An operation on a disk that no VM runs (a snapshot or copy of it, a
// resize, a re-wrap of its key, its conversion, export or deletion) takes
// the disk's writer lock too, on a connection of the operation's own
// (Operation), for as long as it runs: a VM start on another host, or
// another host's operation on the disk, is refused meanwhile, naming this
// host and the operation; and should the lock be taken over, the client
// fenced is the operation's, never the one the host reads and writes its
// records on.
type Writers interface {
	Open(ctx context.Context, vm string) (VMWriter, error)
	// Operation opens a writer for the operation op ("snapshot s1"),
	// which the disks' owner records and lock descriptions name.
	Operation(ctx context.Context, op string) (VMWriter, error)
}

// LockHeld is what VMWriter.Disk fails with when another writer holds the
// disk's lock: who, as the disk's owner record says (Host is "" when the
// record does not tell, as in the instant between another writer's lock
// and its record). It wraps storage.ErrConflict.
type LockHeld struct {
	Host string
	VM   string
	Op   string
}

func (e *LockHeld) Error() string {
	if e.Host == "" {
		return "the disk's writer lock is held by another writer"
	}
	return "the disk's writer lock is held by host " + e.Host + " (" + e.holder() + ")"
}

func (e *LockHeld) Unwrap() error { return storage.ErrConflict }

// holder says what holds the lock, as a message names it.
func (e *LockHeld) holder() string {
	switch {
	case e.Op != "":
		return e.Op
	case e.VM != "":
		return "VM " + e.VM
	}
	return "a writer"
}

// VMWriter is one running VM's connection to the shared storage.
type VMWriter interface {
	// Disk takes the writer lock of the disk with unique id id, then its
	// ownership: the last owner's client fenced unless it let the disk go
	// cleanly, the ownership epoch bumped unless the last owner was this
	// host, and after a takeover the disk's metadata (at metaKey) given a
	// new version. A lock another writer holds is an error wrapping
	// storage.ErrConflict. lost is called once, if the lease is lost
	// while held.
	Disk(ctx context.Context, id, metaKey string, lost func(error)) (DiskWriter, error)
	// Free fails, wrapping storage.ErrConflict, while another writer
	// holds the disk's lock under a lease that has not run out.
	Free(ctx context.Context, id string) error
	// Close closes the connection; every lock was released before.
	Close() error
}

// DiskWriter is a disk taken by a VMWriter.
type DiskWriter struct {
	// Storage is what the disk opens on: refused once the lease is lost,
	// metadata writes refused once another owner took the disk.
	Storage storage.Backend
	// Release lets the disk go cleanly.
	Release func()
	// Epoch is the disk's ownership epoch under this writer.
	Epoch uint64
	// Fenced names the host whose client was fenced to take the disk, or
	// is "".
	Fenced string
}

// HealLoop, on a shared store, restarts here the VMs of hosts that are
// lost, every interval until ctx ends (see heal).
func (h *Host) HealLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.HealOnce(ctx)
	}
}

// HealOnce restarts here every VM whose records say it runs on a host that
// is lost, once that host's writer locks have expired.
func (h *Host) HealOnce(ctx context.Context) {
	if !h.shared() || h.cfg.Writers == nil {
		return
	}
	r, err := h.load(ctx)
	if err != nil {
		h.log.Error("healing: reading the records", "err", err)
		return
	}
	var lost map[string]bool
	for _, n := range sortedKeys(r.VMs) {
		vm := r.VMs[n]
		if vm.PowerState != api.PowerRunning || vm.Host == "" || h.mine(vm.Host) {
			continue
		}
		if lost == nil {
			peers, err := h.cfg.Peers.Hosts(ctx)
			if err != nil {
				h.log.Error("healing: listing the hosts", "err", err)
				return
			}
			lost = map[string]bool{}
			for _, p := range peers {
				lost[p.Name] = !p.Alive
			}
		}
		if !lost[vm.Host] {
			continue
		}
		if err := h.heal(ctx, r, vm); err != nil {
			h.log.Warn("healing: VM not taken over", "vm", n, "from", vm.Host, "err", err)
		}
	}
}

// heal takes VM vm over from its lost host, in the order RBD takes an
// exclusive lock: it makes sure the key store answers (healing is refused,
// with the reason in the VM's record, while it does not), that none of
// the VM's disks is still locked under a live lease, records the VM as
// this host's (of several healers the first to commit wins), and starts
// it; starting takes each disk's lock and ownership, which fences the lost
// host's client and bumps the disk's epoch before anything is written. A
// VM that then fails to start is marked failed with the reason.
func (h *Host) heal(ctx context.Context, r *store.Records, vm *store.VM) error {
	from := vm.Host
	// Claimed as a VM coming back: its record says running.
	release, err := h.claim(recoverOp, "vm/"+vm.Name)
	if err != nil {
		return err
	}
	defer release()
	if err := h.keyStoreAnswers(ctx); err != nil {
		why := fmt.Sprintf("host %s was lost; not taken over yet: the key store does not answer (%v); healing goes on once it does", from, message(err))
		_, uerr := h.update(ctx, func(r *store.Records) error {
			if v := r.VMs[vm.Name]; v != nil && v.Host == from && v.PowerStateReason != why {
				v.PowerStateReason = why
			}
			return nil
		})
		return errors.Join(errors.New(why), uerr)
	}
	w, err := h.cfg.Writers.Open(ctx, vm.Name)
	if err != nil {
		return err
	}
	for _, n := range vm.DiskNames() {
		d := r.Disks[n]
		if d == nil {
			continue
		}
		if err := w.Free(ctx, d.UniqueID); err != nil {
			w.Close()
			return fmt.Errorf("disk %q: %w", n, err)
		}
	}
	reason := fmt.Sprintf("taken over by host %s: host %s was lost (its leases ran out; its writers are fenced)", h.cfg.HostName, from)
	if _, err := h.update(ctx, func(r *store.Records) error {
		v := r.VMs[vm.Name]
		if v == nil || v.PowerState != api.PowerRunning || v.Host != from {
			return conflict("VM %q changed meanwhile", vm.Name)
		}
		v.Host = h.cfg.HostName
		v.PowerStateReason = fmt.Sprintf("host %s is taking it over: host %s was lost", h.cfg.HostName, from)
		return nil
	}); err != nil {
		w.Close()
		return err
	}
	h.log.Warn("taking a VM over from a lost host", "vm", vm.Name, "from", from)
	startErr := h.start(ctx, vm.Name, w)
	state, why := api.PowerRunning, reason
	if startErr != nil {
		h.log.Error("VM taken over did not start", "vm", vm.Name, "err", startErr)
		state, why = api.PowerFailed, reason+"; it did not start here: "+message(startErr)
	}
	_, err = h.update(ctx, func(r *store.Records) error {
		if v := r.VMs[vm.Name]; v != nil && v.Host == h.cfg.HostName {
			v.PowerState, v.PowerStateReason = state, why
		}
		return nil
	})
	return errors.Join(startErr, err)
}

// keyStoreAnswers asks the key store for nothing new: it fails when the
// key store does not answer.
func (h *Host) keyStoreAnswers(ctx context.Context) error {
	_, err := h.keys.Events(ctx, math.MaxInt64, 0)
	return err
}

// diskStorage returns the storage VM vm opens disk d on: on a shared store
// its own connection, under the disk's writer lock and ownership, whose
// loss stops the VM; otherwise the host's storage. On a shared store the
// disk's host cache is kept only if it was filled under the ownership
// epoch taken now (checkCacheEpoch).
func (h *Host) diskStorage(ctx context.Context, w VMWriter, vm string, d *store.Disk) (storage.Backend, func(), error) {
	if w == nil {
		return h.cfg.Storage, func() {}, nil
	}
	dw, err := w.Disk(ctx, d.UniqueID, disk.MetaKey(d.StoragePrefix), func(err error) {
		go h.leaseLost(vm, d.Name, err)
	})
	if err != nil {
		return nil, nil, lockRefused(d, err)
	}
	if dw.Fenced != "" {
		h.log.Warn("took a disk over: the last writer's client is fenced", "disk", d.Name, "from", dw.Fenced, "epoch", dw.Epoch)
	}
	if err := h.checkCacheEpoch(d, dw.Epoch); err != nil {
		dw.Release()
		return nil, nil, err
	}
	release := func() {
		dw.Release()
		h.dropCacheEpoch(d)
	}
	return dw.Storage, release, nil
}

// lockRefused is the error of a writer lock on disk d that was refused
// with err: a Conflict naming the host that holds it, and what for, when
// its owner record tells.
func lockRefused(d *store.Disk, err error) error {
	var held *LockHeld
	switch {
	case errors.As(err, &held) && held.Host != "" && held.Op != "":
		return conflict("disk %q is locked by host %q, which runs an operation on it (%s); try again once it has finished", d.Name, held.Host, held.Op)
	case errors.As(err, &held) && held.Host != "":
		return conflict("disk %q is locked by host %q (%s), which runs it; stop it there first, or wait until that host closes it or its lease runs out", d.Name, held.Host, held.holder())
	case errors.Is(err, storage.ErrConflict):
		return conflict("disk %q is still locked by another writer (a host that ran it and has not let it go); "+
			"it is free once that host closes it or its lease runs out", d.Name)
	}
	return fmt.Errorf("disk %q: taking its writer lock: %w", d.Name, err)
}

// opLock is a disk's writer lock taken for an operation.
type opLock struct {
	// Storage is what the operation reaches the disk's objects through:
	// on a shared store the lock's own connection, refused once the lease
	// is lost or another owner took the disk; otherwise the host's.
	Storage storage.Backend
	// InVM says no lock was taken because a VM of this host had the disk
	// open: should the VM be gone by the time the operation opens the
	// disk, it must refuse rather than go on without the lock.
	InVM    bool
	release func()
}

// vmGone is the refusal of an operation whose disk's VM stopped between
// its start and its opening of the disk.
func vmGone(d *store.Disk) error {
	return conflict("disk %q: its VM stopped while the operation began; try again", d.Name)
}

// Release gives the lock up cleanly (the owner record says released) and
// closes its connection. It may be called more than once.
func (l *opLock) Release() { l.release() }

// handOver returns the lock for another to release (an operation that
// goes on in the background), and leaves l's Release doing nothing.
func (l *opLock) handOver() *opLock {
	out := &opLock{Storage: l.Storage, InVM: l.InVM, release: l.release}
	l.release = func() {}
	return out
}

// lockForOp takes, on a shared store, the writer lock of disk d for the
// operation op ("snapshot s1"), on a writer of the operation's own (see
// Writers), and with it the disk's ownership: an operation by another host
// than the disk's last owner bumps its ownership epoch as a start does, so
// that a host cache of the disk filled before is never written back
// (checkCacheEpoch). A lock another host holds is a Conflict naming it.
// On a host's own store, or while a VM of this host has the disk open
// (its writer holds the lock, and the operation goes through its volume),
// it takes nothing.
func (h *Host) lockForOp(ctx context.Context, d *store.Disk, op string) (*opLock, error) {
	if h.cfg.Writers == nil || !h.shared() {
		return &opLock{Storage: h.cfg.Storage, release: func() {}}, nil
	}
	if len(h.attachmentsOf(d.Name)) > 0 {
		return &opLock{Storage: h.cfg.Storage, InVM: true, release: func() {}}, nil
	}
	w, err := h.cfg.Writers.Operation(ctx, op)
	if err != nil {
		return nil, fmt.Errorf("disk %q: opening a connection of its own to the storage for the %s: %w", d.Name, op, err)
	}
	dw, err := w.Disk(ctx, d.UniqueID, disk.MetaKey(d.StoragePrefix), func(err error) {
		h.log.Error("an operation lost its writer lease on a disk: its writes fail from now on", "disk", d.Name, "op", op, "err", err)
	})
	if err != nil {
		w.Close()
		return nil, lockRefused(d, err)
	}
	if dw.Fenced != "" {
		h.log.Warn("took a disk over for an operation: the last writer's client is fenced", "disk", d.Name, "op", op, "from", dw.Fenced, "epoch", dw.Epoch)
	}
	var once sync.Once
	return &opLock{Storage: dw.Storage, release: func() {
		once.Do(func() {
			dw.Release()
			if err := w.Close(); err != nil {
				h.log.Warn("closing an operation's connection to the storage", "disk", d.Name, "op", op, "err", err)
			}
		})
	}}, nil
}

// checkCacheEpoch keeps disk d's host cache only if it was filled under
// ownership epoch epoch, and records that epoch for it. A cache of another
// epoch (the disk was taken over since, by this host or another) holds
// pages older than what the store holds: it is shredded before the disk
// opens, never written back.
func (h *Host) checkCacheEpoch(d *store.Disk, epoch uint64) error {
	dir := h.cacheDir(d)
	if dir == "" {
		return nil
	}
	file := dir + ".epoch"
	raw, err := atomicfile.Read(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("disk %q: reading its host cache's epoch: %w", d.Name, err)
	}
	had, _ := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if had != epoch {
		warned := false
		for _, c := range []string{dir, dir + ".plain"} {
			if _, err := os.Stat(c); err == nil {
				if !warned {
					h.log.Warn("shredding a host cache filled under another ownership epoch of its disk", "disk", d.Name, "cache_epoch", had, "epoch", epoch)
					warned = true
				}
				if err := os.RemoveAll(c); err != nil {
					return fmt.Errorf("disk %q: shredding its stale host cache: %w", d.Name, err)
				}
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	// Durably: a cache whose epoch file came back empty after a crash
	// would be shredded with writes in it that were never flushed.
	if err := atomicfile.Write(file, []byte(strconv.FormatUint(epoch, 10)+"\n"), 0o600); err != nil {
		return fmt.Errorf("disk %q: recording its host cache's epoch: %w", d.Name, err)
	}
	return nil
}

// dropCacheEpoch forgets the epoch of disk d's host cache once the cache
// is gone (a clean close writes it back and removes it).
func (h *Host) dropCacheEpoch(d *store.Disk) {
	dir := h.cacheDir(d)
	if dir == "" {
		return
	}
	for _, c := range []string{dir, dir + ".plain"} {
		if _, err := os.Stat(c); err == nil {
			return
		}
	}
	_ = os.Remove(dir + ".epoch")
}

const leaseLostOp = "stopping: its writer lease is lost"

// leaseLost stops VM vm, whose writer lease on disk has been lost: its
// writes fail from then on, and another host may take the disk.
func (h *Host) leaseLost(vm, disk string, cause error) {
	reason := fmt.Sprintf("host %s lost its writer lease on disk %q: %v", h.cfg.HostName, disk, cause)
	if r, err := h.load(context.Background()); err == nil {
		if v := r.VMs[vm]; v != nil && !h.mine(v.Host) {
			// Stopped here for good: the records give it to the other
			// host now, and stop leaves them alone.
			reason = fmt.Sprintf("taken over by host %s", v.Host)
		}
	}
	h.log.Error("stopping VM: its writer lease is lost", "vm", vm, "disk", disk, "err", cause)
	h.mu.Lock()
	stopping := h.busy["vm/"+vm] == leaseLostOp
	h.mu.Unlock()
	if stopping {
		return // another disk of the VM found it first
	}
	release, err := h.claim(leaseLostOp, "vm/"+vm)
	if err != nil {
		h.log.Error("stopping VM", "vm", vm, "err", err)
		return
	}
	defer release()
	if !h.isRunning(vm) {
		return
	}
	if err := h.stop(context.Background(), vm, api.PowerStopped, reason); err != nil {
		h.log.Error("stopping VM", "vm", vm, "err", err)
	}
}
