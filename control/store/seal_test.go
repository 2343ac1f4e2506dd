package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// sealedPool is one directory standing for a pool, and the backend a test
// edits it through as whoever writes the pool would.
type sealedPool struct {
	t  *testing.T
	be storage.Backend
}

func newSealedPool(t *testing.T) *sealedPool {
	be, err := local.Open(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	return &sealedPool{t: t, be: be}
}

// edit rewrites the records object as change says, bypassing every host.
func (p *sealedPool) edit(change func(top map[string]any)) {
	raw, err := p.be.ReadMeta(bg, RecordsKey)
	require.NoError(p.t, err)
	var top map[string]any
	require.NoError(p.t, json.Unmarshal(raw, &top))
	change(top)
	out, err := json.Marshal(top)
	require.NoError(p.t, err)
	require.NoError(p.t, p.be.WriteMeta(bg, RecordsKey, out))
}

func (p *sealedPool) raw() []byte {
	raw, err := p.be.ReadMeta(bg, RecordsKey)
	require.NoError(p.t, err)
	return raw
}

func (p *sealedPool) put(raw []byte) { require.NoError(p.t, p.be.WriteMeta(bg, RecordsKey, raw)) }

var recordKey = bytes.Repeat([]byte{7}, 32)

// fill commits a customer-managed disk, its set and a VM.
func fillSealed(t *testing.T, s *Shared) {
	_, _, err := Update(bg, s, func(r *Records) error {
		r.DES["des1"] = &DES{Name: "des1", ID: "/x/des1", EncryptionType: "EncryptionAtRestWithCustomerKey",
			ActiveKey: KeyForDES{KeyURL: "https://ks:8443/vaults/v/keys/k/1"}, PreviousKeys: []KeyForDES{}}
		r.Disks["d1"] = &Disk{Name: "d1", UniqueID: "u1", StoragePrefix: "disks/u1",
			Encryption: Encryption{Type: "EncryptionAtRestWithCustomerKey", DiskEncryptionSetID: "/x/des1"}}
		r.Disks["d<2>"] = &Disk{Name: "d<2>", Encryption: Encryption{Type: "EncryptionAtRestWithPlatformKey"}}
		r.VMs["vm1"] = &VM{Name: "vm1", StorageProfile: StorageProfile{OsDisk: AttachedDisk{Name: "d1"}}}
		r.GalleryImageVersions["g/def/1.0.0"] = &GalleryImageVersion{Name: "1.0.0"}
		return nil
	})
	require.NoError(t, err)
}

// Records sealed by one host load on another with the same key; a record
// changed, added, removed or moved in the pool is refused, naming it, and
// the refusal holds until it is put back.
func TestSealedRecordsRefuseEdits(t *testing.T) {
	p := newSealedPool(t)
	a := NewShared(p.be, WithRecordKey("g1", recordKey))
	b := NewShared(p.be, WithRecordKey("g1", bytes.Clone(recordKey)))
	fillSealed(t, a)
	r, _, err := b.Load(bg)
	require.NoError(t, err)
	assert.Equal(t, "EncryptionAtRestWithCustomerKey", r.Disks["d1"].Encryption.Type)
	assert.Contains(t, r.GalleryImageVersions, "g/def/1.0.0")
	good := p.raw()
	assert.Contains(t, string(good), `"seals"`)

	section := func(top map[string]any, kind, name string) map[string]any {
		return top[kind].(map[string]any)[name].(map[string]any)
	}
	for _, tc := range []struct {
		what   string
		change func(top map[string]any)
		names  string
	}{
		{"a customer-managed disk made platform-managed", func(top map[string]any) {
			enc := section(top, "disks", "d1")["encryption"].(map[string]any)
			enc["type"] = "EncryptionAtRestWithPlatformKey"
			delete(enc, "diskEncryptionSetId")
		}, `disk "d1" does not match its seal`},
		{"a set's key switched", func(top map[string]any) {
			section(top, "diskEncryptionSets", "des1")["activeKey"].(map[string]any)["keyUrl"] = "https://ks:8443/vaults/evil/keys/k/1"
		}, `disk encryption set "des1" does not match its seal`},
		{"a disk pointed at another's objects", func(top map[string]any) {
			section(top, "disks", "d<2>")["storagePrefix"] = "disks/u1"
		}, `disk "d<2>" does not match its seal`},
		{"a record added", func(top map[string]any) {
			top["disks"].(map[string]any)["d9"] = map[string]any{"name": "d9"}
		}, `disk "d9" has no seal`},
		{"a record removed", func(top map[string]any) {
			delete(top["vms"].(map[string]any), "vm1")
		}, `VM "vm1" is sealed but gone`},
		{"a record moved to another name", func(top map[string]any) {
			ds := top["disks"].(map[string]any)
			seals := top["seals"].(map[string]any)
			ds["d3"], seals["disks/d3"] = ds["d1"], seals["disks/d1"]
			delete(ds, "d1")
			delete(seals, "disks/d1")
		}, `disk "d3" does not match its seal`},
		{"every seal stripped", func(top map[string]any) { delete(top, "seals") }, "no seal"},
	} {
		p.put(good)
		p.edit(tc.change)
		for _, s := range []*Shared{a, b} {
			_, _, err := s.Load(bg)
			require.ErrorIs(t, err, ErrTampered, tc.what)
			assert.Contains(t, err.Error(), tc.names, tc.what)
			// Nor does a transaction run on them.
			_, _, err = Update(bg, s, func(r *Records) error { return nil })
			require.ErrorIs(t, err, ErrTampered, tc.what)
		}
	}
	// Put back as it was: used again.
	p.put(good)
	_, _, err = a.Load(bg)
	require.NoError(t, err)

	// Another group's key (or none) does not pass: a host without a key
	// refuses sealed records rather than drop their seals at its next
	// commit.
	_, _, err = NewShared(p.be, WithRecordKey("g1", bytes.Repeat([]byte{8}, 32))).Load(bg)
	require.ErrorIs(t, err, ErrTampered)
	_, _, err = NewShared(p.be, WithRecordKey("g2", bytes.Repeat([]byte{8}, 32))).Load(bg)
	require.ErrorIs(t, err, ErrTampered)
	assert.Contains(t, err.Error(), `sealed by the hosts of group "g1", and this host's identity is of group "g2"`)
	_, _, err = NewShared(p.be).Load(bg)
	require.ErrorContains(t, err, "--host-token-file")
	assert.Equal(t, good, p.raw(), "no refusal wrote anything")
}

// Records of an older version carry no seal: a host with no record key
// keeps using them as before; one with a key refuses them until adopted
// once, after which every host with the key uses them and an edit is
// refused.
func TestUnsealedRecordsAdopted(t *testing.T) {
	p := newSealedPool(t)
	old := NewShared(p.be)
	fillSealed(t, old)
	assert.NotContains(t, string(p.raw()), "seals")
	_, _, err := old.Load(bg)
	require.NoError(t, err, "unsealed records, no key: as before")

	sealed := NewShared(p.be, WithRecordKey("g1", recordKey))
	_, _, err = sealed.Load(bg)
	require.ErrorIs(t, err, ErrTampered)
	assert.Contains(t, err.Error(), "--adopt-unsealed-records")

	adopting := NewShared(p.be, WithRecordKey("g1", recordKey), AdoptUnsealed())
	n, err := adopting.Adopt(bg)
	require.NoError(t, err)
	assert.Equal(t, 5, n)
	n, err = adopting.Adopt(bg)
	require.NoError(t, err)
	assert.Zero(t, n, "sealed already")
	r, _, err := sealed.Load(bg)
	require.NoError(t, err)
	assert.Equal(t, "/x/des1", r.Disks["d1"].Encryption.DiskEncryptionSetID)

	p.edit(func(top map[string]any) {
		top["disks"].(map[string]any)["d1"].(map[string]any)["encryption"] = map[string]any{"type": "EncryptionAtRestWithPlatformKey"}
	})
	for _, s := range []*Shared{sealed, adopting} {
		_, _, err = s.Load(bg)
		require.ErrorIs(t, err, ErrTampered, "an adopting store still checks the seals of sealed records")
		assert.True(t, strings.Contains(err.Error(), `disk "d1"`), err.Error())
	}
}

// Sealing changes neither the races' rules nor the refusal of credentials.
func TestSealedRaces(t *testing.T) {
	stores := sharedStores(t, 4)
	for i := range stores {
		stores[i] = NewShared(stores[i].be, WithRecordKey("g1", recordKey))
	}
	sharedRaces(t, stores)
	require.NoError(t, stores[0].be.WriteMeta(bg, RecordsKey, []byte(`{"version": 1, "credentials": {"des1": "tok"}}`)))
	_, _, err := stores[0].Load(bg)
	require.ErrorContains(t, err, "never belong in shared storage")
}

// BenchmarkSharedCommit: a commit of 1000 disks' records, unsealed and
// sealed, side by side (the seals are recomputed at every commit).
func BenchmarkSharedCommit(b *testing.B) {
	for _, sealed := range []bool{false, true} {
		b.Run(map[bool]string{false: "unsealed", true: "sealed"}[sealed], func(b *testing.B) {
			be, err := local.Open(b.TempDir())
			require.NoError(b, err)
			defer be.Close()
			var opts []SharedOption
			if sealed {
				opts = append(opts, WithRecordKey("g1", recordKey))
			}
			s := NewShared(be, opts...)
			r := NewRecords()
			for i := range 1000 {
				n := "disk" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + fmt.Sprint(i)
				r.Disks[n] = &Disk{Name: n, UniqueID: n, StoragePrefix: "disks/" + n, Encryption: Encryption{Type: "EncryptionAtRestWithPlatformKey"}}
			}
			v, err := s.Commit(bg, NoVersion, r)
			require.NoError(b, err)
			b.ResetTimer()
			for range b.N {
				if v, err = s.Commit(bg, v, r); err != nil {
					b.Fatal(err)
				}
				if _, v, err = s.Load(bg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
