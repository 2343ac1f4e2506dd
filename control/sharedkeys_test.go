package control

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/control/keys/keystest"
	"hostcrypt/control/store"
	hfs "hostcrypt/fs"
	"hostcrypt/storage/local"
)

var sealKey = bytes.Repeat([]byte{3}, 32)

// startIn starts host name on s's shared store with a host identity of
// group (keystest's): the sets' identities are made for the group, and
// every host of it acts for them. Every host seals the records with one
// key, so that a host of another group gets as far as the key store.
func (s *sharedHosts) startIn(t *testing.T, name, group string) (*fixture, *store.Dir) {
	sb, err := local.Open(filepath.Join(s.dir, "storage"))
	require.NoError(t, err)
	hb, err := local.Open(filepath.Join(s.dir, name, "host"))
	require.NoError(t, err)
	secrets, err := store.Open(filepath.Join(s.dir, name, "state"), nil)
	require.NoError(t, err)
	t.Cleanup(func() { secrets.Close() })
	s.peers.set(name, true)
	f := &fixture{tree: &fakeTree{images: map[string]hfs.Image{}}, keys: s.keys}
	f.cfg = Config{Storage: sb, HostLocal: hb, Keys: s.keys, Tree: f.tree,
		Store: store.NewShared(sb, store.WithRecordKey("pool", sealKey)), Secrets: secrets, Peers: s.peers, HostName: name,
		HostIdentity: s.keys.Host(group)}
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { f.h.Shutdown() })
	f.h.Recover(context.Background())
	s.hosts[name] = f
	return f, secrets
}

// A disk encryption set made on host a is used on host b: a VM with a
// customer-managed disk moves from a to b. No host keeps a credential of
// the set's identity (b had none to use before host identities); a host of
// another group is refused.
func TestSharedDESUsedOnEveryHostOfTheGroup(t *testing.T) {
	s := &sharedHosts{dir: t.TempDir(), peers: &fakePeers{alive: map[string]bool{}}, hosts: map[string]*fixture{}}
	s.keys = keystest.New().AutoGrant()
	a, secretsA := s.startIn(t, "a", "g1")
	b, secretsB := s.startIn(t, "b", "g1")
	x, _ := s.startIn(t, "x", "g2")
	ctx := context.Background()

	k := kid("vault1", "k")
	des := a.mustDES(t, api.CreateDESRequest{Name: "des1", KeyURL: k})
	assert.Equal(t, "ok", des.KeyAccess)
	for _, sec := range []*store.Dir{secretsA, secretsB} {
		cred, err := sec.Credential(ctx, "des1")
		require.NoError(t, err)
		assert.Empty(t, cred, "no host keeps a credential of the set's identity")
	}
	a.mustDisk(t, api.CreateDiskRequest{Name: "cmk1", SizeBytes: 16 << 20, EncryptionType: api.EncCustomerKey, DiskEncryptionSet: "des1"})
	a.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "cmk1"}}})
	_, err := a.tree.get("vm1/data-0.img").WriteAt([]byte("customer data"), 0)
	require.NoError(t, err)
	require.NoError(t, a.tree.get("vm1/data-0.img").Sync())
	_, err = a.h.DeallocateVM(ctx, "vm1")
	require.NoError(t, err)

	// b shows the set's key access as fine, and runs the VM.
	shown, err := b.h.ShowDES(ctx, "des1")
	require.NoError(t, err)
	assert.Equal(t, "ok", shown.KeyAccess)
	v, err := b.h.StartVM(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, "b", v.Host)
	got := make([]byte, 13)
	_, err = b.tree.get("vm1/data-0.img").ReadAt(got, 0)
	require.NoError(t, err)
	assert.Equal(t, "customer data", string(got))
	_, err = b.h.DeallocateVM(ctx, "vm1")
	require.NoError(t, err)

	// A host of another group may not act for the set's identity.
	_, err = x.h.StartVM(ctx, "vm1")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ActForNotAllowed")

	// A user-assigned identity made on a is used on b too.
	_, err = a.h.CreateIdentity(ctx, api.CreateIdentityRequest{Name: "id1"})
	require.NoError(t, err)
	cred, err := secretsA.Credential(ctx, store.IdentityCredential("id1"))
	require.NoError(t, err)
	assert.Empty(t, cred)
	_, err = a.h.CreateDES(ctx, api.CreateDESRequest{Name: "des2", KeyURL: k, UserAssignedIdentity: "id1", SystemAssignedIdentity: new(false)})
	require.NoError(t, err)
	b.mustDisk(t, api.CreateDiskRequest{Name: "cmk2", SizeBytes: 16 << 20, EncryptionType: api.EncCustomerKey, DiskEncryptionSet: "des2"})
	shown, err = b.h.ShowDES(ctx, "des2")
	require.NoError(t, err)
	assert.Equal(t, "ok", shown.KeyAccess)

	// A key disabled is refused to every host alike.
	s.keys.SetKeyState(k, keys.Revoked)
	for _, f := range []*fixture{a, b} {
		_, err = f.h.StartVM(ctx, "vm1")
		requireCode(t, err, http.StatusConflict)
		assert.Contains(t, err.Error(), "KeyDisabled")
	}
}

