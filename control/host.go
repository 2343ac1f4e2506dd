package control

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hostcrypt/cache"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"hostcrypt/disk"
	hfs "hostcrypt/fs"
	"hostcrypt/storage"
	"hostcrypt/storage/freeze"
)

// Keys is what the control plane needs of the key store: wrapping new data
// keys with the platform key, and unwrapping any wrap a disk carries.
type Keys interface {
	disk.KeyWrapper
	disk.KeyUnwrapper
}

// Tree is the FUSE tree the running VMs' disks appear in.
type Tree interface {
	AddImage(vm, name string, img hfs.Image) error
	RemoveImage(vm, name string) error
	RemoveVM(vm string) error
}

// Config is what a Host is built from.
type Config struct {
	StateDir string
	// Storage holds the persisted disks.
	Storage storage.Backend
	// HostLocal holds what lives on the host only: the temp disks.
	HostLocal storage.Backend
	Keys      Keys
	Tree      Tree
	Location  string
	// CacheDir holds the host caches of attached disks (one directory per
	// disk); empty turns host caching off whatever the attachments ask.
	CacheDir string
	// CacheSize bounds each disk's host cache, in bytes.
	CacheSize int64
	// FlushInterval is how often a VM's open disks sync by themselves when
	// the guest does not flush (0: disk.DefaultFlushInterval).
	FlushInterval time.Duration
	// DEKLease is how long a customer-key disk serves I/O after the last
	// successful check of its key (default 1 h).
	DEKLease time.Duration
	Log      *slog.Logger
	Now      func() time.Time
	// DESLimit lowers the number of disk encryption sets a subscription may
	// have per location (default DefaultDESLimit, 5000). A test hook:
	// hostcryptd never sets it, so a user of the daemon cannot change it.
	DESLimit int
	// beforeSave, when set, is called before every state save: a hook for
	// the tests that inject a crash between two steps of an operation.
	beforeSave func()
}

// Host is the compute control plane: it owns the VM and disk resources, opens
// a running VM's disks and shows them in the tree, and persists everything in
// the state directory. Its methods are safe for concurrent use; they are
// serialised by one control-plane lock, which the data path never takes.
type Host struct {
	cfg     Config
	log     *slog.Logger
	mu      sync.Mutex
	st      *state
	running map[string]*runningVM

	// bg is cancelled at Shutdown; background work (conversions) runs under
	// it and is waited for with bgWG.
	bg       context.Context
	cancelBg context.CancelFunc
	bgWG     sync.WaitGroup
	// prog holds the progress of long copies, read without mu.
	prog progressTable
	// nextKeyCheck is when RotateLoop next looks for new key versions.
	nextKeyCheck time.Time
}

type runningVM struct {
	images map[string]*openDisk // file name in the tree -> open disk
}

type openDisk struct {
	img      hfs.Image // what the VM sees: the engine, or a cache or file over it
	d        *disk.Disk
	resource string // disk resource name; "" for the temp disk
	// cache is the host cache under the engine (encryption at host: it
	// holds what the engine sealed); icache the host cache above it (no
	// encryption at host: it holds plaintext). At most one is set.
	cache  *cache.Cache
	icache *cache.ImageCache
	// plain is the plaintext temp disk of a VM without encryption at host;
	// d is nil then.
	plain storage.Chunk
	// fr sits between the engine and what is below it, for snapshots.
	fr *freeze.Backend
	// cacheDirs are the disk's host cache directories, removed by close
	// when a clean close left them empty.
	cacheDirs []string
}

// close writes a plaintext cache back into the engine, flushes and closes
// the disk (wiping its keys), then writes the host cache back to storage
// and closes it.
func (od *openDisk) close() error {
	var err error
	if od.icache != nil {
		err = od.icache.Close()
	}
	if od.d != nil {
		err = errors.Join(err, od.d.Close())
	}
	if od.cache != nil {
		err = errors.Join(err, od.cache.Close())
	}
	if od.plain != nil {
		err = errors.Join(err, od.plain.Sync(), od.plain.Close())
	}
	if err == nil {
		// A cache removes its files when everything was written back, not
		// its directory; one still holding dirty pages is not empty and
		// stays for the next open to write back.
		for _, dir := range od.cacheDirs {
			_ = os.Remove(dir)
		}
	}
	return err
}

// integrityErrors counts the blocks of the disk that failed authentication
// while it was open.
func (od *openDisk) integrityErrors() uint64 {
	if od.d == nil {
		return 0
	}
	return od.d.Stats().IntegrityErrors
}

// cacheStats returns the host cache's counters; ok is false without one.
func (od *openDisk) cacheStats() (s cache.Stats, ok bool) {
	switch {
	case od.cache != nil:
		return od.cache.Stats(), true
	case od.icache != nil:
		return od.icache.Stats(), true
	}
	return s, false
}

// keepOpen hides Close from a cache: the storage backend is shared by every
// disk, and a cache closes what it wraps.
type keepOpen struct{ storage.Backend }

func (keepOpen) Close() error { return nil }

// cacheDirs returns where a disk's host cache lives: under the engine with
// encryption at host, above it (plaintext) without.
func (h *Host) cacheDirs(d *Disk) (sealed, plain string) {
	base := filepath.Join(h.cfg.CacheDir, d.UniqueID)
	return base, base + ".plain"
}

