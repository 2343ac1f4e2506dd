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
	hcrypto "hostcrypt/crypto"
	"hostcrypt/keystore/hostkeys"
	"hostcrypt/storage"
)

// sharedStore is what a host on a shared store (a RADOS pool) adds to the
// control plane: the records in the pool and the registration that makes
// the host known, and seen alive, by the others.
type sharedStore struct {
	reg     *cluster.Registry
	secrets *store.Dir
	// recordKey is the host group's record key (nil without a host
	// identity), wiped at close.
	recordKey []byte
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

// configure makes cfg's control plane use the shared records. With a host
// identity (hostcryptd --host-token-file) the records are sealed with the
// host group's record key, read from the key store now, and the sets'
// identities are the group's; adopt seals records an older version left
// unsealed.
func (s *sharedStore) configure(ctx context.Context, cfg *control.Config, be storage.Backend, name string, ks *hostkeys.Service, adopt bool, log *slog.Logger) error {
	cfg.Secrets = s.secrets
	cfg.Peers = peers{s.reg}
	cfg.HostName = name
	hi := ks.HostIdentity()
	if hi == nil {
		if adopt {
			return fmt.Errorf("--adopt-unsealed-records: records are sealed with the host group's key, read as the host's identity: give --host-token-file too")
		}
		log.Warn("no host identity (--host-token-file): the shared records are not sealed, so whoever writes the pool can change them unnoticed, and a disk encryption set made on this host is usable on this host only")
		cfg.Store = store.NewShared(be)
		return nil
	}
	key, err := ks.RecordKey(ctx)
	if err != nil {
		return fmt.Errorf("--host-token-file: %w", err)
	}
	s.recordKey = key
	opts := []store.SharedOption{store.WithRecordKey(hi.Group(), key)}
	if adopt {
		opts = append(opts, store.AdoptUnsealed())
	}
	sh := store.NewShared(be, opts...)
	if adopt {
		n, err := sh.Adopt(ctx)
		if err != nil {
			return fmt.Errorf("--adopt-unsealed-records: %w", err)
		}
		log.Warn("unsealed shared records adopted: sealed as they were", "records", n)
	}
	cfg.Store = sh
	cfg.HostIdentity = hi
	log.Info("host identity in the key store", "principal", ks.HostPrincipal(), "group", hi.Group())
	return nil
}

// close gives the host's name up: the others see it lost at once.
func (s *sharedStore) close(ctx context.Context) error {
	hcrypto.Wipe(s.recordKey)
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