// A customer-managed disk's record edited into a platform-managed one in
// the shared storage: every host refuses the records, and the API's error
// names the disk instead of hiding it as an internal failure.
func TestSharedRecordEditRefused(t *testing.T) {
	s := &sharedHosts{dir: t.TempDir(), peers: &fakePeers{alive: map[string]bool{}}, hosts: map[string]*fixture{}}
	s.keys = keystest.New().AutoGrant()
	a, _ := s.startIn(t, "a", "g1")
	b, _ := s.startIn(t, "b", "g1")
	ctx := context.Background()
	a.mustDES(t, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k")})
	a.mustDisk(t, api.CreateDiskRequest{Name: "cmk1", SizeBytes: 16 << 20, EncryptionType: api.EncCustomerKey, DiskEncryptionSet: "des1"})

	be := a.cfg.Storage
	good, err := be.ReadMeta(ctx, store.RecordsKey)
	require.NoError(t, err)
	var top map[string]any
	require.NoError(t, json.Unmarshal(good, &top))
	top["disks"].(map[string]any)["cmk1"].(map[string]any)["encryption"] = map[string]any{"type": api.EncPlatformKey}
	bad, err := json.Marshal(top)
	require.NoError(t, err)
	require.NoError(t, be.WriteMeta(ctx, store.RecordsKey, bad))

	for _, f := range []*fixture{a, b} {
		_, err := f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "cmk1"}}})
		require.ErrorIs(t, err, store.ErrTampered)
		e := asError(err, slog.Default())
		assert.Equal(t, api.CodeRecordsTampered, e.Code)
		assert.Contains(t, e.Message, `disk "cmk1" does not match its seal`)
	}
	assert.Empty(t, a.tree.list())
	require.NoError(t, be.WriteMeta(ctx, store.RecordsKey, good))
	a.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "cmk1"}}})
}