// openAttached opens a disk for a running VM with the host cache its
// attachment asks for. With encryption at host the cache sits under the
// engine, so it holds only what the engine has already encrypted with the
// disk's own key; without, it sits above the engine and holds plaintext,
// and only storage is encrypted.
//
// A cache directory of the other kind left by a crash is written back
// first, so that switching encryption at host never loses acknowledged
// writes.
func (h *Host) openAttached(ctx context.Context, d *Disk, caching string, eah bool) (_ *openDisk, err error) {
	cached := caching != "" && caching != CacheNone && h.cfg.CacheDir != ""
	var mode cache.Mode
	if cached {
		if mode, err = cache.ParseMode(caching); err != nil {
			return nil, badRequest("%v", err)
		}
	} else {
		mode = cache.None
	}
	sealedDir, plainDir := h.cacheDirs(d)
	od := &openDisk{resource: d.Name}
	if h.cfg.CacheDir != "" {
		od.cacheDirs = []string{sealedDir, plainDir}
	}
	defer func() {
		if err != nil {
			od.close()
		}
	}()
	under := cache.Options{Mode: cache.None, Dir: sealedDir, Logger: h.log}
	if eah {
		under = cache.Options{Mode: mode, Dir: sealedDir, MaxBytes: h.cfg.CacheSize, Logger: h.log}
	}
	if h.cfg.CacheDir == "" {
		under.Dir = ""
	}
	od.cache, err = cache.New(ctx, keepOpen{h.cfg.Storage}, under)
	if err != nil {
		return nil, fmt.Errorf("host cache of disk %q: %w", d.Name, err)
	}
	// Snapshots of the disk while it is in use freeze what the engine
	// writes: copy-before-write, just under the engine.
	od.fr = freeze.New(od.cache)
	od.d, err = disk.Open(ctx, od.fr, d.StoragePrefix, h.unwrapperFor(d), openOptions(d)...)
	if err != nil {
		return nil, fmt.Errorf("opening disk %q: %w", d.Name, err)
	}
	h.setFlushInterval(od.d)
	od.img = od.d
	above := cache.Options{Mode: cache.None, Dir: plainDir, Logger: h.log}
	if !eah {
		above = cache.Options{Mode: mode, Dir: plainDir, MaxBytes: h.cfg.CacheSize, Logger: h.log}
	}
	if h.cfg.CacheDir == "" {
		above.Dir = ""
	}
	if above.Mode != cache.None || dirExists(above.Dir) {
		od.icache, err = cache.NewImage(ctx, od.d, above)
		if err != nil {
			return nil, fmt.Errorf("host cache of disk %q: %w", d.Name, err)
		}
		if above.Mode != cache.None {
			od.img = od.icache
		} else if err = od.icache.Close(); err != nil {
			return nil, fmt.Errorf("host cache of disk %q: %w", d.Name, err)
		} else {
			od.icache = nil
		}
	}
	if od.cache.Mode() == cache.None {
		// Nothing to cache under the engine: keep the cache out of the
		// data path (its None mode passes through, but costs a call).
		od.cache = nil
	}
	return od, nil
}

func dirExists(dir string) bool {
	if dir == "" {
		return false
	}
	fi, err := os.Stat(dir)
	return err == nil && fi.IsDir()
}

// New loads the state and returns a Host. Call Recover to bring back the VMs
// that were running.
func New(cfg Config) (*Host, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Location == "" {
		cfg.Location = "local"
	}
	st, err := loadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	st.repair(cfg.Log)
	st.fillPlacement(cfg.Location)
	bg, cancel := context.WithCancel(context.Background())
	return &Host{cfg: cfg, log: cfg.Log, st: st, running: map[string]*runningVM{}, bg: bg, cancelBg: cancel}, nil
}

func (h *Host) lease() time.Duration {
	if h.cfg.DEKLease > 0 {
		return h.cfg.DEKLease
	}
	return time.Hour
}

func (h *Host) save() error {
	if h.cfg.beforeSave != nil {
		h.cfg.beforeSave()
	}
	if err := h.st.save(h.cfg.StateDir); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}

func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// CreateDiskRequest is the body of a disk creation.
type CreateDiskRequest struct {
	Name              string `json:"name"`
	SizeBytes         int64  `json:"sizeBytes"`
	Sku               string `json:"sku,omitempty"`
	LogicalSectorSize int    `json:"logicalSectorSize,omitempty"`
	EncryptionType    string `json:"encryptionType,omitempty"`
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
	// Source is a snapshot or image to copy; the new disk is independent
	// of it (its own data key). SizeBytes may then be 0 (the source's
	// size) or larger.
	Source        string `json:"source,omitempty"`
	Location      string `json:"location,omitempty"`
	Subscription  string `json:"subscription,omitempty"`
	ResourceGroup string `json:"resourceGroup,omitempty"`
	// ADE records that the disk uses guest-level disk encryption.
	ADE bool `json:"ade,omitempty"`
}

// CreateDisk creates a managed disk, empty or copied from a snapshot or
// image.
func (h *Host) CreateDisk(ctx context.Context, r CreateDiskRequest) (*Disk, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.createDisk(ctx, r)
}

