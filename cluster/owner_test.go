package cluster

import (
	"context"
	"encoding/json"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage/local"
)

// fakeFencer is a client instance at addr that records whom it fenced.
type fakeFencer struct {
	addr   string
	fenced []string
}

func (f *fakeFencer) Addr() (string, error) { return f.addr, nil }
func (f *fakeFencer) Blocklist(_ context.Context, addr string, expire time.Duration) error {
	if expire < time.Hour {
		return syscall.EINVAL
	}
	f.fenced = append(f.fenced, addr)
	return nil
}

// Ownership runs in RBD's order: the last owner's client is fenced unless
// it let the disk go or is this client; the epoch grows with each other
// host and stays for the same host; metadata writes of an owner that was
// taken over are refused.
func TestOwnership(t *testing.T) {
	st, err := local.Open(t.TempDir())
	require.NoError(t, err)
	a1, a2, b := &fakeFencer{addr: "a/1"}, &fakeFencer{addr: "a/2"}, &fakeFencer{addr: "b/1"}

	own, err := Own(bg, st, a1, "d1", "host-a", "vm1")
	require.NoError(t, err)
	assert.Nil(t, own.Fenced, "never owned: nobody to fence")
	assert.Equal(t, uint64(1), own.Epoch)
	locks := newServerLocks()
	l, err := Acquire(bg, locks, []string{LockKey("d1")}, "a", time.Hour, nil)
	require.NoError(t, err)
	defer l.Release(bg)
	ga := GuardOwned(st, l, "d1", own.Owner)
	require.NoError(t, ga.WriteMeta(bg, "disks/d1/meta.json", []byte("a")))

	// The same host again (a restarted daemon, a new client): the old
	// client is fenced, the epoch stays, so its host cache is kept.
	own2, err := Own(bg, st, a2, "d1", "host-a", "vm1")
	require.NoError(t, err)
	require.NotNil(t, own2.Fenced)
	assert.Equal(t, []string{"a/1"}, a2.fenced)
	assert.Equal(t, uint64(1), own2.Epoch)
	err = ga.WriteMeta(bg, "disks/d1/meta.json", []byte("late"))
	require.ErrorIs(t, err, ErrLeaseLost, "the old client's metadata write is refused")

	// Another host: fenced, and a new epoch.
	own3, err := Own(bg, st, b, "d1", "host-b", "vm1")
	require.NoError(t, err)
	assert.Equal(t, []string{"a/2"}, b.fenced)
	assert.Equal(t, uint64(2), own3.Epoch)
	require.ErrorIs(t, CheckOwner(bg, st, "d1", own2.Owner), ErrLeaseLost)
	require.NoError(t, CheckOwner(bg, st, "d1", own3.Owner))

	// A clean release: the next owner fences nobody; a stale release
	// changes nothing.
	require.NoError(t, Disown(bg, st, "d1", own2.Owner))
	cur, _, err := ReadOwner(bg, st, "d1")
	require.NoError(t, err)
	assert.False(t, cur.Released, "a release of a past owner is ignored")
	require.NoError(t, Disown(bg, st, "d1", own3.Owner))
	a3 := &fakeFencer{addr: "a/3"}
	own4, err := Own(bg, st, a3, "d1", "host-a", "vm1")
	require.NoError(t, err)
	assert.Nil(t, own4.Fenced)
	assert.Empty(t, a3.fenced)
	assert.Equal(t, uint64(3), own4.Epoch)

	// A damaged record is an error that says what to do.
	require.NoError(t, st.WriteMeta(bg, LockKey("d2"), []byte("{")))
	_, err = Own(bg, st, a3, "d2", "host-a", "vm1")
	require.ErrorContains(t, err, "is damaged")
}

// The epoch floor: RaiseFloor records the owner's epoch as the floor; Own
// and Disown carry it on (a clean move, a restart on the same host, a
// takeover that has not raised it yet), so it never goes down; only the
// owner the record names may raise it; a record whose floor is above its
// epoch is damaged, as a writer would remove its own chunks.
func TestEpochFloor(t *testing.T) {
	st, err := local.Open(t.TempDir())
	require.NoError(t, err)
	a, b, c := &fakeFencer{addr: "a/1"}, &fakeFencer{addr: "b/1"}, &fakeFencer{addr: "c/1"}
	floor := func() uint64 {
		o, _, err := ReadOwner(bg, st, "d1")
		require.NoError(t, err)
		return o.Floor
	}

	ownA, err := Own(bg, st, a, "d1", "host-a", "vm1")
	require.NoError(t, err)
	assert.Zero(t, ownA.Floor)
	ownB, err := Own(bg, st, b, "d1", "host-b", "vm1") // A did not let go
	require.NoError(t, err)
	require.NotNil(t, ownB.Fenced)
	assert.Zero(t, ownB.Floor, "not before the chunks are stamped")
	_, err = RaiseFloor(bg, st, "d1", ownA.Owner)
	require.ErrorIs(t, err, ErrLeaseLost, "only the owner raises it")
	assert.Zero(t, floor())
	ownB.Owner, err = RaiseFloor(bg, st, "d1", ownB.Owner)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), ownB.Floor)
	assert.Equal(t, uint64(2), floor())
	again, err := RaiseFloor(bg, st, "d1", ownB.Owner)
	require.NoError(t, err)
	assert.Equal(t, ownB.Owner, again)

	// A clean move keeps it; so does a takeover until it raises it.
	require.NoError(t, Disown(bg, st, "d1", ownB.Owner))
	assert.Equal(t, uint64(2), floor())
	ownC, err := Own(bg, st, c, "d1", "host-c", "vm1")
	require.NoError(t, err)
	assert.Nil(t, ownC.Fenced)
	assert.Equal(t, uint64(3), ownC.Epoch)
	assert.Equal(t, uint64(2), ownC.Floor)
	c2 := &fakeFencer{addr: "c/2"} // host C restarted
	ownC2, err := Own(bg, st, c2, "d1", "host-c", "vm1")
	require.NoError(t, err)
	assert.Equal(t, uint64(3), ownC2.Epoch)
	assert.Equal(t, uint64(2), ownC2.Floor)
	ownC2.Owner, err = RaiseFloor(bg, st, "d1", ownC2.Owner)
	require.NoError(t, err)
	assert.Equal(t, uint64(3), floor())

	require.NoError(t, st.WriteMeta(bg, LockKey("d2"), []byte(`{"epoch":3,"floor":4}`)))
	_, err = Own(bg, st, a, "d2", "host-a", "vm1")
	require.ErrorContains(t, err, "floor 4 is above its epoch 3")
}

// Any owner record either is refused or decodes to one whose floor is at
// most its epoch and which encodes back to itself.
func FuzzOwnerRecord(f *testing.F) {
	f.Add([]byte(`{"host":"a","vm":"v","addr":"1.2.3.4:0/1","epoch":3,"floor":2,"released":true}`))
	f.Add([]byte(`{"epoch":3,"floor":4}`))
	f.Add([]byte(`{"epoch":1}`))
	f.Add([]byte(`{"floor":-1}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		o, err := parseOwner(raw)
		if err != nil {
			return
		}
		require.LessOrEqual(t, o.Floor, o.Epoch)
		again, err := json.Marshal(o)
		require.NoError(t, err)
		o2, err := parseOwner(again)
		require.NoError(t, err)
		require.Equal(t, o, o2)
	})
}
