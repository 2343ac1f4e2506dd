package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var bg = context.Background()

func open(t *testing.T, dir string) *Dir {
	t.Helper()
	s, err := Open(dir, nil)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestEmptyStoreAndCommit(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	r, v, err := s.Load(bg)
	require.NoError(t, err)
	assert.Equal(t, NoVersion, v)
	assert.Empty(t, r.Disks)
	assert.NotNil(t, r.Intents)

	r.Disks["d1"] = &Disk{Name: "d1", DiskSizeBytes: 1 << 20}
	v1, err := s.Commit(bg, v, r)
	require.NoError(t, err)
	assert.NotEqual(t, v, v1)

	got, gv, err := open(t, dir).Load(bg)
	require.NoError(t, err)
	assert.Equal(t, v1, gv)
	assert.Equal(t, int64(1<<20), got.Disks["d1"].DiskSizeBytes)
	fi, err := os.Stat(filepath.Join(dir, StateFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

// A commit from a version another writer has moved past changes nothing.
func TestCommitConflicts(t *testing.T) {
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	ra, va, err := a.Load(bg)
	require.NoError(t, err)
	rb, vb, err := b.Load(bg)
	require.NoError(t, err)
	ra.Disks["a"] = &Disk{Name: "a"}
	_, err = a.Commit(bg, va, ra)
	require.NoError(t, err)
	rb.Disks["b"] = &Disk{Name: "b"}
	_, err = b.Commit(bg, vb, rb)
	require.ErrorIs(t, err, ErrConflict)
	got, _, err := b.Load(bg)
	require.NoError(t, err)
	assert.Contains(t, got.Disks, "a")
	assert.NotContains(t, got.Disks, "b")
}

// Two stores on one directory, each with writers of its own, lose no
// update: every increment of every writer is in the final records.
func TestConcurrentUpdatesLoseNothing(t *testing.T) {
	dir := t.TempDir()
	stores := []*Dir{open(t, dir), open(t, dir)}
	const writers, each = 4, 15
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := stores[w%2]
			for i := range each {
				_, _, err := Update(bg, s, func(r *Records) error {
					r.Disks[fmt.Sprintf("w%d-%d", w, i)] = &Disk{}
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
		}()
	}
	wg.Wait()
	r, v, err := stores[0].Load(bg)
	require.NoError(t, err)
	assert.EqualValues(t, writers*each, r.Disks["counter"].DiskSizeBytes)
	assert.Len(t, r.Disks, writers*each+1)
	assert.EqualValues(t, writers*each, v)
}

func TestUpdateErrorCommitsNothing(t *testing.T) {
	s := open(t, t.TempDir())
	boom := errors.New("refused")
	_, _, err := Update(bg, s, func(r *Records) error {
		r.Disks["x"] = &Disk{}
		return boom
	})
	require.ErrorIs(t, err, boom)
	r, v, err := s.Load(bg)
	require.NoError(t, err)
	assert.Empty(t, r.Disks)
	assert.Equal(t, NoVersion, v)
}

// A state.json written before the store existed (credentials inside it,
// intents, removals and failure reasons) loads with every record, and its
// credentials move to secrets.json.
func TestLegacyStateLoads(t *testing.T) {
	dir := t.TempDir()
	raw, err := os.ReadFile("testdata/state-legacy.json")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, StateFile), raw, 0o600))
	s := open(t, dir)
	r, _, err := s.Load(bg)
	require.NoError(t, err)
	assert.Len(t, r.Disks, 4)
	assert.Equal(t, "vm1", r.Disks["data1"].ManagedBy)
	assert.Equal(t, 4096, r.Disks["data1"].LogicalSectorSize)
	assert.Contains(t, r.Disks["spare"].FailureReason, "meta.json is missing")
	assert.Equal(t, "stopped", r.VMs["vm1"].PowerState)
	assert.Equal(t, "ReadOnly", r.VMs["vm1"].StorageProfile.DataDisks[0].Caching)
	assert.Equal(t, "p-des/des1", r.DES["des1"].Identity.PrincipalID)
	assert.True(t, r.Snapshots["snap1"].Incremental)
	assert.Equal(t, "snap1", r.Images["img1"].Source)
	assert.Equal(t, "disk lost1", r.Intents["disks/feedface-0000-0000-0000-000000000001"].What)
	assert.EqualValues(t, 4<<20, r.Removals["snapshots/feedface-0000-0000-0000-000000000002"].ObjectBytes)

	cred, err := s.Credential(bg, "des1")
	require.NoError(t, err)
	assert.Equal(t, "cred-des/des1", cred)
	now, err := os.ReadFile(filepath.Join(dir, StateFile))
	require.NoError(t, err)
	assert.NotContains(t, string(now), "cred-des", "the credential is still in state.json")
	var top map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(now, &top))
	assert.NotContains(t, top, "credentials")
	fi, err := os.Stat(filepath.Join(dir, SecretsFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// Written back and read again, nothing is lost.
	_, _, err = Update(bg, s, func(*Records) error { return nil })
	require.NoError(t, err)
	again, _, err := open(t, dir).Load(bg)
	require.NoError(t, err)
	assert.Equal(t, r, again)
}

func TestDamagedStateRefused(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, StateFile), []byte(`{"disks": {`), 0o600))
	_, err := Open(dir, nil)
	require.ErrorContains(t, err, "restore it from a copy")
}

func TestSecrets(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	c, err := s.Credential(bg, "des1")
	require.NoError(t, err)
	assert.Empty(t, c)
	require.NoError(t, s.SetCredential(bg, "des1", "tok1"))
	require.NoError(t, s.SetCredential(bg, "des2", "tok2"))
	require.NoError(t, s.DeleteCredential(bg, "des1"))
	require.NoError(t, s.DeleteCredential(bg, "nope"))
	c, err = open(t, dir).Credential(bg, "des2")
	require.NoError(t, err)
	assert.Equal(t, "tok2", c)
	c, err = s.Credential(bg, "des1")
	require.NoError(t, err)
	assert.Empty(t, c)
	// Never in the records.
	_, _, err = Update(bg, s, func(*Records) error { return nil })
	require.NoError(t, err)
	raw, err := os.ReadFile(filepath.Join(dir, StateFile))
	require.NoError(t, err)
	assert.NotContains(t, string(raw), "tok2")
}

// A link planted at state.json is refused, and nothing of its target shows
// in the error.
func TestStateFileLinkRefused(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(secret, []byte("SECRET-BYTES-not-json"), 0o600))
	require.NoError(t, os.Symlink(secret, filepath.Join(dir, StateFile)))
	_, err := Open(dir, nil)
	require.Error(t, err)
	require.NotContains(t, err.Error(), "SECRET")
	require.NotContains(t, err.Error(), "invalid character")
	b, err := os.ReadFile(secret)
	require.NoError(t, err)
	require.Equal(t, "SECRET-BYTES-not-json", string(b), "the link's target is untouched")
}
