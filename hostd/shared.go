package hostd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"hostcrypt/cluster"
	"hostcrypt/control"
	"hostcrypt/control/store"
	"hostcrypt/storage"
)

// sharedStore is what a host on a shared store (a RADOS pool) adds to the
// control plane: the records in the pool and the registration that makes
// the host known, and seen alive, by the others.
type sharedStore struct {
	reg     *cluster.Registry
	secrets *store.Dir
}

// joinShared registers host name on the shared storage be and opens this
// host's secrets (never in the pool: see store.Shared).
func joinShared(ctx context.Context, be storage.Backend, name string, lease time.Duration, stateDir string, log *slog.Logger) (*sharedStore, error) {
	locks, ok := be.(cluster.Locks)
	if !ok {
		return nil, fmt.Errorf("--storage: this backend has no locks, so several hosts cannot share it")
	}
	reg, err := cluster.Join(ctx, cluster.Config{Name: name, Store: be, Locks: locks, Lease: lease, Log: log})
	if err != nil {
		return nil, fmt.Errorf("--host-name: %w", err)
	}
	secrets, err := store.Open(stateDir, log)
	if err != nil {
		reg.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return &sharedStore{reg: reg, secrets: secrets}, nil
}

// configure makes cfg's control plane use the shared records.
func (s *sharedStore) configure(cfg *control.Config, be storage.Backend, name string) {
	cfg.Store = store.NewShared(be)
	cfg.Secrets = s.secrets
	cfg.Peers = peers{s.reg}
	cfg.HostName = name
}

// close gives the host's name up: the others see it lost at once.
func (s *sharedStore) close(ctx context.Context) error {
	return errors.Join(s.secrets.Close(), s.reg.Close(ctx))
}

// peers is the registry as the control plane asks it.
type peers struct{ reg *cluster.Registry }

func (p peers) Hosts(ctx context.Context) ([]control.Peer, error) {
	hs, err := p.reg.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]control.Peer, 0, len(hs))
	for _, h := range hs {
		out = append(out, control.Peer{Name: h.Name, Alive: h.Alive, Fenced: h.FencedBy != ""})
	}
	return out, nil
}
