package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"hostcrypt/control/api"
)

// State is what the page shows, as GET /api/state answers it.
type State struct {
	Host HostInfo `json:"host"`
	// Read is when the control plane was last read, and ReadError why the
	// last reading failed (the rest is then the reading before).
	Read      time.Time                        `json:"read"`
	ReadError string                           `json:"readError,omitempty"`
	VMs       []api.VM                         `json:"vms"`
	Disks     []api.Disk                       `json:"disks"`
	Snapshots []api.Snapshot                   `json:"snapshots"`
	Reports   map[string]*api.EncryptionReport `json:"reports"`
	// DES are read by a loop of their own (their listing asks the key
	// store whether each set's identity can use its key).
	DES      []api.DiskEncryptionSet `json:"des"`
	DESRead  time.Time               `json:"desRead"`
	DESError string                  `json:"desError,omitempty"`
	// Vaults and Keys are what the key store's events have told this host.
	Vaults         []VaultView `json:"vaults"`
	Keys           []KeyView   `json:"keys"`
	KeyEventsError string      `json:"keyEventsError,omitempty"`

	DemoPlaintext   bool `json:"demoPlaintext"`
	BlocksAvailable bool `json:"blocksAvailable"`
	RatesAvailable  bool `json:"ratesAvailable"`
}

// controlPart is what a reading of the control plane changes: two equal
// ones make no "state" event.
type controlPart struct {
	VMs       []api.VM
	Disks     []api.Disk
	Snapshots []api.Snapshot
	Reports   map[string]*api.EncryptionReport
	ReadError string
}

// readTimeout bounds one reading of the control plane; the DES listing's
// key store checks have the key store's own bound.
const readTimeout = 10 * time.Second

// refreshLoop reads the control plane every RefreshInterval while a page
// is watching, every IdleInterval while none is, and at once when woken.
func (c *Console) refreshLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.RefreshInterval)
	defer t.Stop()
	first := true
	var last time.Time
	for {
		c.refresh(ctx, first)
		first, last = false, time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !c.watched() && time.Since(last) < c.cfg.IdleInterval {
					continue
				}
			case <-c.refreshWake:
			}
			break
		}
	}
}

// refresh reads the control plane once and publishes what it read.
func (c *Console) refresh(ctx context.Context, first bool) {
	rctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	var p controlPart
	var err error
	p.VMs, err = c.cfg.Control.ListVMs(rctx)
	if err == nil {
		p.Disks, err = c.cfg.Control.ListDisks(rctx)
	}
	if err == nil {
		p.Snapshots, err = c.cfg.Control.ListSnapshots(rctx)
	}
	if err == nil {
		p.Reports = map[string]*api.EncryptionReport{}
		for _, vm := range p.VMs {
			rep, rerr := c.cfg.Control.EncryptionReport(rctx, vm.Name)
			if rerr != nil {
				// A VM deleted between the two calls is no failure.
				if api.StatusOf(rerr) != http.StatusNotFound {
					err = fmt.Errorf("encryption report of VM %s: %w", vm.Name, rerr)
				}
				continue
			}
			p.Reports[vm.Name] = rep
		}
	}
	if ctx.Err() != nil {
		return
	}
	c.mu.Lock()
	old := c.state
	next := *old
	next.Read = c.cfg.Now().UTC()
	if err != nil {
		next.ReadError = "reading the control plane: " + err.Error()
	} else {
		next.ReadError = ""
		next.VMs, next.Disks, next.Snapshots, next.Reports = p.VMs, p.Disks, p.Snapshots, p.Reports
	}
	c.state = &next
	c.mu.Unlock()
	if err != nil && old.ReadError == "" {
		c.log.Warn("console: reading the control plane", "err", err)
	}
	if !first {
		c.diffControl(old, &next)
	}
	if !sameJSON(controlOf(old), controlOf(&next)) {
		c.timeline.stateChanged()
	}
}

func controlOf(s *State) controlPart {
	return controlPart{VMs: s.VMs, Disks: s.Disks, Snapshots: s.Snapshots, Reports: s.Reports, ReadError: s.ReadError}
}

