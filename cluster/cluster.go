// Package cluster registers the hosts that share one store (a RADOS pool)
// and tells which of them are alive.
//
// A host is alive while it holds its registration lock: a leased exclusive
// lock on its object (HostsPrefix/NAME), renewed every third of the lease
// with "must renew". The store's servers keep the lock and expire it on
// their own clock, so whether a host is alive is what the store says,
// never a comparison of the hosts' clocks: a host whose clock is wrong
// stays alive as long as it renews, and a host that stops renewing (dead,
// frozen, cut off) is lost once its lease runs out on the server.
//
// The same lock keeps two daemons from serving under one name: the second
// is refused while the first's lease runs.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"hostcrypt/storage"
)

const (
	// HostsPrefix is where the hosts' objects are: HostsPrefix/NAME.
	HostsPrefix = "cluster/hosts"
	// LockName is the name of a host's registration lock on its object.
	LockName = "hostcrypt.host"
	// DefaultLease is how long a host stays alive after its last renewal
	// reached the store.
	DefaultLease = 30 * time.Second
	// MaxNameLen bounds a host name.
	MaxNameLen = 63
)

// Locks are leased exclusive locks kept by the store's servers
// (storage/rados.Backend has them).
type Locks interface {
	// Lock takes the exclusive lock name on object key for lease as cookie
	// (creating the object if missing), or with renew extends it and
	// fails wrapping storage.ErrNotFound when it is no longer held.
	// Another holder is an error wrapping storage.ErrConflict.
	Lock(ctx context.Context, key, name, cookie, desc string, lease time.Duration, renew bool) error
	// Unlock releases the lock; one not held is no error.
	Unlock(ctx context.Context, key, name, cookie string) error
	// Holders returns who holds the lock and has not seen its lease
	// expire, as the server sees it.
	Holders(ctx context.Context, key, name string) ([]string, error)
}

// Config is what a Registry is built from.
type Config struct {
	// Name is this host's name: 1 to MaxNameLen of [A-Za-z0-9._-],
	// starting with a letter or digit.
	Name string
	// Store holds the hosts' objects; Locks locks them (usually the same
	// backend).
	Store storage.Backend
	Locks Locks
	// Lease is DefaultLease if zero.
	Lease time.Duration
	Log   *slog.Logger
	// Now is the wall clock, for the time a host says it joined (shown,
	// never compared). A test hook.
	Now func() time.Time
}

// Host is a registered host.
type Host struct {
	Name   string
	Alive  bool
	Joined time.Time
	// FencedBy names the host that fenced this one's clients to take a
	// disk over since it last joined, or is "".
	FencedBy string
}

// record is what a host's object holds.
type record struct {
	Name     string    `json:"name"`
	Joined   time.Time `json:"joined"`
	FencedBy string    `json:"fencedBy,omitempty"`
}

// Registry is this host's registration: Join takes it, Close gives it up.
type Registry struct {
	cfg    Config
	key    string
	cookie string
	stop   chan struct{}
	wg     sync.WaitGroup
}

// CheckName says what is wrong with a host name, or nil.
func CheckName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("host name %q: give 1 to %d characters", name, MaxNameLen)
	}
	c := name[0]
	if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
		return fmt.Errorf("host name %q: start with a letter or a digit", name)
	}
	if err := storage.ValidKey(name); err != nil || strings.Contains(name, "/") {
		return fmt.Errorf("host name %q: use letters, digits, '.', '_' and '-' only", name)
	}
	return nil
}

