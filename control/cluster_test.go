package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/cluster"
	"hostcrypt/control/api"
	"hostcrypt/control/keys/keystest"
	"hostcrypt/control/store"
	hfs "hostcrypt/fs"
	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// fakePeers is a registry whose hosts' liveness the test sets.
type fakePeers struct {
	mu     sync.Mutex
	alive  map[string]bool
	fenced map[string]bool
}

func (p *fakePeers) Hosts(context.Context) ([]Peer, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Peer
	for _, n := range sortedKeys(p.alive) {
		out = append(out, Peer{Name: n, Alive: p.alive[n], Fenced: p.fenced[n]})
	}
	return out, nil
}

func (p *fakePeers) set(name string, alive bool) {
	p.mu.Lock()
	p.alive[name] = alive
	p.mu.Unlock()
}

// sharedHosts builds hosts named names on one storage and one key store,
// their records shared (store.Shared) and everything else their own.
type sharedHosts struct {
	dir   string
	keys  *keystest.Service
	peers *fakePeers
	hosts map[string]*fixture
}

func newSharedHosts(t *testing.T, names ...string) *sharedHosts {
	s := &sharedHosts{dir: t.TempDir(), keys: keystest.New(), peers: &fakePeers{alive: map[string]bool{}}, hosts: map[string]*fixture{}}
	for _, n := range names {
		s.peers.set(n, true)
		s.start(t, n)
	}
	return s
}

// start starts (or restarts, after a crash) host name and recovers it.
func (s *sharedHosts) start(t *testing.T, name string) *fixture {
	sb, err := local.Open(filepath.Join(s.dir, "storage"))
	require.NoError(t, err)
	hb, err := local.Open(filepath.Join(s.dir, name, "host"))
	require.NoError(t, err)
	secrets, err := store.Open(filepath.Join(s.dir, name, "state"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { secrets.Close() })
	f := &fixture{tree: &fakeTree{images: map[string]hfs.Image{}}, keys: s.keys}
	f.cfg = Config{Storage: sb, HostLocal: hb, Keys: s.keys, Tree: f.tree,
		Store: store.NewShared(sb), Secrets: secrets, Peers: s.peers, HostName: name,
		CacheDir: filepath.Join(s.dir, name, "cache")}
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { f.h.Shutdown() })
	f.h.Recover(context.Background())
	s.hosts[name] = f
	return f
}

// Two hosts on one store see the same records; of two creating one name,
// exactly one wins.
func TestSharedRecordsAcrossHosts(t *testing.T) {
	s := newSharedHosts(t, "a", "b")
	a, b := s.hosts["a"], s.hosts["b"]
	ctx := context.Background()
	a.mustDisk(t, api.CreateDiskRequest{Name: "d1", SizeBytes: 16 << 20})
	d, err := b.h.ShowDisk("d1")
	require.NoError(t, err, "b sees a's disk")
	assert.Equal(t, int64(16<<20), d.DiskSizeBytes)
	_, err = b.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d1", SizeBytes: 16 << 20})
	requireCode(t, err, http.StatusConflict)

	// The same name from both hosts at once: one disk, one winner.
	for round := range 5 {
		name := "race" + string(rune('0'+round))
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, f := range []*fixture{a, b} {
			wg.Go(func() {
				_, errs[i] = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: name, SizeBytes: 8 << 20})
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			if err == nil {
				won++
			} else {
				requireCode(t, err, http.StatusConflict)
			}
		}
		assert.Equal(t, 1, won, "round %d: %v", round, errs)
		list := 0
		for _, d := range b.disks(t) {
			if d.Name == name {
				list++
			}
		}
		assert.Equal(t, 1, list)
	}
	// Snapshots, disk encryption sets and VMs too: every host sees them.
	_, err = b.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "d1"})
	require.NoError(t, err)
	_, err = a.h.ShowSnapshot("s1")
	require.NoError(t, err)
}

