package console

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	ksapi "hostcrypt/keystore/api"
)

// KeyView is one key version as the key store's events describe it.
type KeyView struct {
	Vault   string `json:"vault"`
	Name    string `json:"name"`
	Version string `json:"version"`
	Kid     string `json:"kid"`
	// State is "enabled", "disabled", "near expiry", "expired" or
	// "deleted".
	State     string     `json:"state"`
	Enabled   bool       `json:"enabled"`
	NotBefore *time.Time `json:"notBefore,omitempty"`
	Expires   *time.Time `json:"expires,omitempty"`
	// Current is the key's newest version.
	Current bool `json:"current"`
	// Platform is a key of the platform's vault, which no operator
	// manages.
	Platform bool `json:"platform"`
	// UsedBy names the disk encryption sets whose active key and the disks
	// whose data key this version is.
	UsedBy []string `json:"usedBy,omitempty"`
	// Changed is when the last event about it happened.
	Changed time.Time `json:"changed"`
}

// VaultView is a vault as the platform may read it: no access policies.
type VaultView struct {
	Name            string `json:"name"`
	Location        string `json:"location"`
	Sku             string `json:"sku"`
	TenantID        string `json:"tenantId"`
	RetentionDays   int    `json:"retentionDays"`
	PurgeProtection bool   `json:"purgeProtection"`
	Platform        bool   `json:"platform"`
	Error           string `json:"error,omitempty"`
	Keys            int    `json:"keys"`
}

type bookVersion struct {
	view       KeyView
	nearExpiry bool
	expired    bool
}

type bookKey struct {
	vault, name string
	deleted     bool
	versions    []*bookVersion // oldest first
}

// keyBook is the keys as the event stream has told them, guarded by the
// console's mutex.
type keyBook struct {
	keys   map[string]*bookKey
	vaults map[string]*VaultView
}

func newKeyBook() *keyBook {
	return &keyBook{keys: map[string]*bookKey{}, vaults: map[string]*VaultView{}}
}

// apply records one event. It returns the name of a vault seen for the
// first time ("" if none).
func (b *keyBook) apply(e ksapi.Event) (newVault string) {
	d := e.Data
	if d.VaultName == "" {
		return ""
	}
	if _, ok := b.vaults[d.VaultName]; !ok {
		b.vaults[d.VaultName] = &VaultView{Name: d.VaultName, Platform: d.VaultName == ksapi.PlatformVault}
		newVault = d.VaultName
	}
	if d.ObjectType != "Key" || d.ObjectName == "" {
		return newVault
	}
	id := d.VaultName + "/" + d.ObjectName
	k := b.keys[id]
	if k == nil {
		k = &bookKey{vault: d.VaultName, name: d.ObjectName}
		b.keys[id] = k
	}
	typ := strings.TrimPrefix(e.EventType, "Microsoft.KeyVault.")
	switch typ {
	case "KeyDeleted":
		k.deleted = true
		return newVault
	case "KeyRecovered":
		k.deleted = false
		return newVault
	case "KeyPurged":
		delete(b.keys, id)
		return newVault
	}
	if d.Version == "" {
		return newVault
	}
	v := k.version(d.Version)
	if v == nil {
		v = &bookVersion{view: KeyView{Vault: d.VaultName, Name: d.ObjectName, Version: d.Version, Kid: d.Id, Enabled: true,
			Platform: d.VaultName == ksapi.PlatformVault}}
		k.versions = append(k.versions, v)
	}
	v.view.Changed = e.EventTime
	v.view.NotBefore, v.view.Expires = unixTime(d.NBF), unixTime(d.EXP)
	switch typ {
	case "KeyDisabled":
		v.view.Enabled = false
	case "KeyEnabled":
		v.view.Enabled = true
	case "KeyNearExpiry":
		v.nearExpiry = true
	case "KeyExpired":
		v.expired = true
	}
	return newVault
}

func (k *bookKey) version(ver string) *bookVersion {
	for _, v := range k.versions {
		if v.view.Version == ver {
			return v
		}
	}
	return nil
}

func unixTime(s *int64) *time.Time {
	if s == nil {
		return nil
	}
	t := time.Unix(*s, 0).UTC()
	return &t
}