// Join registers host cfg.Name: it takes the host's lock, refused while
// another daemon holds it, writes the host's object and keeps renewing the
// lock until Close.
func Join(ctx context.Context, cfg Config) (*Registry, error) {
	if err := CheckName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Registry{cfg: cfg, key: path.Join(HostsPrefix, cfg.Name), cookie: newCookie(), stop: make(chan struct{})}
	err := cfg.Locks.Lock(ctx, r.key, LockName, r.cookie, r.desc(), cfg.Lease, false)
	if errors.Is(err, storage.ErrConflict) {
		return nil, fmt.Errorf("host name %q is in use by a running hostcryptd (it holds the name's lock on the store); "+
			"give this host another --host-name, or stop that daemon; a host that died frees its name %v after its last renewal", cfg.Name, cfg.Lease)
	}
	if err != nil {
		return nil, fmt.Errorf("registering host %q: %w", cfg.Name, err)
	}
	raw, _ := json.Marshal(record{Name: cfg.Name, Joined: cfg.Now().UTC()})
	if err := cfg.Store.WriteMeta(ctx, r.key, raw); err != nil {
		_ = cfg.Locks.Unlock(context.WithoutCancel(ctx), r.key, LockName, r.cookie)
		return nil, fmt.Errorf("registering host %q: %w", cfg.Name, err)
	}
	r.wg.Go(r.renew)
	cfg.Log.Info("host registered on the shared store", "host", cfg.Name, "lease", cfg.Lease)
	return r, nil
}

func (r *Registry) desc() string { return "hostcryptd host " + r.cfg.Name }

// renew renews the lock every third of the lease until Close. A lock that
// expired meanwhile (the host was frozen or cut off longer than the lease)
// is taken again, with a warning: the host was seen lost meanwhile.
func (r *Registry) renew() {
	t := time.NewTicker(r.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Lease)
		err := r.cfg.Locks.Lock(ctx, r.key, LockName, r.cookie, r.desc(), r.cfg.Lease, true)
		if errors.Is(err, storage.ErrNotFound) {
			r.cfg.Log.Warn("this host's registration expired on the store (other hosts saw it lost); taking it again", "host", r.cfg.Name)
			err = r.cfg.Locks.Lock(ctx, r.key, LockName, r.cookie, r.desc(), r.cfg.Lease, false)
		}
		cancel()
		if err != nil {
			r.cfg.Log.Error("renewing this host's registration on the store", "host", r.cfg.Name, "err", err)
		}
	}
}

// Close stops renewing and releases the lock: the host is seen lost at
// once.
func (r *Registry) Close(ctx context.Context) error {
	select {
	case <-r.stop:
		return nil
	default:
	}
	close(r.stop)
	r.wg.Wait()
	return r.cfg.Locks.Unlock(ctx, r.key, LockName, r.cookie)
}

// Hosts lists every registered host, by name, with whether it is alive.
func (r *Registry) Hosts(ctx context.Context) ([]Host, error) {
	return List(ctx, r.cfg.Store, r.cfg.Locks)
}

// List lists the hosts registered in st, by name, with whether each is
// alive as the lock's server sees it.
func List(ctx context.Context, st storage.Backend, locks Locks) ([]Host, error) {
	keys, err := st.List(ctx, HostsPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing the hosts: %w", err)
	}
	var out []Host
	for _, k := range keys {
		name := strings.TrimPrefix(k, HostsPrefix+"/")
		if CheckName(name) != nil {
			continue
		}
		h := Host{Name: name}
		if raw, err := st.ReadMeta(ctx, k); err == nil {
			var rec record
			if json.Unmarshal(raw, &rec) == nil {
				h.Joined, h.FencedBy = rec.Joined, rec.FencedBy
			}
		}
		holders, err := locks.Holders(ctx, k, LockName)
		if err != nil {
			return nil, fmt.Errorf("host %q: %w", name, err)
		}
		h.Alive = len(holders) > 0
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// MarkFenced records in host name's object that host by fenced its
// clients; the mark goes when the host joins again.
func MarkFenced(ctx context.Context, st storage.Backend, name, by string) error {
	key := path.Join(HostsPrefix, name)
	for range 5 {
		raw, v, err := st.ReadMetaVersion(ctx, key)
		if err != nil {
			return fmt.Errorf("marking host %q fenced: %w", name, err)
		}
		var rec record
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("marking host %q fenced: its object is damaged: %v", name, err)
		}
		rec.FencedBy = by
		raw, _ = json.Marshal(rec)
		if _, err = st.WriteMetaIf(ctx, key, raw, v); !errors.Is(err, storage.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("marking host %q fenced: its object kept changing", name)
}

// newCookie returns a cookie of its own for each registration, so that a
// restarted daemon never renews its predecessor's lock.
func newCookie() string { return rand.Text() }