// A VM runs on one host: its record names it, the others refuse what only
// that host can do, naming it, and do not bring it back at their restart;
// once deallocated it starts on another host with its disks' data.
func TestVMBelongsToItsHost(t *testing.T) {
	s := newSharedHosts(t, "a", "b")
	a, b := s.hosts["a"], s.hosts["b"]
	ctx := context.Background()
	a.mustDisk(t, api.CreateDiskRequest{Name: "data1", SizeBytes: 16 << 20})
	a.mustDisk(t, api.CreateDiskRequest{Name: "data2", SizeBytes: 16 << 20})
	vm := a.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20,
		DataDisks: []api.AttachedDisk{{Name: "data1"}}, TempDiskSize: 4 << 20})
	assert.Equal(t, "a", vm.Host)
	seen, err := b.h.ShowVM("vm1")
	require.NoError(t, err)
	assert.Equal(t, "a", seen.Host, "b names the VM's host")
	assert.Equal(t, api.PowerRunning, seen.PowerState)

	pattern := make([]byte, 64<<10)
	rand.Read(pattern)
	for _, img := range []string{"vm1/data-0.img", "vm1/temp.img"} {
		_, err := a.tree.get(img).WriteAt(pattern, 4096)
		require.NoError(t, err)
		require.NoError(t, a.tree.get(img).Sync())
	}

	refused := func(err error) {
		t.Helper()
		requireCode(t, err, http.StatusConflict)
		assert.Contains(t, err.Error(), `host "a"`)
	}
	_, err = b.h.StartVM(ctx, "vm1")
	refused(err)
	_, err = b.h.StopVM(ctx, "vm1", "")
	refused(err)
	_, err = b.h.DeallocateVM(ctx, "vm1")
	refused(err)
	_, err = b.h.AttachDisk(ctx, "vm1", api.AttachRequest{Disk: "data2"})
	refused(err)
	_, err = b.h.DetachDisk(ctx, "vm1", "data1")
	refused(err)
	_, err = b.h.UpdateDisk(ctx, "data1", api.UpdateDiskRequest{SizeBytes: 32 << 20})
	refused(err)
	_, err = b.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "data1"})
	refused(err)
	assert.Empty(t, b.tree.list(), "nothing of vm1 opened on b")

	hosts, err := b.h.ListHosts(ctx)
	require.NoError(t, err)
	assert.Equal(t, []api.HostInfo{
		{Name: "a", State: api.HostAlive, VMs: []string{"vm1"}},
		{Name: "b", State: api.HostAlive, This: true, VMs: []string{}},
	}, hosts)

	// b restarts: a's VM is not b's to bring back.
	require.NoError(t, b.h.Shutdown())
	b = s.start(t, "b")
	assert.Empty(t, b.tree.list())
	v, err := a.h.ShowVM("vm1")
	require.NoError(t, err)
	assert.Equal(t, api.PowerRunning, v.PowerState)
	assert.Equal(t, "a", v.Host)

	// a's liveness is the registry's to say.
	s.peers.set("a", false)
	hosts, err = b.h.ListHosts(ctx)
	require.NoError(t, err)
	assert.Equal(t, api.HostLost, hosts[0].State)
	s.peers.mu.Lock()
	s.peers.fenced = map[string]bool{"a": true}
	s.peers.mu.Unlock()
	hosts, err = b.h.ListHosts(ctx)
	require.NoError(t, err)
	assert.Equal(t, api.HostFenced, hosts[0].State, "a lost host whose clients were fenced")
	s.peers.mu.Lock()
	s.peers.fenced = nil
	s.peers.mu.Unlock()
	s.peers.set("a", true)

	// Moved: deallocated on a, started on b, with every synced write of
	// its persisted disk and a new, empty temp disk.
	_, err = a.h.DeallocateVM(ctx, "vm1")
	require.NoError(t, err)
	v, err = b.h.StartVM(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, "b", v.Host)
	got := make([]byte, len(pattern))
	_, err = b.tree.get("vm1/data-0.img").ReadAt(got, 4096)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(pattern, got), "the data disk's synced write is there on b")
	_, err = b.tree.get("vm1/temp.img").ReadAt(got, 4096)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(make([]byte, len(got)), got), "the temp disk on b is new and empty")
	_, err = a.h.StopVM(ctx, "vm1", "")
	requireCode(t, err, http.StatusConflict)
	assert.Contains(t, err.Error(), `host "b"`)
}