// Rotation on a shared store re-wraps each disk once: two hosts' rotation
// loops running at once agree through the records (a compare-and-swap
// claim on the set) on which one re-wraps its stopped disks, and a disk
// whose VM runs on host b is re-wrapped by b alone.
func TestSharedRotationRewrapsEachDiskOnce(t *testing.T) {
	s := &sharedHosts{dir: t.TempDir(), peers: &fakePeers{alive: map[string]bool{}}, hosts: map[string]*fixture{}}
	s.keys = keystest.New().AutoGrant()
	a, _ := s.startIn(t, "a", "g1")
	b, _ := s.startIn(t, "b", "g1")
	ctx := context.Background()
	k1 := kid("vault1", "k")
	a.mustDES(t, api.CreateDESRequest{Name: "des1", KeyURL: k1, EnableAutoKeyRotation: true})
	for _, n := range []string{"s1", "s2", "s3", "r1"} {
		a.mustDisk(t, api.CreateDiskRequest{Name: n, SizeBytes: 8 << 20, EncryptionType: api.EncCustomerKey, DiskEncryptionSet: "des1"})
	}
	b.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "r1"}}})

	k2 := strings.TrimSuffix(k1, "0123abcd") + "4567cdef"
	s.keys.SetLatest(k2)
	// Each unwrap (one per re-wrap) takes a while, so that the two loops
	// overlap.
	s.keys.SetHook(func(ctx context.Context, op string) error {
		if op == "Customer.UnwrapKey" {
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	})
	before := s.keys.Calls("Customer.UnwrapKey")
	var wg sync.WaitGroup
	for _, f := range []*fixture{a, b} {
		wg.Go(func() { f.h.RotateKeys(ctx) })
	}
	wg.Wait()
	// The next passes finish what was left to the other host.
	b.h.RotateKeys(ctx)
	a.h.RotateKeys(ctx)

	r := a.records(t)
	for _, n := range []string{"s1", "s2", "s3", "r1"} {
		assert.Equal(t, k2, r.Disks[n].KeyID, "disk %s on the new version", n)
	}
	d := r.DES["des1"]
	assert.Equal(t, k2, d.ActiveKey.KeyURL)
	assert.Empty(t, d.PreviousKeys, "the rotation is over")
	assert.Nil(t, d.Rewrapping, "no claim left")
	assert.Empty(t, d.AutoKeyRotationError)
	assert.Equal(t, 4, s.keys.Calls("Customer.UnwrapKey")-before, "each disk re-wrapped once, by one host")

	// The running disk still opens on b under the new wrap.
	_, err := b.h.StopVM(ctx, "vm1", "")
	require.NoError(t, err)
	_, err = b.h.StartVM(ctx, "vm1")
	require.NoError(t, err)
}

// A claim on a set's re-wrap held by a live host turns another host's
// switch away, naming it; once that host is lost, the claim is void.
func TestSharedRewrapClaim(t *testing.T) {
	s := &sharedHosts{dir: t.TempDir(), peers: &fakePeers{alive: map[string]bool{}}, hosts: map[string]*fixture{}}
	s.keys = keystest.New().AutoGrant()
	a, _ := s.startIn(t, "a", "g1")
	b, _ := s.startIn(t, "b", "g1")
	ctx := context.Background()
	k1 := kid("vault1", "k")
	a.mustDES(t, api.CreateDESRequest{Name: "des1", KeyURL: k1})
	a.mustDisk(t, api.CreateDiskRequest{Name: "d1", SizeBytes: 8 << 20, EncryptionType: api.EncCustomerKey, DiskEncryptionSet: "des1"})
	release, err := a.h.claimRewrap(ctx, "des1")
	require.NoError(t, err)
	k2 := strings.TrimSuffix(k1, "0123abcd") + "4567cdef"
	_, err = b.h.UpdateDES(ctx, "des1", api.UpdateDESRequest{KeyURL: k2})
	requireCode(t, err, http.StatusConflict)
	assert.Contains(t, err.Error(), `being re-wrapped by host "a"`)
	assert.Equal(t, k1, b.records(t).Disks["d1"].KeyID)

	s.peers.set("a", false)
	b.h.RotateKeys(ctx) // resumes: a's claim is void
	r := b.records(t)
	assert.Equal(t, k2, r.Disks["d1"].KeyID)
	assert.Empty(t, r.DES["des1"].PreviousKeys)
	assert.Nil(t, r.DES["des1"].Rewrapping)
	release() // a's late release leaves b's state alone
	assert.Equal(t, k2, b.records(t).Disks["d1"].KeyID)
}
