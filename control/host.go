package control

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/control/store"
	hfs "hostcrypt/fs"
	"hostcrypt/storage"
	"hostcrypt/volume"
)

// Tree is the FUSE tree the running VMs' disks appear in.
type Tree interface {
	AddImage(vm, name string, img hfs.Image) error
	RemoveImage(vm, name string) error
	RemoveVM(vm string) error
	// Resized tells the tree that an image's size changed (a disk grown
	// while its VM runs).
	Resized(vm, name string)
}

var _ Tree = (*hfs.Tree)(nil)

// Defaults of the key-state enforcement, which hostcryptd's flags refer to.
const (
	// DefaultDEKLease is how long a customer-key disk serves I/O after the
	// last successful check of its key.
	DefaultDEKLease = time.Hour
	// DefaultKeyCheckInterval is how often the customer keys of the
	// running VMs are checked (and at once on a key store event).
	DefaultKeyCheckInterval = time.Minute
	// DefaultRotationInterval is how often disk encryption sets with
	// auto-rotation look for a new key version.
	DefaultRotationInterval = time.Hour
	// DefaultOnKeyExpiry is what an expired customer key does to a running
	// VM.
	DefaultOnKeyExpiry = ExpiryShutdown
	// DefaultCacheBytes bounds each attached disk's host cache.
	DefaultCacheBytes = 256 << 20
)

// Expiry policies for a running VM whose customer key expires.
const (
	// ExpiryShutdown stops the VM at the next key check.
	ExpiryShutdown = "shutdown"
	// ExpiryNextStart lets it run; it fails at its next start.
	ExpiryNextStart = "next-start"
)

// DefaultDESLimit is how many disk encryption sets one subscription may
// have in one location.
const DefaultDESLimit = 5000

// Config is what a Host is built from.
type Config struct {
	// StateDir holds the records and the secrets (store.Dir), unless Store
	// and Secrets are given.
	StateDir string
	Store    store.Store
	Secrets  store.Secrets
	// Storage holds the persisted disks.
	Storage storage.Backend
	// HostLocal holds what lives on the host only: the temp disks.
	HostLocal storage.Backend
	Keys      keys.Service
	Tree      Tree
	Location  string
	// Peers, on a store that several hosts share (Store is then a
	// store.Shared on their common storage), tells which hosts use it;
	// HostName names this one among them. Nil on a host's own store.
	Peers    Peers
	HostName string
	// HostIdentity, on a shared store, is this host's own identity in the
	// key store: the disk encryption sets' and user-assigned identities
	// are created for its host group, with no credential, and every host
	// of the group acts for them (customerKeys). Nil on a host's own
	// store, where each identity's credential is kept in Secrets.
	HostIdentity keys.HostIdentity
	// Writers, on a shared store, gives each running VM a storage
	// connection of its own and each of its disks a leased writer lock.
	Writers Writers
	// HealInterval, when not zero on a shared store, is how often Run
	// looks for VMs of lost hosts to take over (HealLoop).
	HealInterval time.Duration
	// CacheDir holds the host caches of attached disks (one directory per
	// disk); empty turns host caching off whatever the attachments ask.
	CacheDir string
	// CacheSize bounds each disk's host cache, in bytes (DefaultCacheBytes
	// if zero).
	CacheSize int64
	// CacheSequentialCutoff and CacheSlowStorage tune what goes around the
	// host caches (cache.Options); zero takes the cache's defaults, which
	// decide from the I/O pattern and storage's measured latency. Tests set
	// them to make a cache take in everything.
	CacheSequentialCutoff int64
	CacheSlowStorage      time.Duration
	// FlushInterval is how often a VM's open disks sync by themselves when
	// the guest does not flush (0: the engine's default).
	FlushInterval time.Duration
	// DEKLease is how long a customer-key disk serves I/O after the last
	// successful check of its key (DefaultDEKLease if zero).
	DEKLease time.Duration
	// KeyCheckInterval, RotationInterval and OnKeyExpiry set the
	// enforcement loops of Run (the defaults if zero).
	KeyCheckInterval time.Duration
	RotationInterval time.Duration
	OnKeyExpiry      string
	Log              *slog.Logger
	Now              func() time.Time
	// DESLimit lowers the number of disk encryption sets a subscription may
	// have per location (default DefaultDESLimit). A test hook: hostcryptd
	// never sets it, so a user of the daemon cannot change it.
	DESLimit int
	// Observer, if set, is told of every attached disk's opening, closing
	// and I/O (the metrics; see volume.Observer). Temp disks are not
	// observed.
	Observer volume.Observer
	// Recorder, if set, is told what the key checks and rotations find.
	Recorder Recorder
	// hooks are the tests' hooks into operations.
	hooks hooks
}

// hooks let a test stop an operation at a chosen point.
type hooks struct {
	// beforeSave is called before every commit of the records.
	beforeSave func()
	// copying is called before each piece of every long copy with what the
	// copy makes ("snapshot s1"); an error it returns ends the copy.
	copying func(ctx context.Context, what string) error
}