// Two hosts starting one stopped VM at once: exactly one runs it.
func TestStartRaceOneWinner(t *testing.T) {
	s := newSharedHosts(t, "a", "b")
	a, b := s.hosts["a"], s.hosts["b"]
	ctx := context.Background()
	a.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20})
	_, err := a.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)
	for range 3 {
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, f := range []*fixture{a, b} {
			wg.Go(func() { _, errs[i] = f.h.StartVM(ctx, "vm1") })
		}
		wg.Wait()
		var winner *fixture
		for i, err := range errs {
			if err == nil {
				require.Nil(t, winner, "both hosts started it")
				winner = []*fixture{a, b}[i]
			} else {
				requireCode(t, err, http.StatusConflict)
			}
		}
		require.NotNil(t, winner, "%v", errs)
		for _, f := range []*fixture{a, b} {
			if f != winner {
				assert.Empty(t, f.tree.list(), "the loser opened nothing that stays")
			}
		}
		v, err := winner.h.ShowVM("vm1")
		require.NoError(t, err)
		assert.Equal(t, winner.cfg.HostName, v.Host)
		_, err = winner.h.StopVM(ctx, "vm1", "")
		require.NoError(t, err)
	}
}

// On a host's own store nothing names a host, and the host lists itself.
func TestHostListOnOwnStore(t *testing.T) {
	f := newFixture(t)
	v := f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20})
	assert.Empty(t, v.Host)
	assert.Empty(t, f.records(t).VMs["vm1"].Host)
	hosts, err := f.h.ListHosts(context.Background())
	require.NoError(t, err)
	require.Len(t, hosts, 1)
	assert.Equal(t, api.HostAlive, hosts[0].State)
	assert.True(t, hosts[0].This)
	assert.Equal(t, []string{"vm1"}, hosts[0].VMs)
}

// memLocks are writer locks in memory, one namespace for every host of a
// test; drop makes a lock vanish as one the server saw expire.
type memLocks struct {
	mu   sync.Mutex
	held map[string]string // key -> cookie
}

func (m *memLocks) Lock(_ context.Context, key, _, cookie, _ string, _ time.Duration, renew bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.held[key]
	switch {
	case renew && c != cookie:
		return storage.ErrNotFound
	case !renew && ok:
		return storage.ErrConflict
	}
	m.held[key] = cookie
	return nil
}

func (m *memLocks) Unlock(_ context.Context, key, _, cookie string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held[key] == cookie {
		delete(m.held, key)
	}
	return nil
}

func (m *memLocks) Holders(_ context.Context, key, _ string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.held[key]; ok {
		return []string{c}, nil
	}
	return nil, nil
}

func (m *memLocks) drop(key string) {
	m.mu.Lock()
	delete(m.held, key)
	m.mu.Unlock()
}

func (m *memLocks) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.held)
}

// memWriters are Writers over one storage with memLocks; they count the
// connections open. Each connection is a client instance of its own
// (cluster.Own runs as on RADOS), and blocklisting one is recorded.
type memWriters struct {
	be    storage.Backend
	locks *memLocks
	lease time.Duration
	host  string
	open  atomic.Int32
	n     atomic.Int32

	// holderWait is how long a refused writer waits for the holder's
	// owner record (cluster.AcquireDisk); 0 reads it once.
	holderWait time.Duration
	// taken, if set, is called once a writer holds a disk and owns it
	// (a test holds an operation there).
	taken func(vm, op string)

	mu     sync.Mutex
	fenced []string // addresses blocklisted
	ops    []string // operations opened
}

func (w *memWriters) Open(_ context.Context, vm string) (VMWriter, error) {
	w.open.Add(1)
	return memWriter{w: w, vm: vm, addr: fmt.Sprintf("%s/%d", w.host, w.n.Add(1))}, nil
}

