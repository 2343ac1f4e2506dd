package store

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// sharedStores returns n Shared stores, each on a backend of its own over
// one directory, as n hosts on one pool would be.
func sharedStores(t *testing.T, n int) []*Shared {
	t.Helper()
	dir := t.TempDir()
	out := make([]*Shared, n)
	for i := range out {
		be, err := local.Open(dir)
		require.NoError(t, err)
		t.Cleanup(func() { be.Close() })
		out[i] = NewShared(be)
	}
	return out
}

// sharedRaces runs the shared store's rules on stores that see one object:
// creations of one name race with exactly one winner, and concurrent
// read-modify-write transactions lose no update. It is run on a directory
// here and on a RADOS pool by the ceph-tagged test.
func sharedRaces(t *testing.T, stores []*Shared) {
	r, v, err := stores[0].Load(bg)
	require.NoError(t, err)
	require.Equal(t, NoVersion, v, "an empty store is at NoVersion")
	require.Empty(t, r.Disks)

	for round := range 5 {
		name := fmt.Sprintf("d%d", round)
		errs := make([]error, len(stores))
		var wg sync.WaitGroup
		for i, s := range stores {
			wg.Go(func() {
				_, _, errs[i] = Update(bg, s, func(r *Records) error {
					if d, ok := r.Disks[name]; ok {
						return fmt.Errorf("disk %q exists already (made by %s)", name, d.ID)
					}
					r.Disks[name] = &Disk{Name: name, ID: fmt.Sprint("host", i)}
					return nil
				})
			})
		}
		wg.Wait()
		winners := 0
		for i, err := range errs {
			if err == nil {
				winners++
				got, _, err := stores[(i+1)%len(stores)].Load(bg)
				require.NoError(t, err)
				assert.Equal(t, fmt.Sprint("host", i), got.Disks[name].ID, "every store reads the winner's record")
			} else {
				assert.ErrorContains(t, err, "exists already")
			}
		}
		require.Equal(t, 1, winners, "round %d: exactly one creation of %q wins", round, name)
	}

	const each = 10
	var wg sync.WaitGroup
	for _, s := range stores {
		wg.Go(func() {
			for range each {
				_, _, err := Update(bg, s, func(r *Records) error {
					d := r.Disks["counter"]
					if d == nil {
						d = &Disk{Name: "counter"}
						r.Disks["counter"] = d
					}
					d.DiskSizeBytes++
					return nil
				})
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	got, _, err := stores[0].Load(bg)
	require.NoError(t, err)
	assert.EqualValues(t, len(stores)*each, got.Disks["counter"].DiskSizeBytes, "no update lost")
}

func TestSharedRaces(t *testing.T) {
	sharedRaces(t, sharedStores(t, 4))
}

func TestSharedCommitConflicts(t *testing.T) {
	s := sharedStores(t, 2)
	ra, va, err := s[0].Load(bg)
	require.NoError(t, err)
	rb, vb, err := s[1].Load(bg)
	require.NoError(t, err)
	ra.VMs["a"] = &VM{Name: "a"}
	v1, err := s[0].Commit(bg, va, ra)
	require.NoError(t, err)
	require.NotEqual(t, NoVersion, v1)
	rb.VMs["b"] = &VM{Name: "b"}
	_, err = s[1].Commit(bg, vb, rb)
	require.ErrorIs(t, err, ErrConflict, "creating the object a second time")
	got, v, err := s[1].Load(bg)
	require.NoError(t, err)
	assert.Equal(t, v1, v)
	assert.Contains(t, got.VMs, "a")
	assert.NotContains(t, got.VMs, "b")
	got.VMs["b"] = &VM{Name: "b"}
	_, err = s[1].Commit(bg, v, got)
	require.NoError(t, err)
	_, err = s[0].Commit(bg, v1, ra)
	require.ErrorIs(t, err, ErrConflict, "a stale version")
}

// What a host must not run on: damaged records, records of a newer
// format, and records that someone put credentials into.
func TestSharedRefuses(t *testing.T) {
	dir := t.TempDir()
	be, err := local.Open(dir)
	require.NoError(t, err)
	defer be.Close()
	s := NewShared(be)
	for _, tc := range []struct{ raw, says string }{
		{`{"disks": {`, "damaged"},
		{`{"version": 99, "disks": {}}`, "newer than this hostcryptd reads"},
		{`{"version": 1, "credentials": {"des1": "tok"}}`, "never belong in shared storage"},
	} {
		require.NoError(t, be.WriteMeta(bg, RecordsKey, []byte(tc.raw)))
		_, _, err := s.Load(bg)
		require.ErrorContains(t, err, tc.says)
		require.NotContains(t, err.Error(), "tok")
	}
	// And the records object is where RecordsKey says.
	require.NoError(t, be.Delete(bg, RecordsKey))
	_, _, err = Update(bg, s, func(r *Records) error { r.Disks["x"] = &Disk{Name: "x"}; return nil })
	require.NoError(t, err)
	raw, err := be.ReadMeta(bg, RecordsKey)
	require.NoError(t, err)
	assert.Contains(t, string(raw), `"x"`)
	_, err = be.ReadMeta(bg, "cluster/other")
	require.ErrorIs(t, err, storage.ErrNotFound)
}
