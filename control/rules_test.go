package control

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	hfs "hostcrypt/fs"
	"hostcrypt/storage/local"
)

// twoHosts returns the fixture's host and a second one on the same state
// directory and storage, each with a store of its own: as two daemons
// sharing one store would be.
func twoHosts(t *testing.T, tweak func(*Config)) (*fixture, *Host) {
	f := newFixture(t)
	require.NoError(t, f.h.Shutdown())
	f.keys.AutoGrant()
	if tweak != nil {
		tweak(&f.cfg)
	}
	var err error
	f.h, err = New(f.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { f.h.Shutdown() })
	cfg := f.cfg
	root := filepath.Dir(cfg.StateDir)
	cfg.Storage, err = local.Open(filepath.Join(root, "storage"))
	require.NoError(t, err)
	cfg.HostLocal, err = local.Open(filepath.Join(root, "host2"))
	require.NoError(t, err)
	cfg.Tree = &fakeTree{images: map[string]hfs.Image{}}
	h2, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { h2.Shutdown() })
	return f, h2
}

// checkRecords finds what breaks a rule that spans records, or "".
func checkRecords(r *store.Records, limit int) string {
	perLocation := map[string]int{}
	for _, d := range r.DES {
		perLocation[d.Subscription+"/"+d.Location]++
	}
	for k, n := range perLocation {
		if n > limit {
			return fmt.Sprintf("%d disk encryption sets in %s, above %d", n, k, limit)
		}
	}
	for name, d := range r.Disks {
		if d.ManagedBy == "" {
			continue
		}
		vm := r.VMs[d.ManagedBy]
		if vm == nil {
			return fmt.Sprintf("disk %s is attached to VM %s, which does not exist", name, d.ManagedBy)
		}
		n := 0
		for _, v := range r.VMs {
			for _, dn := range v.DiskNames() {
				if dn == name {
					n++
				}
			}
		}
		if n != 1 {
			return fmt.Sprintf("disk %s is listed by %d VMs", name, n)
		}
	}
	for name, vm := range r.VMs {
		for _, dn := range vm.DiskNames() {
			d := r.Disks[dn]
			if d == nil || d.ManagedBy != name {
				return fmt.Sprintf("VM %s lists disk %s, which is not attached to it", name, dn)
			}
			if vm.PowerState == api.PowerRunning && d.DiskState != api.DiskAttached {
				return fmt.Sprintf("VM %s runs but its disk %s is %s", name, dn, d.DiskState)
			}
		}
	}
	return ""
}

// Two hosts on one store, each with its own store object, race to create
// disks of the same names, more disk encryption sets than the limit, VMs
// on the same disks, and start and stop them, while a reader checks every
// committed state. Every rule that spans records holds in each: names are
// unique (one creation of each name wins), the limit of sets holds, a
// disk belongs to one VM, and a running VM's disks are attached with it.
func TestRulesHoldAcrossTwoStores(t *testing.T) {
	const limit = 3
	f, h2 := twoHosts(t, func(c *Config) { c.DESLimit = limit })
	hosts := []*Host{f.h, h2}
	ctx := context.Background()

	var violation atomic.Value
	stop := make(chan struct{})
	var reader sync.WaitGroup
	reader.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, err := f.h.load(ctx)
			if !assert.NoError(t, err) {
				return
			}
			if v := checkRecords(r, limit); v != "" {
				violation.Store(v)
				return
			}
		}
	})

	// The same names from both hosts: one wins each.
	var wins atomic.Int32
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Go(func() {
			for i := range 4 {
				_, err := h.CreateDisk(ctx, api.CreateDiskRequest{Name: fmt.Sprintf("d%d", i), SizeBytes: 4 << 20})
				if err == nil {
					wins.Add(1)
					continue
				}
				requireCode(t, err, http.StatusConflict)
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 4, wins.Load(), "one creation of each name wins")
	require.Len(t, f.disks(t), 4)

	// More sets than the limit, from both hosts.
	var sets atomic.Int32
	for hi, h := range hosts {
		wg.Go(func() {
			for i := range limit {
				_, err := h.CreateDES(ctx, api.CreateDESRequest{Name: fmt.Sprintf("des-%d-%d", hi, i),
					KeyURL: "https://127.0.0.1:8443/vaults/vault1/keys/k/1"})
				if err == nil {
					sets.Add(1)
					continue
				}
				requireCode(t, err, http.StatusConflict)
				require.ErrorContains(t, err, "disk encryption sets in location")
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, limit, sets.Load(), "the limit holds across both hosts")

	// VMs on the same disks from both hosts: each disk goes to one.
	var vms atomic.Int32
	for hi, h := range hosts {
		wg.Go(func() {
			for i := range 4 {
				_, err := h.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("vm-%d-%d", hi, i), OsDisk: fmt.Sprintf("d%d", i)})
				if err == nil {
					vms.Add(1)
					continue
				}
				requireCode(t, err, http.StatusConflict)
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 4, vms.Load(), "one VM per disk")

	// Each host stops and starts the VMs it owns, many times; the other
	// cannot start them while they run.
	owned := map[*Host][]string{}
	r := f.records(t)
	for name := range r.VMs {
		for hi, h := range hosts {
			if name[3] == byte('0'+hi) {
				owned[h] = append(owned[h], name)
			}
		}
	}
	for hi, h := range hosts {
		other := hosts[1-hi]
		wg.Go(func() {
			for range 3 {
				for _, vm := range owned[h] {
					_, err := h.StopVM(ctx, vm, "")
					require.NoError(t, err)
					_, err = h.StartVM(ctx, vm)
					require.NoError(t, err)
					_, err = other.StartVM(ctx, vm)
					require.Error(t, err, "a running VM started again by the other host")
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	reader.Wait()
	if v := violation.Load(); v != nil {
		t.Fatalf("a committed state broke a rule: %s", v)
	}
	require.Empty(t, checkRecords(f.records(t), limit))
}