func (w *memWriters) Operation(_ context.Context, op string) (VMWriter, error) {
	w.open.Add(1)
	w.mu.Lock()
	w.ops = append(w.ops, op)
	w.mu.Unlock()
	return memWriter{w: w, op: op, addr: fmt.Sprintf("%s/%d", w.host, w.n.Add(1))}, nil
}

func (w *memWriters) operations() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.ops)
}

func (w *memWriters) blocklisted() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.fenced)
}

type memWriter struct {
	w    *memWriters
	vm   string
	op   string
	addr string
}

func (v memWriter) Addr() (string, error) { return v.addr, nil }

func (v memWriter) Blocklist(_ context.Context, addr string, _ time.Duration) error {
	v.w.mu.Lock()
	v.w.fenced = append(v.w.fenced, addr)
	v.w.mu.Unlock()
	return nil
}

func (v memWriter) Disk(ctx context.Context, id, _ string, lost func(error)) (DiskWriter, error) {
	l, holder, err := cluster.AcquireDisk(ctx, v.w.locks, v.w.be, id, "test", v.w.lease, lost, v.w.holderWait)
	if errors.Is(err, storage.ErrConflict) {
		return DiskWriter{}, fmt.Errorf("%w (%v)", &LockHeld{Host: holder.Host, VM: holder.VM, Op: holder.Op}, err)
	}
	if err != nil {
		return DiskWriter{}, err
	}
	own, err := cluster.OwnAs(ctx, v.w.be, v, id, cluster.Owner{Host: v.w.host, VM: v.vm, Op: v.op})
	if err != nil {
		l.Release(context.Background())
		return DiskWriter{}, err
	}
	if v.w.taken != nil {
		v.w.taken(v.vm, v.op)
	}
	dw := DiskWriter{Storage: cluster.GuardOwned(v.w.be, l, id, own.Owner), Epoch: own.Epoch}
	if own.Fenced != nil {
		dw.Fenced = own.Fenced.Host
	}
	dw.Release = func() {
		if l.Check() == nil {
			cluster.Disown(context.Background(), v.w.be, id, own.Owner)
		}
		l.Release(context.Background())
	}
	return dw, nil
}

func (v memWriter) Free(ctx context.Context, id string) error {
	hs, _ := v.w.locks.Holders(ctx, cluster.LockKey(id), cluster.DiskLockName)
	if len(hs) > 0 {
		return storage.ErrConflict
	}
	return nil
}

func (v memWriter) Close() error { v.w.open.Add(-1); return nil }

// On a shared store each running VM holds its disks' writer locks on a
// connection of its own: a disk still locked by another writer is refused
// at start, naming the disk; stopping gives the locks and the connection
// back; a lost lease stops the VM with the reason (the EIO of its writes
// meanwhile is cluster's test).
func TestWriterLocks(t *testing.T) {
	s := newSharedHosts(t, "a")
	a := s.hosts["a"]
	ctx := context.Background()
	w := &memWriters{be: a.cfg.Storage, locks: &memLocks{held: map[string]string{}}, lease: time.Hour}
	require.NoError(t, a.h.Shutdown())
	a.cfg.Writers = w
	var err error
	a.h, err = New(a.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { a.h.Shutdown() })

	a.mustDisk(t, api.CreateDiskRequest{Name: "data1", SizeBytes: 16 << 20})
	a.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "data1"}}})
	assert.Equal(t, 2, w.locks.count(), "a lock per persisted disk")
	assert.Equal(t, int32(1), w.open.Load())
	_, err = a.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)
	assert.Equal(t, 0, w.locks.count())
	assert.Equal(t, int32(0), w.open.Load())

	// A writer elsewhere still holds data1's lock.
	d := a.records(t).Disks["data1"]
	require.NoError(t, w.locks.Lock(ctx, cluster.LockKey(d.UniqueID), cluster.DiskLockName, "elsewhere", "", time.Hour, false))
	_, err = a.h.StartVM(ctx, "vm1")
	requireCode(t, err, http.StatusConflict)
	assert.Contains(t, err.Error(), `disk "data1" is still locked by another writer`)
	assert.Empty(t, a.tree.list())
	assert.Equal(t, 1, w.locks.count(), "the OS disk's lock was given back")
	assert.Equal(t, int32(0), w.open.Load())
	w.locks.drop(cluster.LockKey(d.UniqueID))

	// The lease on data1 is lost: I/O fails, the VM stops with the reason.
	w.lease = 300 * time.Millisecond
	_, err = a.h.StartVM(ctx, "vm1")
	require.NoError(t, err)
	w.locks.drop(cluster.LockKey(d.UniqueID))
	require.Eventually(t, func() bool {
		v, err := a.h.ShowVM("vm1")
		return err == nil && v.PowerState == api.PowerStopped
	}, 10*time.Second, 10*time.Millisecond)
	v, err := a.h.ShowVM("vm1")
	require.NoError(t, err)
	assert.Contains(t, v.PowerStateReason, `lost its writer lease on disk "data1"`)
	assert.Empty(t, a.tree.list(), "its images are gone")
	assert.Equal(t, 0, w.locks.count())
	assert.Equal(t, int32(0), w.open.Load())
}

