package control

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
	"hostcrypt/volume"
)

// watcher is a volume.Observer and a Recorder that remembers what it was
// told.
type watcher struct {
	mu       sync.Mutex
	open     []string // "vm/disk" of the open volumes
	checks   []string
	rewraps  [][2]int
	rewrapOf []string
}

type watchedIO struct {
	w    *watcher
	name string
}

func (w *watcher) Opened(v *volume.Volume) volume.IO {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := v.VM() + "/" + v.Name()
	w.open = append(w.open, n)
	return watchedIO{w, n}
}

func (io watchedIO) Read(int, time.Duration, error)      {}
func (io watchedIO) Write(int, time.Duration, error)     {}
func (io watchedIO) Flush(time.Duration, error)          {}
func (io watchedIO) Discard(int64, time.Duration, error) {}
func (io watchedIO) Closed() {
	io.w.mu.Lock()
	defer io.w.mu.Unlock()
	io.w.open = slices.DeleteFunc(io.w.open, func(s string) bool { return s == io.name })
}

func (w *watcher) KeyChecked(vm, disk, result string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.checks = append(w.checks, vm+"/"+disk+" "+result)
}

func (w *watcher) Rewrapping(des string, done, total int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.rewrapOf = append(w.rewrapOf, des)
	w.rewraps = append(w.rewraps, [2]int{done, total})
}

func (w *watcher) state() (open, checks []string, rewraps [][2]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.open), slices.Clone(w.checks), slices.Clone(w.rewraps)
}

// The metrics' hooks: every attached disk of a running VM is observed from
// its opening to its closing, with its VM's name; each key check says what
// it found; a rotation says how far it is.
func TestObserverAndRecorder(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, f.h.Shutdown())
	w := &watcher{}
	f.cfg.Observer, f.cfg.Recorder = w, w
	f.restart(t, false)
	f.keys.AutoGrant()
	ctx := context.Background()
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: "https://h/vaults/v/keys/k/1"})
	require.NoError(t, err)
	f.mustDisk(t, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})
	f.mustDisk(t, api.CreateDiskRequest{Name: "c2", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})
	f.mustVM(t, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 8 << 20, DataDisks: []api.AttachedDisk{{Name: "c1"}}})
	open, _, _ := w.state()
	require.ElementsMatch(t, []string{"vm1/vm1_OsDisk", "vm1/c1"}, open)

	f.h.CheckKeys(ctx)
	_, checks, _ := w.state()
	require.Equal(t, []string{"vm1/c1 usable"}, checks, "one customer-key disk, one check")

	// Both disks of the set are re-wrapped when its key changes.
	_, err = f.h.UpdateDES(ctx, "des1", api.UpdateDESRequest{KeyURL: "https://h/vaults/v/keys/k/2"})
	require.NoError(t, err)
	_, _, rewraps := w.state()
	require.Equal(t, [][2]int{{0, 2}, {1, 2}, {2, 2}}, rewraps)
	require.Equal(t, []string{"des1", "des1", "des1"}, w.rewrapOf)

	f.keys.Grant("p-des/des1", false)
	f.h.CheckKeys(ctx)
	open, checks, _ = w.state()
	require.Equal(t, "vm1/c1 revoked", checks[len(checks)-1])
	require.Empty(t, open, "the stopped VM's disks were closed")
}