// Host is the compute control plane of one host. Its methods are safe for
// concurrent use (see the package comment for what they lock, and what
// they never lock across).
type Host struct {
	cfg       Config
	log       *slog.Logger
	store     store.Store
	secrets   store.Secrets
	keys      keys.Service
	closeDirs func() error

	// mu guards running and busy, and nothing that needs I/O.
	mu      sync.Mutex
	running map[string]*runningVM
	busy    map[string]string // "disk/d1" -> "snapshot s1 is being taken"

	// bg is cancelled at Shutdown; background work (conversions) runs under
	// it and is waited for with bgWG.
	bg       context.Context
	cancelBg context.CancelFunc
	bgWG     sync.WaitGroup
	// prog holds the progress of long copies.
	prog progressTable
	// nextKeyCheck is when RotateLoop next looks for new key versions (unix
	// nanoseconds; 0 until it runs).
	nextKeyCheck atomic.Int64
}

// runningVM is a VM whose disks are open and shown in the tree.
type runningVM struct {
	name   string
	images map[string]*attachment // file name in the tree -> its disk
	// w is the VM's own storage connection on a shared store; nil
	// otherwise.
	w VMWriter
}

// attachment is one image of a running VM.
type attachment struct {
	file string
	disk string // the disk resource; "" for the temp disk
	vol  *volume.Volume
	// release gives up the disk's writer lock, on a shared store, once
	// the volume is closed; nil otherwise.
	release func()
}

// close flushes and closes the volume, then gives its writer lock up.
func (a *attachment) close() (uint64, error) {
	n, err := a.vol.Close()
	if a.release != nil {
		a.release()
	}
	return n, err
}

// New opens the records and returns a Host. Call Recover to bring back the
// VMs that were running.
func New(cfg Config) (*Host, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Recorder == nil {
		cfg.Recorder = noRecorder{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Location == "" {
		cfg.Location = "local"
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultCacheBytes
	}
	if cfg.DEKLease <= 0 {
		cfg.DEKLease = DefaultDEKLease
	}
	if cfg.KeyCheckInterval <= 0 {
		cfg.KeyCheckInterval = DefaultKeyCheckInterval
	}
	if cfg.RotationInterval <= 0 {
		cfg.RotationInterval = DefaultRotationInterval
	}
	if cfg.OnKeyExpiry == "" {
		cfg.OnKeyExpiry = DefaultOnKeyExpiry
	}
	if cfg.OnKeyExpiry != ExpiryShutdown && cfg.OnKeyExpiry != ExpiryNextStart {
		return nil, fmt.Errorf("key expiry policy %q: use %s or %s", cfg.OnKeyExpiry, ExpiryShutdown, ExpiryNextStart)
	}
	if cfg.DESLimit <= 0 {
		cfg.DESLimit = DefaultDESLimit
	}
	if cfg.Keys == nil {
		return nil, errors.New("control: no key service")
	}
	if cfg.Peers != nil && cfg.HostName == "" {
		return nil, errors.New("control: a shared store needs this host's name")
	}
	h := &Host{cfg: cfg, log: cfg.Log, keys: cfg.Keys, store: cfg.Store, secrets: cfg.Secrets,
		running: map[string]*runningVM{}, busy: map[string]string{}, closeDirs: func() error { return nil }}
	if h.store == nil || h.secrets == nil {
		d, err := store.Open(cfg.StateDir, cfg.Log)
		if err != nil {
			return nil, err
		}
		if h.store == nil {
			h.store = d
		}
		if h.secrets == nil {
			h.secrets = d
		}
		h.closeDirs = d.Close
	}
	if cfg.hooks.beforeSave != nil {
		h.store = hookedStore{h.store, cfg.hooks.beforeSave}
	}
	// Records of an older state file, or a hand-edited one, are mended
	// where that loses nothing.
	if _, err := h.update(context.Background(), func(r *store.Records) error {
		repair(r, cfg.Log)
		fillPlacement(r, cfg.Location)
		return nil
	}); err != nil {
		h.closeDirs()
		return nil, err
	}
	h.bg, h.cancelBg = context.WithCancel(context.Background())
	return h, nil
}

// hookedStore calls a test hook before every commit.
type hookedStore struct {
	store.Store
	before func()
}

func (s hookedStore) Commit(ctx context.Context, base store.Version, r *store.Records) (store.Version, error) {
	s.before()
	return s.Store.Commit(ctx, base, r)
}

// load returns the current records. They are the caller's: changing them
// changes nothing stored.
func (h *Host) load(ctx context.Context) (*store.Records, error) {
	r, _, err := h.store.Load(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("reading the state: %w", err)
	}
	return r, nil
}

// loadVM reads the records and returns them with the VM called name, or a
// NotFound error.
func (h *Host) loadVM(ctx context.Context, name string) (*store.Records, *store.VM, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, nil, err
	}
	vm, ok := r.VMs[name]
	if !ok {
		return nil, nil, notFound("VM", name)
	}
	return r, vm, nil
}

// update runs fn in a transaction over the records (see store.Update) and
// returns the records as committed. A commit is not cancelled with the
// request that makes it: what the I/O before it did must be recorded.
func (h *Host) update(ctx context.Context, fn func(r *store.Records) error) (*store.Records, error) {
	r, _, err := store.Update(context.WithoutCancel(ctx), h.store, fn)
	if err != nil {
		var e *api.Error
		if errors.As(err, &e) || problemOf(err) != keys.Other {
			return nil, err
		}
		return nil, fmt.Errorf("saving the state: %w", err)
	}
	return r, nil
}

// claim marks resources ("vm/vm1", "disk/d1", "des/s1") busy with what, or
// refuses with a Conflict naming what holds one of them. release gives
// them back.
func (h *Host) claim(what string, resources ...string) (release func(), err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range resources {
		if op, ok := h.busy[r]; ok {
			kind, name, _ := strings.Cut(r, "/")
			return nil, conflict("%s %q is busy: %s; try again when it has finished", kindName(kind), name, op)
		}
	}
	for _, r := range resources {
		h.busy[r] = what
	}
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, r := range resources {
			delete(h.busy, r)
		}
	}, nil
}

