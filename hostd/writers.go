package hostd

import (
	"context"
	"fmt"
	"time"

	"hostcrypt/cluster"
	"hostcrypt/control"
	"hostcrypt/storage"
	"hostcrypt/storage/location"
)

// writers opens, for each running VM on a RADOS pool, a connection of its
// own (a client instance of its own) and takes a leased writer lock per
// disk on it.
type writers struct {
	loc   location.Location
	lease time.Duration
	host  string
}

// Open connects the VM's own client. Its calls are bounded well below a
// third of the lease (the location's timeout, at most lease/4), so that a
// renewal that does not answer fails before the lease could run out
// unnoticed.
func (w writers) Open(ctx context.Context, vm string) (control.VMWriter, error) {
	loc := w.loc
	cfg := *loc.RADOS
	if cfg.Timeout == 0 || cfg.Timeout > w.lease/4 {
		cfg.Timeout = max(w.lease/4, time.Second)
	}
	loc.RADOS = &cfg
	be, err := loc.Open(ctx)
	if err != nil {
		return nil, err
	}
	locks, ok := be.(cluster.Locks)
	if !ok {
		be.Close()
		return nil, fmt.Errorf("the storage backend has no locks")
	}
	return &vmWriter{be: be, locks: locks, lease: w.lease, desc: fmt.Sprintf("host %s, VM %s", w.host, vm)}, nil
}

type vmWriter struct {
	be    storage.Backend
	locks cluster.Locks
	lease time.Duration
	desc  string
}

func (v *vmWriter) Disk(ctx context.Context, id string, lost func(error)) (storage.Backend, func(), error) {
	l, err := cluster.Acquire(ctx, v.locks, []string{cluster.LockKey(id)}, v.desc, v.lease, lost)
	if err != nil {
		return nil, nil, err
	}
	release := func() { _ = l.Release(context.Background()) }
	return cluster.Guard(v.be, l), release, nil
}

func (v *vmWriter) Close() error { return v.be.Close() }