// withWriters restarts host f of s with writers w.
func (s *sharedHosts) withWriters(t *testing.T, f *fixture, w Writers) {
	require.NoError(t, f.h.Shutdown())
	f.cfg.Writers = w
	var err error
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { f.h.Shutdown() })
	f.h.Recover(context.Background())
}

// Healing: a VM of a lost host is taken over by another host once the
// lost host's writer locks have expired: its writers are fenced, the
// records give it to the healer with the reason, and it runs there with
// every synced write. While a lock is still held nothing is taken.
func TestHealTakesOverALostHostsVM(t *testing.T) {
	s := newSharedHosts(t, "a", "b")
	a, b := s.hosts["a"], s.hosts["b"]
	ctx := context.Background()
	locks := &memLocks{held: map[string]string{}}
	wa := &memWriters{be: a.cfg.Storage, locks: locks, lease: time.Hour, host: "a"}
	wb := &memWriters{be: b.cfg.Storage, locks: locks, lease: time.Hour, host: "b"}
	s.withWriters(t, a, wa)
	s.withWriters(t, b, wb)
	a.mustDisk(t, api.CreateDiskRequest{Name: "data1", SizeBytes: 16 << 20})
	a.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "data1"}}})
	pattern := make([]byte, 64<<10)
	rand.Read(pattern)
	_, err := a.tree.get("vm1/data-0.img").WriteAt(pattern, 8192)
	require.NoError(t, err)
	require.NoError(t, a.tree.get("vm1/data-0.img").Sync())

	// a is seen lost, but its locks are live: nothing is taken.
	s.peers.set("a", false)
	b.h.HealOnce(ctx)
	v, err := b.h.ShowVM("vm1")
	require.NoError(t, err)
	assert.Equal(t, "a", v.Host)
	assert.Empty(t, b.tree.list())

	// Its locks expire on the server: b takes over.
	locks.mu.Lock()
	clear(locks.held)
	locks.mu.Unlock()
	b.h.HealOnce(ctx)
	v, err = b.h.ShowVM("vm1")
	require.NoError(t, err)
	assert.Equal(t, api.PowerRunning, v.PowerState)
	assert.Equal(t, "b", v.Host)
	assert.Contains(t, v.PowerStateReason, "taken over by host b: host a was lost")
	assert.Equal(t, []string{"a/1", "a/1"}, wb.blocklisted(), "a's client of vm1 fenced, for each disk")
	assert.Empty(t, wa.blocklisted())
	d1, err := b.h.ShowDisk("data1")
	require.NoError(t, err)
	own, _, err := cluster.ReadOwner(ctx, b.cfg.Storage, d1.UniqueID)
	require.NoError(t, err)
	assert.Equal(t, cluster.Owner{Host: "b", VM: "vm1", Addr: "b/2", Epoch: 2}, own, "the epoch bumped for b")
	got := make([]byte, len(pattern))
	_, err = b.tree.get("vm1/data-0.img").ReadAt(got, 8192)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(pattern, got), "the synced write is there")
	assert.Equal(t, 2, locks.count(), "b holds the writer locks")

	// A second healer finds nothing to do; a restarted a brings back
	// nothing of vm1.
	b.h.HealOnce(ctx)
	require.NoError(t, a.h.Shutdown())
	a = s.start(t, "a")
	assert.Empty(t, a.tree.list())

	// Stopped on b, the disk is released cleanly: a start on a fences
	// nobody, and the epoch grows again (another host).
	_, err = b.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)
	own, _, err = cluster.ReadOwner(ctx, b.cfg.Storage, d1.UniqueID)
	require.NoError(t, err)
	assert.True(t, own.Released)
	s.withWriters(t, a, wa)
	_, err = a.h.StartVM(ctx, "vm1")
	require.NoError(t, err)
	assert.Empty(t, wa.blocklisted())
	own, _, err = cluster.ReadOwner(ctx, a.cfg.Storage, d1.UniqueID)
	require.NoError(t, err)
	assert.Equal(t, uint64(3), own.Epoch)
	assert.Equal(t, "a", own.Host)
}