func (h *Host) createDisk(ctx context.Context, r CreateDiskRequest) (*Disk, error) {
	if err := checkName("disk", r.Name); err != nil {
		return nil, err
	}
	if _, ok := h.st.Disks[r.Name]; ok {
		return nil, conflict("disk %q already exists; choose another name or delete it first", r.Name)
	}
	if r.Sku == "" {
		r.Sku = DefaultSku
	}
	if err := checkSku(r.Sku); err != nil {
		return nil, err
	}
	var src *source
	if r.Source != "" {
		var err error
		if src, err = h.openSource(ctx, r.Source, false); err != nil {
			return nil, err
		}
		defer src.d.Close()
		if r.SizeBytes == 0 {
			r.SizeBytes = src.d.Size()
		}
		if r.SizeBytes < src.d.Size() {
			return nil, badRequest("%s %q is %d bytes; a disk made from it needs at least that (--size)", src.kind, src.name, src.d.Size())
		}
		if r.LogicalSectorSize != 0 && r.LogicalSectorSize != src.sector {
			return nil, badRequest("%s %q has %d-byte sectors; a disk made from it has the same (leave out --logical-sector-size)", src.kind, src.name, src.sector)
		}
		r.LogicalSectorSize = src.sector
		// Content the guest encrypted stays flagged wherever it is copied.
		r.ADE = r.ADE || src.ade
	}
	if r.LogicalSectorSize == 0 {
		r.LogicalSectorSize = 512
	}
	if r.LogicalSectorSize != 512 && r.LogicalSectorSize != 4096 {
		return nil, badRequest("logical sector size %d: use 512 or 4096", r.LogicalSectorSize)
	}
	if err := checkDiskSize("sizeBytes", r.SizeBytes, r.LogicalSectorSize, r.Sku); err != nil {
		return nil, err
	}
	var des *DiskEncryptionSet
	switch {
	case r.DiskEncryptionSet != "":
		var ok bool
		if des, ok = h.desByID(r.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", r.DiskEncryptionSet)
		}
		if r.EncryptionType == "" {
			r.EncryptionType = des.EncryptionType
		}
		if r.EncryptionType == EncPlatformKey {
			return nil, badRequest("a disk with disk encryption set %q uses customer-managed keys: use %s or %s, or leave out --disk-encryption-set", des.Name, EncCustomerKey, EncPlatformAndCustomerKey)
		}
	case r.EncryptionType == "":
		r.EncryptionType = EncPlatformKey
	case r.EncryptionType == EncCustomerKey || r.EncryptionType == EncPlatformAndCustomerKey:
		return nil, badRequest("encryption type %s needs a disk encryption set (--disk-encryption-set)", r.EncryptionType)
	}
	switch r.EncryptionType {
	case EncPlatformKey, EncCustomerKey, EncPlatformAndCustomerKey:
	default:
		return nil, badRequest("encryption type %q: use %s, %s or %s", r.EncryptionType, EncPlatformKey, EncCustomerKey, EncPlatformAndCustomerKey)
	}
	p, err := h.checkCreateDisk(r, des)
	if err != nil {
		return nil, err
	}
	wrappers, err := h.wrappersFor(ctx, r.EncryptionType, des)
	if err != nil {
		return nil, err
	}
	uid := newID()
	prefix := "disks/" + uid
	size := r.SizeBytes
	if src != nil {
		size = src.d.Size()
	}
	// The intent goes first: a crash from here on leaves objects that
	// host gc knows to be a cut-short creation of this disk.
	if err := h.beginIntent(prefix, "disk "+r.Name); err != nil {
		return nil, err
	}
	d, err := disk.Create(ctx, h.cfg.Storage, prefix, disk.CreateOptions{
		Size: size, SectorSize: r.LogicalSectorSize, Layers: wrappers,
	})
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, fmt.Errorf("creating disk %q: %w", r.Name, err)
	}
	if src != nil {
		err = h.fillFromSource(ctx, src, d, r.Name)
		if err == nil && r.SizeBytes > size {
			err = d.Resize(ctx, r.SizeBytes)
		}
		if err != nil {
			d.Close()
			h.abandonIntent(ctx, prefix)
			return nil, fmt.Errorf("disk %q from %s %q: %w", r.Name, src.kind, src.name, err)
		}
	}
	if err := d.Close(); err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	m, err := disk.ReadMetadata(ctx, h.cfg.Storage, prefix)
	if err != nil {
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	res := &Disk{
		Name:              r.Name,
		ID:                p.id(typeDisks, r.Name),
		UniqueID:          uid,
		Location:          p.Location,
		Subscription:      p.Subscription,
		ResourceGroup:     p.ResourceGroup,
		ADE:               r.ADE,
		Sku:               Sku{Name: r.Sku},
		DiskSizeBytes:     r.SizeBytes,
		DiskSizeGB:        r.SizeBytes >> 30,
		LogicalSectorSize: r.LogicalSectorSize,
		Encryption:        Encryption{Type: r.EncryptionType},
		DiskState:         DiskUnattached,
		TimeCreated:       h.cfg.Now().UTC(),
		KeyID:             m.Layers[0].WrappedKeys[0].KeyID,
		StoragePrefix:     prefix,
	}
	if des != nil {
		res.Encryption.DiskEncryptionSetID = des.ID
	}
	h.st.Disks[r.Name] = res
	delete(h.st.Intents, prefix)
	if err := h.save(); err != nil {
		delete(h.st.Disks, r.Name)
		h.abandonIntent(ctx, prefix)
		return nil, err
	}
	h.log.Info("disk created", "disk", r.Name, "size", r.SizeBytes, "encryption", r.EncryptionType)
	return h.showDisk(res), nil
}

// showDisk returns a copy of a disk resource with its live counters.
func (h *Host) showDisk(d *Disk) *Disk {
	c := *d
	for _, rv := range h.running {
		for _, od := range rv.images {
			if od.resource == d.Name {
				c.IntegrityErrors += od.integrityErrors()
				if od.d != nil && od.d.Fenced() != nil {
					c.Fenced = od.d.Fenced().Error()
				}
			}
		}
	}
	return &c
}

// ShowDisk returns one disk.
func (h *Host) ShowDisk(name string) (*Disk, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.st.Disks[name]
	if !ok {
		return nil, notFound("disk", name)
	}
	return h.showDisk(d), nil
}

