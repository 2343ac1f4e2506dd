package control

import (
	"context"
	"errors"
	"fmt"
	"os"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
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
		if p.Alive {
			st = api.HostAlive
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
type Writers interface {
	Open(ctx context.Context, vm string) (VMWriter, error)
}

// VMWriter is one running VM's connection to the shared storage.
type VMWriter interface {
	// Disk takes the writer lock of the disk with unique id id and returns
	// the storage to open it on, refused once the lease is lost, and the
	// release of the lock. A lock another writer holds is an error
	// wrapping storage.ErrConflict. lost is called once, if the lease is
	// lost while held.
	Disk(ctx context.Context, id string, lost func(error)) (storage.Backend, func(), error)
	// Close closes the connection; every lock was released before.
	Close() error
}

// diskStorage returns the storage VM vm opens disk d on: on a shared store
// its own connection, under the disk's writer lock, whose loss stops the
// VM; otherwise the host's storage.
func (h *Host) diskStorage(ctx context.Context, w VMWriter, vm string, d *store.Disk) (storage.Backend, func(), error) {
	if w == nil {
		return h.cfg.Storage, func() {}, nil
	}
	be, release, err := w.Disk(ctx, d.UniqueID, func(err error) {
		go h.leaseLost(vm, d.Name, err)
	})
	if errors.Is(err, storage.ErrConflict) {
		return nil, nil, conflict("disk %q is still locked by another writer (a host that ran it and has not let it go); "+
			"it is free once that host closes it or its lease runs out", d.Name)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("disk %q: taking its writer lock: %w", d.Name, err)
	}
	return be, release, nil
}

// leaseLost stops VM vm, whose writer lease on disk has been lost: its
// writes fail from then on, and another host may take the disk.
func (h *Host) leaseLost(vm, disk string, cause error) {
	reason := fmt.Sprintf("host %s lost its writer lease on disk %q: %v", h.cfg.HostName, disk, cause)
	h.log.Error("stopping VM: its writer lease is lost", "vm", vm, "disk", disk, "err", cause)
	release, err := h.claim("stopping: its writer lease is lost", "vm/"+vm)
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