func sameJSON(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// diffControl puts on the timeline what changed between two readings.
func (c *Console) diffControl(old, next *State) {
	if next.ReadError != "" && old.ReadError == "" {
		c.timeline.add("console", "warn", "cannot read the control plane", next.ReadError)
	}
	if next.ReadError != "" {
		return
	}
	was := map[string]api.VM{}
	for _, vm := range old.VMs {
		was[vm.Name] = vm
	}
	for _, vm := range next.VMs {
		o, ok := was[vm.Name]
		delete(was, vm.Name)
		switch {
		case !ok:
			c.timeline.add("vm", "info", fmt.Sprintf("VM %s created (%s)", vm.Name, vm.PowerState), "")
		case o.PowerState != vm.PowerState:
			level := "info"
			if vm.PowerStateReason != "" {
				level = "alert"
			}
			c.timeline.add("vm", level, fmt.Sprintf("VM %s %s", vm.Name, vm.PowerState), vm.PowerStateReason)
		}
		if ok && vm.KeyWarning != "" && o.KeyWarning != vm.KeyWarning {
			c.timeline.add("vm", "warn", fmt.Sprintf("VM %s: key store warning", vm.Name), vm.KeyWarning)
		}
		if ok && vm.IntegrityErrors > o.IntegrityErrors {
			c.timeline.add("vm", "alert", fmt.Sprintf("VM %s: %d blocks failed authentication", vm.Name, vm.IntegrityErrors-o.IntegrityErrors),
				"a stored block was changed outside the host: the read failed rather than return it")
		}
	}
	for name := range was {
		c.timeline.add("vm", "info", fmt.Sprintf("VM %s deleted", name), "")
	}
	wasDisk := map[string]api.Disk{}
	for _, d := range old.Disks {
		wasDisk[d.Name] = d
	}
	for _, d := range next.Disks {
		o, ok := wasDisk[d.Name]
		switch {
		case !ok:
			c.timeline.add("disk", "info", fmt.Sprintf("disk %s created (%s)", d.Name, d.Encryption.Type), "")
		case d.Fenced != "" && o.Fenced == "":
			c.timeline.add("disk", "alert", fmt.Sprintf("disk %s refuses writes", d.Name), d.Fenced)
		case d.KeyID != o.KeyID:
			c.timeline.add("disk", "info", fmt.Sprintf("disk %s now wrapped by %s", d.Name, d.KeyID), "")
		}
	}
	wasSnap := map[string]bool{}
	for _, s := range old.Snapshots {
		wasSnap[s.Name] = true
	}
	for _, s := range next.Snapshots {
		if !wasSnap[s.Name] {
			c.timeline.add("disk", "info", fmt.Sprintf("snapshot %s of disk %s taken", s.Name, s.SourceDisk),
				fmt.Sprintf("%d chunks copied, writes held back %d µs", s.ChunksCopied, s.FreezePauseMicros))
		}
	}
}

// desLoop reads the disk encryption sets once at start, then only while a
// page is watching: every DESInterval, and when woken (a page connects, a
// key event, an action).
func (c *Console) desLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.DESInterval)
	defer t.Stop()
	first := true
	for {
		if first || c.watched() {
			rctx, cancel := context.WithTimeout(ctx, desTimeout)
			c.refreshDES(rctx, first)
			cancel()
		}
		first = false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.desWake:
		}
	}
}

// desTimeout bounds one listing of the sets, whose key store questions have
// the key store's own bound each.
const desTimeout = 2 * time.Minute

// refreshDES reads the disk encryption sets, with the key store's answer
// on each set's key access.
func (c *Console) refreshDES(ctx context.Context, first bool) {
	des, err := c.cfg.Control.ListDES(ctx)
	if errors.Is(ctx.Err(), context.Canceled) {
		return // the console stops
	}
	c.mu.Lock()
	old := c.state
	next := *old
	next.DESRead = c.cfg.Now().UTC()
	if err != nil {
		next.DESError = "reading the disk encryption sets: " + err.Error()
	} else {
		next.DESError, next.DES = "", des
	}
	c.state = &next
	c.mu.Unlock()
	if !first && err == nil {
		c.diffDES(old.DES, des)
	}
	if !sameJSON(old.DES, next.DES) || old.DESError != next.DESError {
		c.timeline.stateChanged()
	}
}

func (c *Console) diffDES(old, next []api.DiskEncryptionSet) {
	was := map[string]api.DiskEncryptionSet{}
	for _, d := range old {
		was[d.Name] = d
	}
	for _, d := range next {
		o, ok := was[d.Name]
		switch {
		case !ok:
			c.timeline.add("des", "info", fmt.Sprintf("disk encryption set %s created", d.Name), d.ActiveKey.KeyURL)
		case o.ActiveKey.KeyURL != d.ActiveKey.KeyURL:
			c.timeline.add("des", "info", fmt.Sprintf("disk encryption set %s now uses %s", d.Name, d.ActiveKey.KeyURL),
				"its disks' data keys are re-wrapped with the new key version; their data is unchanged")
		}
		if ok && d.AutoKeyRotationError != "" && o.AutoKeyRotationError != d.AutoKeyRotationError {
			c.timeline.add("des", "warn", fmt.Sprintf("disk encryption set %s: rotation failed", d.Name), d.AutoKeyRotationError)
		}
		if ok && d.KeyAccess != o.KeyAccess && o.KeyAccess != "" {
			level := "info"
			if d.KeyAccess != "ok" {
				level = "warn"
			}
			c.timeline.add("des", level, fmt.Sprintf("disk encryption set %s: key access %s", d.Name, shortAccess(d.KeyAccess)), d.KeyAccess)
		}
	}
}

func shortAccess(s string) string {
	if s == "ok" {
		return "ok"
	}
	return "refused"
}

// snapshot returns the state as a page sees it now.
func (c *Console) snapshot() *State {
	c.mu.Lock()
	s := *c.state
	vaults, keys := c.keys.views(c.cfg.Now())
	c.mu.Unlock()
	s.Vaults, s.Keys = vaults, keys
	users := map[string][]string{}
	for _, d := range s.DES {
		users[d.ActiveKey.KeyURL] = append(users[d.ActiveKey.KeyURL], "set "+d.Name)
	}
	for _, d := range s.Disks {
		if d.KeyID != "" {
			users[d.KeyID] = append(users[d.KeyID], "disk "+d.Name)
		}
	}
	for i := range s.Keys {
		k := &s.Keys[i]
		for kid, u := range users {
			if sameKeyVersion(kid, k.Vault, k.Name, k.Version) {
				k.UsedBy = append(k.UsedBy, u...)
			}
		}
		slices.Sort(k.UsedBy)
	}
	return &s
}

// sameKeyVersion tells whether kid (https://HOST/vaults/V/keys/K/VER) names
// that version.
func sameKeyVersion(kid, vault, key, version string) bool {
	return strings.HasSuffix(kid, "/vaults/"+vault+"/keys/"+key+"/"+version)
}

func (c *Console) serveState(w http.ResponseWriter, r *http.Request) {
	c.asked()
	writeJSON(w, http.StatusOK, c.snapshot())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