// ListDisks returns every disk, sorted by name.
func (h *Host) ListDisks() []*Disk {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Disk, 0, len(h.st.Disks))
	for _, d := range h.st.Disks {
		out = append(out, h.showDisk(d))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// UpdateDiskRequest changes a disk: its size (grow only), or its keys.
type UpdateDiskRequest struct {
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// EncryptionType and DiskEncryptionSet switch a disk between platform
	// and customer keys (re-wrapping its data key, not its data).
	EncryptionType    string `json:"encryptionType,omitempty"`
	DiskEncryptionSet string `json:"diskEncryptionSet,omitempty"`
	// ADE true records that the disk uses guest-level disk encryption; the
	// record cannot be cleared.
	ADE *bool `json:"ade,omitempty"`
}

// UpdateDisk grows a disk, also while its VM runs (the image shows the new
// size at once).
func (h *Host) UpdateDisk(ctx context.Context, name string, r UpdateDiskRequest) (*Disk, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.st.Disks[name]
	if !ok {
		return nil, notFound("disk", name)
	}
	if err := h.usable(ctx, d); err != nil {
		return nil, err
	}
	if r.ADE != nil {
		if r.SizeBytes != 0 || r.EncryptionType != "" || r.DiskEncryptionSet != "" {
			return nil, badRequest("record guest-level disk encryption (--ade) of disk %q in an update of its own", name)
		}
		return h.setDiskADE(d, *r.ADE)
	}
	if r.EncryptionType != "" || r.DiskEncryptionSet != "" {
		if r.SizeBytes != 0 {
			return nil, badRequest("change the size and the keys of disk %q in two updates", name)
		}
		return h.switchDiskKeys(ctx, d, r)
	}
	if r.SizeBytes == 0 {
		return nil, badRequest("nothing to update: give the new size (--size), --encryption-type or --disk-encryption-set")
	}
	if err := checkDiskSize("sizeBytes", r.SizeBytes, d.LogicalSectorSize, d.Sku.Name); err != nil {
		return nil, err
	}
	if r.SizeBytes < d.DiskSizeBytes {
		return nil, badRequest("disk %q is %d bytes; shrinking to %d is not supported (it would destroy data)", name, d.DiskSizeBytes, r.SizeBytes)
	}
	if r.SizeBytes == d.DiskSizeBytes {
		return h.showDisk(d), nil
	}
	if od := h.openDiskFor(name); od != nil {
		if err := od.d.Resize(ctx, r.SizeBytes); err != nil {
			return nil, err
		}
		if rs, ok := h.cfg.Tree.(interface{ Resized(vm, name string) }); ok {
			vm := d.ManagedBy
			for file, o := range h.running[vm].images {
				if o.resource == name {
					rs.Resized(vm, file)
				}
			}
		}
	} else {
		dd, err := disk.Open(ctx, h.cfg.Storage, d.StoragePrefix, h.unwrapperFor(d), openOptions(d)...)
		if err != nil {
			return nil, fmt.Errorf("opening disk %q: %w", name, err)
		}
		err = dd.Resize(ctx, r.SizeBytes)
		if cerr := dd.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
	}
	d.DiskSizeBytes = r.SizeBytes
	d.DiskSizeGB = r.SizeBytes >> 30
	if err := h.save(); err != nil {
		return nil, err
	}
	return h.showDisk(d), nil
}

// switchDiskKeys moves a disk between platform and customer keys by
// re-wrapping its data key; the data is not touched. Only while the disk is
// unattached or its VM deallocated, as Azure requires.
func (h *Host) switchDiskKeys(ctx context.Context, d *Disk, r UpdateDiskRequest) (*Disk, error) {
	if d.ManagedBy != "" && h.st.VMs[d.ManagedBy] != nil && h.st.VMs[d.ManagedBy].PowerState != PowerDeallocated {
		return nil, conflict("disk %q is attached to VM %q; deallocate the VM first (vm deallocate --name %s) to change its keys", d.Name, d.ManagedBy, d.ManagedBy)
	}
	var des *DiskEncryptionSet
	switch {
	case r.DiskEncryptionSet != "":
		var ok bool
		if des, ok = h.desByID(r.DiskEncryptionSet); !ok {
			return nil, notFound("disk encryption set", r.DiskEncryptionSet)
		}
		if r.EncryptionType == "" {
			r.EncryptionType = EncCustomerKey
		}
	case r.EncryptionType == EncPlatformAndCustomerKey:
		var ok bool
		if des, ok = h.desByID(d.Encryption.DiskEncryptionSetID); !ok {
			return nil, badRequest("double encryption needs a disk encryption set: give --disk-encryption-set")
		}
	case r.EncryptionType == EncPlatformKey:
	default:
		return nil, badRequest("encryption type %q: give %s (with no set) or a --disk-encryption-set", r.EncryptionType, EncPlatformKey)
	}
	if err := h.checkDiskKeys(d, des); err != nil {
		return nil, err
	}
	if d.Encryption.Type == EncPlatformAndCustomerKey {
		return nil, badRequest("disk %q is double-encrypted; switching it back to a single layer is not supported", d.Name)
	}
	if r.EncryptionType == EncPlatformKey && d.Encryption.DiskEncryptionSetID != "" {
		if s := h.incrementalSnapshotOf(d); s != "" {
			return nil, conflict("disk %q has incremental snapshots (%s): customer-managed keys cannot be turned off on such a disk; delete its incremental snapshots first, or keep the customer key", d.Name, s)
		}
	}
	switch r.EncryptionType {
	case EncPlatformAndCustomerKey:
		return h.startConversion(ctx, d, des)
	case EncPlatformKey, EncCustomerKey:
	default:
		return nil, badRequest("encryption type %q: use %s, %s or %s", r.EncryptionType, EncPlatformKey, EncCustomerKey, EncPlatformAndCustomerKey)
	}
	wrappers, err := h.wrappersFor(ctx, r.EncryptionType, des)
	if err != nil {
		return nil, err
	}
	w, err := disk.Rewrap(ctx, h.cfg.Storage, d.StoragePrefix, 1, h.unwrapperFor(d), wrappers[0])
	if err != nil {
		return nil, fmt.Errorf("re-wrapping the key of disk %q: %w", d.Name, err)
	}
	d.KeyID = w.KeyID
	d.Encryption = Encryption{Type: r.EncryptionType}
	if des != nil {
		d.Encryption.DiskEncryptionSetID = des.ID
	}
	h.log.Info("disk keys switched", "disk", d.Name, "encryption", d.Encryption.Type, "key", w.KeyID)
	if err := h.save(); err != nil {
		return nil, err
	}
	return h.showDisk(d), nil
}

// DeleteDisk crypto-shreds an unattached disk: its wrapped keys are destroyed
// openDiskFor returns the open disk of a resource, or nil.
func (h *Host) openDiskFor(name string) *openDisk {
	for _, rv := range h.running {
		for _, od := range rv.images {
			if od.resource == name && od.d != nil {
				return od
			}
		}
	}
	return nil
}

// first, then its data.
func (h *Host) DeleteDisk(ctx context.Context, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.st.Disks[name]
	if !ok {
		return notFound("disk", name)
	}
	if d.ManagedBy != "" {
		return conflict("disk %q is attached to VM %q; detach it first (vm disk detach --vm-name %s --name %s)", name, d.ManagedBy, d.ManagedBy, name)
	}
	if err := converting(d); err != nil {
		return err
	}
	// Recorded first, removed next (see removal.go).
	delete(h.st.Disks, name)
	if validPrefix(d.StoragePrefix, "disks") {
		h.recordRemoval(d.StoragePrefix, "disk "+name, 0)
	} else {
		// A damaged record: its prefix leads to no disk's objects, and
		// following it could shred another resource. Only the record goes.
		h.log.Warn("deleting a disk whose record names no disk's objects; storage is left as it is (host gc lists what no record owns)", "disk", name, "prefix", d.StoragePrefix)
	}
	if err := h.save(); err != nil {
		h.st.Disks[name] = d
		delete(h.st.Removals, d.StoragePrefix)
		return err
	}
	h.log.Info("disk deleted", "disk", name)
	if err := h.finishRemoval(ctx, d.StoragePrefix); err != nil {
		return fmt.Errorf("disk %q is deleted, but %w; the next start of hostcryptd finishes the removal", name, err)
	}
	return nil
}

// CreateVMRequest is the body of a VM creation.
type CreateVMRequest struct {
	Name             string         `json:"name"`
	OsDisk           string         `json:"osDisk,omitempty"`
	OsDiskSizeBytes  int64          `json:"osDiskSizeBytes,omitempty"`
	OsDiskCaching    string         `json:"osDiskCaching,omitempty"`
	DataDisks        []AttachedDisk `json:"dataDisks,omitempty"`
	TempDiskSize     int64          `json:"tempDiskSizeBytes,omitempty"`
	EncryptionAtHost *bool          `json:"encryptionAtHost,omitempty"`
	Location         string         `json:"location,omitempty"`
	Subscription     string         `json:"subscription,omitempty"`
	ResourceGroup    string         `json:"resourceGroup,omitempty"`
	// ADE records that the VM uses guest-level disk encryption.
	ADE bool `json:"ade,omitempty"`
}

// CreateVM creates a VM with its OS disk (new or existing) and data disks,
// and starts it.
func (h *Host) CreateVM(ctx context.Context, r CreateVMRequest) (*VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := checkName("VM", r.Name); err != nil {
		return nil, err
	}
	if _, ok := h.st.VMs[r.Name]; ok {
		return nil, conflict("VM %q already exists; choose another name or delete it first", r.Name)
	}
	eah := r.EncryptionAtHost == nil || *r.EncryptionAtHost
	if (r.OsDisk == "") == (r.OsDiskSizeBytes == 0) {
		return nil, badRequest("give exactly one of --os-disk (an existing disk) or --os-disk-size (a new one)")
	}
	if r.OsDiskCaching == "" {
		r.OsDiskCaching = CacheReadWrite
	}
	if err := checkCaching(r.OsDiskCaching); err != nil {
		return nil, err
	}
	if r.TempDiskSize != 0 {
		if err := checkTempSize("tempDiskSizeBytes", r.TempDiskSize); err != nil {
			return nil, err
		}
	}
	if r.OsDiskSizeBytes != 0 {
		// The new OS disk has the default sku and 512-byte sectors.
		if err := checkDiskSize("osDiskSizeBytes", r.OsDiskSizeBytes, 512, DefaultSku); err != nil {
			return nil, err
		}
	}
	if len(r.DataDisks) > 64 {
		return nil, badRequest("%d data disks: a VM has at most 64 (LUNs 0 to 63)", len(r.DataDisks))
	}
	// Check every data disk before changing anything.
	seen := map[string]bool{}
	if r.OsDisk != "" {
		if err := h.checkAttachable(ctx, r.OsDisk); err != nil {
			return nil, err
		}
		seen[r.OsDisk] = true
	}
	for i := range r.DataDisks {
		dd := &r.DataDisks[i]
		if dd.Caching == "" {
			dd.Caching = CacheNone
		}
		if err := checkCaching(dd.Caching); err != nil {
			return nil, err
		}
		if seen[dd.Name] {
			return nil, badRequest("disk %q is listed twice", dd.Name)
		}
		seen[dd.Name] = true
		if err := h.checkAttachable(ctx, dd.Name); err != nil {
			return nil, err
		}
		lun := i
		dd.Lun = &lun
	}
	p, err := h.checkCreateVM(r)
	if err != nil {
		return nil, err
	}
	osName := r.OsDisk
	if osName == "" {
		osName = r.Name + "_OsDisk"
		if _, err := h.createDisk(ctx, CreateDiskRequest{Name: osName, SizeBytes: r.OsDiskSizeBytes,
			Location: p.Location, Subscription: p.Subscription, ResourceGroup: p.ResourceGroup, ADE: r.ADE}); err != nil {
			return nil, err
		}
	}
	vm := &VM{
		Name:              r.Name,
		ID:                p.id(typeVMs, r.Name),
		Location:          p.Location,
		Subscription:      p.Subscription,
		ResourceGroup:     p.ResourceGroup,
		ADE:               r.ADE,
		PowerState:        PowerDeallocated,
		SecurityProfile:   SecurityProfile{EncryptionAtHost: eah},
		StorageProfile:    StorageProfile{OsDisk: AttachedDisk{Name: osName, Caching: r.OsDiskCaching}, DataDisks: r.DataDisks},
		TempDiskSizeBytes: r.TempDiskSize,
		TimeCreated:       h.cfg.Now().UTC(),
	}
	if vm.StorageProfile.DataDisks == nil {
		vm.StorageProfile.DataDisks = []AttachedDisk{}
	}
	h.st.VMs[r.Name] = vm
	for _, name := range vmDiskNames(vm) {
		h.st.Disks[name].ManagedBy = r.Name
		h.st.Disks[name].DiskState = DiskReserved
	}
	if err := h.save(); err != nil {
		return nil, err
	}
	if err := h.start(ctx, vm); err != nil {
		return nil, fmt.Errorf("VM %q was created but did not start: %w", r.Name, err)
	}
	return h.showVM(vm), nil
}

func (h *Host) checkAttachable(ctx context.Context, name string) error {
	d, ok := h.st.Disks[name]
	if !ok {
		return notFound("disk", name)
	}
	if d.ManagedBy != "" {
		return conflict("disk %q is already attached to VM %q; a disk is attached to one VM at a time", name, d.ManagedBy)
	}
	return h.usable(ctx, d)
}

func vmDiskNames(vm *VM) []string {
	names := []string{vm.StorageProfile.OsDisk.Name}
	for _, d := range vm.StorageProfile.DataDisks {
		names = append(names, d.Name)
	}
	return names
}

func imageName(lun *int) string {
	if lun == nil {
		return "os.img"
	}
	return fmt.Sprintf("data-%d.img", *lun)
}

const tempImage = "temp.img"

func tempPrefix(vm string) string { return "temp/" + vm }

// plainTempKey is the file of a temp disk without encryption at host.
func plainTempKey(vm string) string { return "temp-plain/" + vm }

// plainImage is a plaintext temp disk: a sparse file of the host.
type plainImage struct {
	storage.Chunk
	size int64
}

func (p *plainImage) Size() int64 { return p.size }

func (p *plainImage) Discard(off, n int64) error { return p.PunchHole(off, n) }

// start opens every disk of vm and shows it in the tree. On failure nothing
// stays open or visible.
func (h *Host) start(ctx context.Context, vm *VM) error {
	if err := h.checkVMRecord(vm); err != nil {
		return err
	}
	for _, n := range vmDiskNames(vm) {
		if err := h.usable(ctx, h.st.Disks[n]); err != nil {
			return err
		}
	}
	if err := h.checkStartKeys(ctx, vm); err != nil {
		return err
	}
	rv := &runningVM{images: map[string]*openDisk{}}
	started := false
	defer func() {
		// Also when a panic goes through: nothing stays open or visible.
		if !started {
			h.closeAll(vm.Name, rv)
		}
	}()
	attach := func(ad AttachedDisk) error {
		od, err := h.openAttached(ctx, h.st.Disks[ad.Name], ad.Caching, vm.SecurityProfile.EncryptionAtHost)
		if err != nil {
			return err
		}
		file := imageName(ad.Lun)
		rv.images[file] = od
		return h.cfg.Tree.AddImage(vm.Name, file, od.img)
	}
	if err := attach(vm.StorageProfile.OsDisk); err != nil {
		return err
	}
	for _, dd := range vm.StorageProfile.DataDisks {
		if err := attach(dd); err != nil {
			return err
		}
	}
	if vm.TempDiskSizeBytes > 0 {
		td, err := h.openTemp(ctx, vm)
		if err != nil {
			return err
		}
		rv.images[tempImage] = td
		if err := h.cfg.Tree.AddImage(vm.Name, tempImage, td.img); err != nil {
			return err
		}
	}
	h.running[vm.Name] = rv
	for _, cd := range h.cmkDisksOf(vm.Name) {
		cd.d.SetLease(time.Now().Add(h.lease()))
	}
	vm.PowerState, vm.PowerStateReason, vm.KeyWarning = PowerRunning, "", ""
	for _, name := range vmDiskNames(vm) {
		h.st.Disks[name].DiskState = DiskAttached
	}
	if err := h.save(); err != nil {
		delete(h.running, vm.Name)
		return err
	}
	started = true
	h.log.Info("VM started", "vm", vm.Name, "images", len(rv.images))
	return nil
}

// openTemp opens the VM's temp disk, creating an empty one if it has none
// (first start, or after a deallocation destroyed it). It lives on the
// host, never in storage. With encryption at host it is an encrypted disk
// under a platform-wrapped key of its own; without, a plaintext sparse file,
// as a host without encryption at host keeps it.
func (h *Host) openTemp(ctx context.Context, vm *VM) (*openDisk, error) {
	if !vm.SecurityProfile.EncryptionAtHost {
		ch, err := h.cfg.HostLocal.OpenChunk(ctx, plainTempKey(vm.Name), true)
		if err != nil {
			return nil, fmt.Errorf("temp disk of VM %q: %w", vm.Name, err)
		}
		return &openDisk{img: &plainImage{Chunk: ch, size: vm.TempDiskSizeBytes}, plain: ch}, nil
	}
	d, err := disk.Open(ctx, h.cfg.HostLocal, tempPrefix(vm.Name), h.cfg.Keys)
	if errors.Is(err, ErrKeyGone) {
		// Its key was destroyed (a deallocation cut short, or files put
		// back from a copy): what is there can never be read again.
		h.log.Warn("the temp disk's key no longer exists; starting with a new, empty temp disk", "vm", vm.Name)
		err = disk.ErrNotFound
	}
	if errors.Is(err, disk.ErrNotFound) {
		// A destroyed temp disk whose removal was cut short: finish it.
		_ = disk.Destroy(ctx, h.cfg.HostLocal, tempPrefix(vm.Name))
		var w disk.KeyWrapper
		if w, err = h.tempWrapper(ctx); err != nil {
			return nil, fmt.Errorf("temp disk of VM %q: %w", vm.Name, err)
		}
		d, err = disk.Create(ctx, h.cfg.HostLocal, tempPrefix(vm.Name), disk.CreateOptions{
			Size: vm.TempDiskSizeBytes, SectorSize: 512, Layers: []disk.KeyWrapper{w},
		})
	}
	if err != nil {
		return nil, fmt.Errorf("temp disk of VM %q: %w", vm.Name, err)
	}
	h.setFlushInterval(d)
	return &openDisk{img: d, d: d}, nil
}

// setFlushInterval gives a disk a VM serves the configured background sync
// interval.
func (h *Host) setFlushInterval(d *disk.Disk) {
	if h.cfg.FlushInterval > 0 {
		d.SetFlushInterval(h.cfg.FlushInterval)
	}
}

// closeAll removes a VM's images from the tree, then flushes and closes its
// disks, which wipes their keys from memory.
func (h *Host) closeAll(vm string, rv *runningVM) error {
	var errs []error
	files := make([]string, 0, len(rv.images))
	for f := range rv.images {
		files = append(files, f)
	}
	slices.Sort(files)
	for _, f := range files {
		if err := h.cfg.Tree.RemoveImage(vm, f); err != nil {
			errs = append(errs, err)
		}
	}
	_ = h.cfg.Tree.RemoveVM(vm)
	for _, f := range files {
		od := rv.images[f]
		if od.resource != "" {
			h.st.Disks[od.resource].IntegrityErrors += od.integrityErrors()
		}
		if err := od.close(); err != nil {
			errs = append(errs, fmt.Errorf("flushing %s of VM %q: %w", f, vm, err))
		}
	}
	return errors.Join(errs...)
}

func (h *Host) vm(name string) (*VM, error) {
	vm, ok := h.st.VMs[name]
	if !ok {
		return nil, notFound("VM", name)
	}
	return vm, nil
}

// StartVM starts a stopped or deallocated VM.
func (h *Host) StartVM(ctx context.Context, name string) (*VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, err := h.vm(name)
	if err != nil {
		return nil, err
	}
	if vm.PowerState == PowerRunning {
		return nil, conflict("VM %q is already running", name)
	}
	if err := h.start(ctx, vm); err != nil {
		return nil, err
	}
	return h.showVM(vm), nil
}

// StopVM stops a running VM: its images disappear, every disk is flushed and
// closed and its keys wiped. The temp disk is kept.
func (h *Host) StopVM(ctx context.Context, name, reason string) (*VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, err := h.vm(name)
	if err != nil {
		return nil, err
	}
	if vm.PowerState != PowerRunning {
		return nil, conflict("VM %q is not running (it is %s)", name, vm.PowerState)
	}
	if err := h.stop(vm, PowerStopped, reason); err != nil {
		return nil, err
	}
	return h.showVM(vm), nil
}

func (h *Host) stop(vm *VM, state, reason string) error {
	var err error
	if rv := h.running[vm.Name]; rv != nil {
		err = h.closeAll(vm.Name, rv)
		delete(h.running, vm.Name)
	}
	if reason == "" {
		reason = "stopped by the user"
	}
	vm.PowerState, vm.PowerStateReason = state, reason
	h.log.Info("VM stopped", "vm", vm.Name, "state", state, "reason", reason)
	return errors.Join(err, h.save())
}

// DeallocateVM stops a VM (if running) and destroys its temp disk: the key
// first, then the file. Its disks become Reserved.
func (h *Host) DeallocateVM(ctx context.Context, name string) (*VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, err := h.vm(name)
	if err != nil {
		return nil, err
	}
	if vm.PowerState == PowerDeallocated {
		return h.showVM(vm), nil
	}
	if err := h.stop(vm, PowerDeallocated, "deallocated by the user"); err != nil {
		return nil, err
	}
	if err := h.destroyTemp(ctx, vm.Name); err != nil {
		return nil, err
	}
	for _, n := range vmDiskNames(vm) {
		if d := h.st.Disks[n]; d != nil {
			d.DiskState = DiskReserved
		}
	}
	return h.showVM(vm), h.save()
}

func (h *Host) destroyTemp(ctx context.Context, vm string) error {
	// The key first: from then on the data is unreadable, also from a copy
	// of the files. The files go even if that fails.
	var errs []error
	if err := h.destroyTempKeys(ctx, tempPrefix(vm)); err != nil {
		err = fmt.Errorf("VM %q: destroying the temp disk's key in the key store: %w (its files are removed; the key remains until it is deleted there)", vm, err)
		h.log.Error("temp disk key not destroyed", "vm", vm, "err", err)
		errs = append(errs, err)
	}
	if err := disk.Destroy(ctx, h.cfg.HostLocal, tempPrefix(vm)); err != nil && !errors.Is(err, disk.ErrNotFound) {
		errs = append(errs, fmt.Errorf("destroying the temp disk of VM %q: %w", vm, err))
	}
	if err := h.cfg.HostLocal.Delete(ctx, plainTempKey(vm)); err != nil && !errors.Is(err, storage.ErrNotFound) {
		errs = append(errs, fmt.Errorf("removing the plaintext temp disk of VM %q: %w", vm, err))
	}
	return errors.Join(errs...)
}

// DeleteVM deletes a VM that is not running. Its disks stay, unattached; its
// temp disk is destroyed.
func (h *Host) DeleteVM(ctx context.Context, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, err := h.vm(name)
	if err != nil {
		return err
	}
	if vm.PowerState == PowerRunning {
		return conflict("VM %q is running; stop or deallocate it first (vm deallocate --name %s)", name, name)
	}
	if err := h.destroyTemp(ctx, name); err != nil {
		return err
	}
	for _, n := range vmDiskNames(vm) {
		if d := h.st.Disks[n]; d != nil {
			d.ManagedBy, d.DiskState = "", DiskUnattached
		}
	}
	delete(h.st.VMs, name)
	return h.save()
}

// AttachRequest attaches a disk to a VM.
type AttachRequest struct {
	Disk    string `json:"disk"`
	Lun     *int   `json:"lun,omitempty"`
	Caching string `json:"caching,omitempty"`
}

// AttachDisk attaches a disk as a data disk; on a running VM its image
// appears at once.
func (h *Host) AttachDisk(ctx context.Context, vmName string, r AttachRequest) (*VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, err := h.vm(vmName)
	if err != nil {
		return nil, err
	}
	if err := h.checkAttachable(ctx, r.Disk); err != nil {
		return nil, err
	}
	if err := h.checkAttach(vm, h.st.Disks[r.Disk]); err != nil {
		return nil, err
	}
	if r.Caching == "" {
		r.Caching = CacheNone
	}
	if err := checkCaching(r.Caching); err != nil {
		return nil, err
	}
	used := map[int]string{}
	for _, dd := range vm.StorageProfile.DataDisks {
		if dd.Lun != nil {
			used[*dd.Lun] = dd.Name
		}
	}
	lun := 0
	if r.Lun != nil {
		lun = *r.Lun
		if lun < 0 || lun > 63 {
			return nil, badRequest("LUN %d: use 0 to 63", lun)
		}
		if other, ok := used[lun]; ok {
			return nil, conflict("LUN %d of VM %q is in use by disk %q; pick a free LUN or leave --lun out", lun, vmName, other)
		}
	} else {
		for used[lun] != "" {
			lun++
		}
	}
	ad := AttachedDisk{Name: r.Disk, Lun: &lun, Caching: r.Caching}
	d := h.st.Disks[r.Disk]
	if rv := h.running[vmName]; rv != nil {
		od, err := h.openAttached(ctx, d, r.Caching, vm.SecurityProfile.EncryptionAtHost)
		if err != nil {
			return nil, err
		}
		file := imageName(&lun)
		if err := h.cfg.Tree.AddImage(vmName, file, od.img); err != nil {
			od.close()
			return nil, err
		}
		rv.images[file] = od
		d.DiskState = DiskAttached
	} else {
		d.DiskState = DiskReserved
	}
	d.ManagedBy = vmName
	vm.StorageProfile.DataDisks = append(vm.StorageProfile.DataDisks, ad)
	sort.Slice(vm.StorageProfile.DataDisks, func(i, j int) bool {
		return *vm.StorageProfile.DataDisks[i].Lun < *vm.StorageProfile.DataDisks[j].Lun
	})
	return h.showVM(vm), h.save()
}

// DetachDisk detaches a data disk; on a running VM its image disappears and
// the disk is flushed and closed first.
func (h *Host) DetachDisk(ctx context.Context, vmName, diskName string) (*VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, err := h.vm(vmName)
	if err != nil {
		return nil, err
	}
	if vm.StorageProfile.OsDisk.Name == diskName {
		return nil, conflict("disk %q is the OS disk of VM %q; an OS disk cannot be detached", diskName, vmName)
	}
	i := slices.IndexFunc(vm.StorageProfile.DataDisks, func(a AttachedDisk) bool { return a.Name == diskName })
	if i < 0 {
		return nil, notFound("data disk of VM "+vmName, diskName)
	}
	ad := vm.StorageProfile.DataDisks[i]
	if rv := h.running[vmName]; rv != nil {
		file := imageName(ad.Lun)
		if err := h.cfg.Tree.RemoveImage(vmName, file); err != nil {
			return nil, err
		}
		if od := rv.images[file]; od != nil {
			if d := h.st.Disks[diskName]; d != nil {
				d.IntegrityErrors += od.integrityErrors()
			}
			if err := od.close(); err != nil {
				return nil, fmt.Errorf("flushing disk %q: %w", diskName, err)
			}
			delete(rv.images, file)
		}
	}
	vm.StorageProfile.DataDisks = slices.Delete(vm.StorageProfile.DataDisks, i, i+1)
	// A record naming a disk that does not exist is mended this way too.
	if d := h.st.Disks[diskName]; d != nil && d.ManagedBy == vmName {
		d.ManagedBy, d.DiskState = "", DiskUnattached
	}
	return h.showVM(vm), h.save()
}

func (h *Host) showVM(vm *VM) *VM {
	c := *vm
	c.StorageProfile.DataDisks = slices.Clone(vm.StorageProfile.DataDisks)
	for _, n := range vmDiskNames(vm) {
		if d := h.st.Disks[n]; d != nil {
			c.IntegrityErrors += h.showDisk(d).IntegrityErrors
		}
	}
	if rv := h.running[vm.Name]; rv != nil {
		for f, od := range rv.images {
			c.Images = append(c.Images, vm.Name+"/"+f)
			if od.resource == "" {
				c.IntegrityErrors += od.integrityErrors()
			}
		}
		slices.Sort(c.Images)
	}
	return &c
}

// ShowVM returns one VM.
func (h *Host) ShowVM(name string) (*VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, err := h.vm(name)
	if err != nil {
		return nil, err
	}
	return h.showVM(vm), nil
}

// ListVMs returns every VM, sorted by name.
func (h *Host) ListVMs() []*VM {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*VM, 0, len(h.st.VMs))
	for _, vm := range h.st.VMs {
		out = append(out, h.showVM(vm))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Shutdown flushes and closes every running VM's disks and removes them from
// the tree, keeping their power state so that they come back on the next
// start.
func (h *Host) Shutdown() error {
	h.cancelBg()
	h.bgWG.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for name, rv := range h.running {
		errs = append(errs, h.closeAll(name, rv))
		delete(h.running, name)
	}
	return errors.Join(errs...)
}