func kindName(k string) string {
	switch k {
	case "vm":
		return "VM"
	case "des":
		return "disk encryption set"
	case "identity":
		return "user-assigned identity"
	case "galleryImageVersion":
		return "image version"
	}
	return k
}

// attachmentsOf returns the open attachments of a disk resource.
func (h *Host) attachmentsOf(disk string) []*attachment {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*attachment
	for _, rv := range h.running {
		for _, a := range rv.images {
			if a.disk == disk {
				out = append(out, a)
			}
		}
	}
	return out
}

// runningImages returns a copy of the attachments of a running VM, or nil.
func (h *Host) runningImages(vm string) map[string]*attachment {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rv := h.running[vm]; rv != nil {
		return maps.Clone(rv.images)
	}
	return nil
}

// isRunning tells whether the VM's disks are open on this host.
func (h *Host) isRunning(vm string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.running[vm] != nil
}

func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// Shutdown stops the background work, then flushes and closes every running
// VM's disks and removes them from the tree, keeping their power state so
// that they come back on the next start.
func (h *Host) Shutdown() error {
	h.cancelBg()
	h.bgWG.Wait()
	h.mu.Lock()
	names := slices.Sorted(maps.Keys(h.running))
	var rvs []*runningVM
	for _, n := range names {
		rvs = append(rvs, h.running[n])
		delete(h.running, n)
	}
	h.mu.Unlock()
	var errs []error
	for _, rv := range rvs {
		counts, err := h.closeAll(rv)
		errs = append(errs, err)
		if _, err := h.update(context.Background(), func(r *store.Records) error {
			addIntegrityErrors(r, counts)
			return nil
		}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(append(errs, h.closeDirs())...)
}

// StopBackground cancels the imports and exports in progress (each removes
// what it had made) and the other background work, which resumes at the
// next start. The daemon calls it as soon as it begins shutting down, so
// that a long transfer does not hold the shutdown up.
func (h *Host) StopBackground() { h.cancelBg() }

// Run runs the key-state enforcement until ctx ends: the key monitor every
// KeyCheckInterval and at once on a key store event, and rotation every
// RotationInterval and on a key store event.
func (h *Host) Run(ctx context.Context) {
	checkWake := make(chan struct{}, 1)
	rotateWake := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Go(func() { h.watchEvents(ctx, checkWake, rotateWake) })
	wg.Go(func() { h.MonitorKeys(ctx, checkWake) })
	wg.Go(func() { h.RotateLoop(ctx, rotateWake) })
	if h.cfg.HealInterval > 0 && h.shared() {
		wg.Go(func() { h.HealLoop(ctx, h.cfg.HealInterval) })
	}
	wg.Wait()
}

// wake signals ch without waiting.
func wake(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// copying calls the test hook of long copies.
func (h *Host) copying(ctx context.Context, what string) error {
	if h.cfg.hooks.copying != nil {
		return h.cfg.hooks.copying(ctx, what)
	}
	return ctx.Err()
}

// placementDefault is a record's placement with the defaults filled in.
func placementDefault(p *store.Placement, loc string) {
	if p.Subscription == "" {
		p.Subscription = api.DefaultSubscription
	}
	if p.ResourceGroup == "" {
		p.ResourceGroup = api.DefaultResourceGroup
	}
	if p.Location == "" {
		p.Location = loc
	}
}

// fillPlacement gives the resources of a state file written before they had
// a placement the defaults, which are also what their ids already say.
func fillPlacement(r *store.Records, loc string) {
	for _, d := range r.Disks {
		placementDefault(&d.Placement, loc)
	}
	for _, v := range r.VMs {
		placementDefault(&v.Placement, loc)
	}
	for _, d := range r.DES {
		placementDefault(&d.Placement, loc)
	}
}