// Healing waits, with the reason in the VM's record, while the key store
// does not answer; it takes the VM over once it does.
func TestHealWaitsForTheKeyStore(t *testing.T) {
	s := newSharedHosts(t, "a", "b")
	a, b := s.hosts["a"], s.hosts["b"]
	ctx := context.Background()
	locks := &memLocks{held: map[string]string{}}
	s.withWriters(t, a, &memWriters{be: a.cfg.Storage, locks: locks, lease: time.Hour, host: "a"})
	s.withWriters(t, b, &memWriters{be: b.cfg.Storage, locks: locks, lease: time.Hour, host: "b"})
	a.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20})
	s.peers.set("a", false)
	clear(locks.held)

	s.keys.SetUnreachable(true)
	b.h.HealOnce(ctx)
	v, err := b.h.ShowVM("vm1")
	require.NoError(t, err)
	assert.Equal(t, "a", v.Host, "not taken over")
	assert.Contains(t, v.PowerStateReason, "not taken over yet: the key store does not answer")
	assert.Empty(t, b.tree.list())

	s.keys.SetUnreachable(false)
	b.h.HealOnce(ctx)
	v, err = b.h.ShowVM("vm1")
	require.NoError(t, err)
	assert.Equal(t, "b", v.Host)
	assert.Equal(t, api.PowerRunning, v.PowerState)
}

// A disk's host cache filled under another ownership epoch is shredded
// before the disk opens; one of the same epoch is kept.
func TestCacheOfAnotherEpochIsShredded(t *testing.T) {
	s := newSharedHosts(t, "a")
	a := s.hosts["a"]
	d := &store.Disk{Name: "d1", UniqueID: "u1"}
	a.h.cfg.CacheDir = t.TempDir()
	dir := filepath.Join(a.h.cfg.CacheDir, "u1")
	fill := func(epoch string) {
		require.NoError(t, os.MkdirAll(dir, 0o700))
		require.NoError(t, os.MkdirAll(dir+".plain", 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "pages"), []byte("dirty"), 0o600))
		if epoch != "" {
			require.NoError(t, os.WriteFile(dir+".epoch", []byte(epoch), 0o600))
		}
	}
	fill("4")
	require.NoError(t, a.h.checkCacheEpoch(d, 4))
	assert.FileExists(t, filepath.Join(dir, "pages"), "same epoch: kept")

	require.NoError(t, a.h.checkCacheEpoch(d, 5))
	assert.NoDirExists(t, dir, "another epoch: shredded")
	assert.NoDirExists(t, dir+".plain")
	raw, err := os.ReadFile(dir + ".epoch")
	require.NoError(t, err)
	assert.Equal(t, "5", strings.TrimSpace(string(raw)))

	os.Remove(dir + ".epoch")
	fill("")
	require.NoError(t, a.h.checkCacheEpoch(d, 1))
	assert.NoDirExists(t, dir, "no epoch recorded: shredded")

	a.h.dropCacheEpoch(d)
	assert.NoFileExists(t, dir+".epoch", "forgotten once the cache is gone")
}