// views returns the vaults and key versions, sorted, states as of now.
func (b *keyBook) views(now time.Time) ([]VaultView, []KeyView) {
	keys := []KeyView{}
	count := map[string]int{}
	for _, k := range b.keys {
		count[k.vault]++
		for i, v := range k.versions {
			kv := v.view
			kv.Current = i == len(k.versions)-1
			switch {
			case k.deleted:
				kv.State = "deleted"
			case !kv.Enabled:
				kv.State = "disabled"
			case v.expired || (kv.Expires != nil && !now.Before(*kv.Expires)):
				kv.State = "expired"
			case v.nearExpiry:
				kv.State = "near expiry"
			default:
				kv.State = "enabled"
			}
			keys = append(keys, kv)
		}
	}
	sort.SliceStable(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.Platform != b.Platform {
			return !a.Platform
		}
		if a.Vault != b.Vault {
			return a.Vault < b.Vault
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Changed.Before(b.Changed)
	})
	vaults := []VaultView{}
	for _, v := range b.vaults {
		vv := *v
		vv.Keys = count[v.Name]
		vaults = append(vaults, vv)
	}
	sort.Slice(vaults, func(i, j int) bool {
		if vaults[i].Platform != vaults[j].Platform {
			return !vaults[i].Platform
		}
		return vaults[i].Name < vaults[j].Name
	})
	return vaults, keys
}

// keyEventTitle says what a key store event is, in a line.
func keyEventTitle(e ksapi.Event) (title, level string) {
	typ := strings.TrimPrefix(e.EventType, "Microsoft.KeyVault.")
	d := e.Data
	what := d.VaultName + "/" + d.ObjectName
	if d.Version != "" {
		what += " version " + shortVersion(d.Version)
	}
	level = "info"
	switch typ {
	case "KeyDisabled", "KeyDeleted", "KeyPurged", "KeyExpired":
		level = "alert"
	case "KeyNearExpiry", "VaultAccessPolicyChanged":
		level = "warn"
	}
	if d.ObjectType != "Key" {
		what = "vault " + d.VaultName
	}
	return fmt.Sprintf("%s: %s", typ, what), level
}

func shortVersion(v string) string {
	if len(v) > 12 {
		return v[:12] + "…"
	}
	return v
}

// eventWait is how long one request of the event stream waits for an
// event.
const eventWait = 25 * time.Second

// followKeyEvents reads the key store's events from the first one, into the
// key book and the timeline, until ctx ends. Each event wakes the reading of
// the control plane and of the disk encryption sets: a key disabled is soon
// a VM stopped.
func (c *Console) followKeyEvents(ctx context.Context) {
	var after uint64
	backoff := time.Second
	for ctx.Err() == nil {
		evs, err := c.cfg.Keys.Events(ctx, after, eventWait)
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		was := c.state.KeyEventsError
		if err != nil {
			s := *c.state
			s.KeyEventsError = "reading the key store's events: " + err.Error()
			c.state = &s
		} else if was != "" {
			s := *c.state
			s.KeyEventsError = ""
			c.state = &s
		}
		c.mu.Unlock()
		if err != nil {
			if was == "" {
				c.log.Warn("console: key store events", "err", err, "retry in", backoff)
				c.timeline.stateChanged()
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Minute)
			continue
		}
		backoff = time.Second
		var newVaults []string
		c.mu.Lock()
		for _, e := range evs {
			if v := c.keys.apply(e); v != "" {
				newVaults = append(newVaults, v)
			}
			after = max(after, e.Sequence)
		}
		c.mu.Unlock()
		for _, e := range evs {
			title, level := keyEventTitle(e)
			c.timeline.addAt(e.EventTime, "key", level, title, e.Data.Id)
		}
		for _, v := range newVaults {
			c.readVault(ctx, v)
		}
		if len(evs) > 0 || was != "" {
			wake(c.desWake)
			wake(c.refreshWake)
			c.timeline.stateChanged()
		}
	}
}

// readVault reads a vault's metadata as the platform may.
func (c *Console) readVault(ctx context.Context, name string) {
	rctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	v, err := c.cfg.Keys.Vault(rctx, name)
	c.mu.Lock()
	defer c.mu.Unlock()
	vv := c.keys.vaults[name]
	if vv == nil {
		return
	}
	if err != nil {
		vv.Error = err.Error()
		return
	}
	vv.Error = ""
	vv.Location, vv.Sku, vv.TenantID = v.Location, v.Properties.Sku.Name, v.Properties.TenantID
	vv.RetentionDays, vv.PurgeProtection = v.Properties.SoftDeleteRetentionInDays, v.Properties.EnablePurgeProtection
}
