package control

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
	"hostcrypt/control/keys"
)

// deadlockGuard bounds a wait that only a deadlock could make long: it is
// no speed goal.
const deadlockGuard = time.Minute

// heldCopy arms the fixture's copy hook: the first piece of the next long
// copy waits at the hook until released (or until its context ends, as
// when its disk closes). entered is closed once the copy waits there.
type heldCopy struct {
	entered, release chan struct{}
	once, freed      sync.Once
}

// free lets the held copy go on.
func (hc *heldCopy) free() { hc.freed.Do(func() { close(hc.release) }) }

func holdCopies(cfg *Config) *heldCopy {
	hc := &heldCopy{entered: make(chan struct{}), release: make(chan struct{})}
	cfg.hooks.copying = func(ctx context.Context, what string) error {
		hc.once.Do(func() { close(hc.entered) })
		select {
		case <-hc.release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return hc
}

// within runs fn and fails the test if it does not return within the
// deadlock guard.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(deadlockGuard):
		t.Fatalf("%s waited behind a copy", what)
	}
}

// newStallFixture is a host with a customer-key VM (cmk, disk c1 under
// des1) and a platform-key VM (busy, disk d1), both running, and a copy
// hook armed.
func newStallFixture(t *testing.T) (*fixture, *heldCopy, string) {
	f := newFixture(t)
	require.NoError(t, f.h.Shutdown())
	hc := holdCopies(&f.cfg)
	var err error
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { f.h.Shutdown() })
	t.Cleanup(hc.free) // first: a test that failed while the copy waited
	f.keys.AutoGrant()
	ctx := context.Background()
	const kid = "https://127.0.0.1:8443/vaults/vault1/keys/k1/0123abcd"
	f.mustDES(t, api.CreateDESRequest{Name: "des1", KeyURL: kid})
	for _, d := range []api.CreateDiskRequest{{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"}, {Name: "d1", SizeBytes: 8 << 20}} {
		_, err = f.h.CreateDisk(ctx, d)
		require.NoError(t, err)
	}
	for vm, d := range map[string]string{"cmk": "c1", "busy": "d1"} {
		f.mustVM(t, api.CreateVMRequest{Name: vm, OsDiskSizeBytes: 4 << 20, DataDisks: []api.AttachedDisk{{Name: d}}})
	}
	_, err = f.tree.get("busy/data-0.img").WriteAt(fill(1<<20), 0)
	require.NoError(t, err)
	return f, hc, kid
}

// A snapshot copy held open does not hold anything else up: vm list, vm
// show, disk show and a key-disable stop of another VM all complete while
// it waits, and the copy finishes once released. Before, every API call
// and the key monitor waited for the whole copy behind the control lock.
func TestCopyHoldsNothingUp(t *testing.T) {
	f, hc, kid := newStallFixture(t)
	ctx := context.Background()
	snap := make(chan error, 1)
	go func() {
		_, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "d1"})
		snap <- err
	}()
	<-hc.entered

	within(t, "vm list", func() {
		vms, err := f.h.ListVMs()
		require.NoError(t, err)
		require.Len(t, vms, 2)
	})
	within(t, "vm show", func() {
		vm, err := f.h.ShowVM("busy")
		require.NoError(t, err)
		require.Equal(t, api.PowerRunning, vm.PowerState)
	})
	within(t, "disk show", func() {
		_, err := f.h.ShowDisk("d1")
		require.NoError(t, err)
	})
	f.keys.SetKeyState(kid, keys.Revoked)
	within(t, "the key monitor's stop", func() { f.h.CheckKeys(ctx) })
	vm, err := f.h.ShowVM("cmk")
	require.NoError(t, err)
	require.Equal(t, api.PowerStopped, vm.PowerState, "the key disable stopped the VM while the copy waited")
	require.Contains(t, vm.PowerStateReason, kid)
	require.Empty(t, f.tree.images["cmk/os.img"])
	// What needs the copied disk is refused, not queued.
	requireCode(t, f.h.DeleteSnapshot(ctx, "s1"), 404)
	_, err = f.h.UpdateDisk(ctx, "d1", api.UpdateDiskRequest{SizeBytes: 16 << 20})
	requireCode(t, err, 409)
	require.ErrorContains(t, err, "snapshot s1 is being taken")

	select {
	case err := <-snap:
		t.Fatalf("the snapshot ended before it was released: %v", err)
	default:
	}
	hc.free()
	require.NoError(t, <-snap)
	s, err := f.h.ShowSnapshot("s1")
	require.NoError(t, err)
	require.Positive(t, s.ChunksCopied)
}

// A key disable stops the VM whose disk is being copied: the stop cancels
// the copy (the snapshot fails, leaving nothing), the disk closes with its
// keys wiped, and the VM stays stopped.
func TestKeyStopCancelsCopyOfItsDisk(t *testing.T) {
	f, hc, kid := newStallFixture(t)
	ctx := context.Background()
	_, err := f.tree.get("cmk/data-0.img").WriteAt(fill(1<<20), 0)
	require.NoError(t, err)
	snap := make(chan error, 1)
	go func() {
		_, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "c1"})
		snap <- err
	}()
	<-hc.entered
	f.keys.SetKeyState(kid, keys.Revoked)
	within(t, "the key monitor's stop", func() { f.h.CheckKeys(ctx) })
	err = <-snap
	require.Error(t, err)
	require.True(t, errors.Is(err, context.Canceled), "%v", err)
	vm, err := f.h.ShowVM("cmk")
	require.NoError(t, err)
	require.Equal(t, api.PowerStopped, vm.PowerState)
	_, err = f.h.ShowSnapshot("s1")
	requireCode(t, err, 404)
	assert.Empty(t, f.records(t).Intents, "the cancelled snapshot left its intent")
	rep, err := f.h.GC(ctx, api.GCRequest{DryRun: true})
	require.NoError(t, err)
	assert.Empty(t, rep.Leftovers, "the cancelled snapshot left objects")
}

// The key monitor reads no state of its own that another request writes:
// checks running while sets are created are race-free (go test -race
// reported CheckKeys reading the credentials while CreateDES wrote them).
func TestCheckKeysWhileSetsAreCreated(t *testing.T) {
	f, _, _ := newStallFixture(t)
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			f.h.CheckKeys(ctx)
		}
	})
	for _, n := range []string{"des2", "des3", "des4", "des5"} {
		_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: n, KeyURL: "https://127.0.0.1:8443/vaults/vault1/keys/" + n + "/1"})
		require.NoError(t, err)
	}
	close(stop)
	wg.Wait()
	vm, err := f.h.ShowVM("cmk")
	require.NoError(t, err)
	require.Equal(t, api.PowerRunning, vm.PowerState)
}

// A snapshot's progress counts the disk's bytes, never more than its size:
// the chunk objects hold two slots per block, which is not what a user
// copies. Before, a full disk showed about twice its size.
func TestSnapshotProgressCountsDiskBytes(t *testing.T) {
	f, hc, _ := newStallFixture(t)
	ctx := context.Background()
	_, err := f.tree.get("busy/data-0.img").WriteAt(fill(8<<20), 0)
	require.NoError(t, err)
	snap := make(chan error, 1)
	go func() {
		_, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "s1", Source: "d1"})
		snap <- err
	}()
	<-hc.entered
	p := f.h.Progress(api.KindSnapshots, "s1")
	require.NotNil(t, p)
	assert.Positive(t, p.Total)
	assert.LessOrEqual(t, p.Total, int64(8<<20), "progress total %d is beyond the 8 MiB disk", p.Total)
	hc.free()
	require.NoError(t, <-snap)
}
