package control

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
	"hostcrypt/disk"
	"hostcrypt/storage"
)

// Leftovers: what storage and the host directory hold that no record of the
// state owns. A crash in a creation leaves such objects (with an intent
// record saying what was being created); so does anything else that went
// wrong. Start-up lists them in the log, and only host gc removes them:
// never automatically, because a state directory that is not this
// storage's own would otherwise shred every disk in it.

// leftovers lists what no record of r owns.
func (h *Host) leftovers(ctx context.Context, r *store.Records) ([]api.Leftover, error) {
	owned := map[string]bool{}
	for _, d := range r.Disks {
		owned[d.StoragePrefix] = true
		if d.Conversion != nil {
			owned[d.Conversion.TargetPrefix] = true
		}
	}
	for _, s := range r.Snapshots {
		owned[s.StoragePrefix] = true
	}
	for _, im := range r.Images {
		owned[im.StoragePrefix] = true
	}
	for _, gv := range r.GalleryImageVersions {
		owned[gv.StoragePrefix] = true
	}
	var out []api.Leftover
	seen := map[string]bool{}
	add := func(where, path, reason string, used int64) {
		if seen[where+":"+path] {
			return
		}
		seen[where+":"+path] = true
		out = append(out, api.Leftover{Where: where, Path: path, Reason: reason, UsedBytes: used})
	}
	for _, p := range sortedKeys(r.Removals) {
		u, _ := h.cfg.Storage.Usage(ctx, p)
		add(api.WhereStorage, p, "deletion of "+r.Removals[p].What+" not finished", u)
	}
	for _, p := range sortedKeys(r.Intents) {
		if owned[p] {
			continue // the creation finished; only its intent stayed
		}
		if h.creating(p) {
			continue // a creation of this host, still running
		}
		if it := r.Intents[p]; !h.mine(it.Host) && h.hostAlive(ctx, it.Host) {
			continue // a creation of another host, which is alive
		}
		u, _ := h.cfg.Storage.Usage(ctx, p)
		it := r.Intents[p]
		add(api.WhereStorage, p, fmt.Sprintf("creation of %s cut short (started %s)", it.What, it.Since.Format("2006-01-02T15:04:05Z")), u)
	}
	for _, root := range removalRoots {
		keys, err := h.cfg.Storage.List(ctx, root)
		if err != nil {
			return nil, fmt.Errorf("listing storage under %s/: %w", root, err)
		}
		for _, p := range prefixesOf(keys) {
			if owned[p] || !removable(p) || r.Intents[p] != nil {
				continue
			}
			u, _ := h.cfg.Storage.Usage(ctx, p)
			add(api.WhereStorage, p, "no record owns it", u)
		}
	}
	for _, root := range []string{"temp", "temp-plain"} {
		keys, err := h.cfg.HostLocal.List(ctx, root)
		if err != nil {
			return nil, fmt.Errorf("listing the host directory under %s/: %w", root, err)
		}
		var prefixes []string
		if root == "temp" {
			prefixes = prefixesOf(keys)
		} else {
			prefixes = keys // temp-plain/VM is one object
		}
		for _, p := range prefixes {
			if vm := strings.TrimPrefix(p, root+"/"); r.VMs[vm] == nil && !strings.Contains(vm, "/") {
				var u int64 // Usage counts what is under a prefix, not one object
				if root == "temp" {
					u, _ = h.cfg.HostLocal.Usage(ctx, p)
				}
				add(api.WhereHost, p, "temp disk of a VM that does not exist", u)
			}
		}
	}
	if h.cfg.CacheDir != "" {
		uids := map[string]bool{}
		for _, d := range r.Disks {
			uids[d.UniqueID] = true
		}
		entries, err := os.ReadDir(h.cfg.CacheDir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("listing the host caches: %w", err)
		}
		for _, e := range entries {
			uid := strings.TrimSuffix(e.Name(), ".plain")
			if e.IsDir() && !uids[uid] && !strings.HasPrefix(e.Name(), ".") {
				add(api.WhereCache, e.Name(), "host cache of a disk that does not exist", dirUsage(filepath.Join(h.cfg.CacheDir, e.Name())))
			}
		}
	}
	return out, nil
}

// creating tells whether a creation of this host is still making the
// objects under prefix: it holds its name while it runs.
func (h *Host) creating(prefix string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.busy["intent/"+prefix]
	return ok
}

// prefixesOf returns the distinct ROOT/ID prefixes of keys, sorted.
func prefixesOf(keys []string) []string {
	var out []string
	for _, k := range keys {
		parts := strings.SplitN(k, "/", 3)
		if len(parts) < 3 {
			continue
		}
		p := parts[0] + "/" + parts[1]
		if len(out) == 0 || out[len(out)-1] != p {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func sortedKeys[T any](m map[string]T) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func dirUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, e os.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// logLeftovers lists the leftovers in the log, at start. It removes
// nothing.
func (h *Host) logLeftovers(ctx context.Context) {
	r, err := h.load(ctx)
	if err == nil {
		var left []api.Leftover
		if left, err = h.leftovers(ctx, r); err == nil {
			for _, l := range left {
				h.log.Warn("leftover that no record owns; hostcrypt host gc removes it (--dry-run true lists it)", "where", l.Where, "path", l.Path, "reason", l.Reason, "bytes", l.UsedBytes)
			}
			if len(left) > 0 {
				h.log.Warn("leftovers found; nothing was removed", "count", len(left))
			}
			return
		}
	}
	h.log.Error("listing what no record owns", "err", err)
}

// GC lists the leftovers and, unless r.DryRun, removes them: a disk's,
// snapshot's or image's objects are crypto-shredded (wrapped keys first), a
// temp disk's key is destroyed in the key store before its files, a cache
// directory is removed. Intent records of creations cut short go with
// their objects; unfinished deletions are finished. One gc runs at a time.
func (h *Host) GC(ctx context.Context, req api.GCRequest) (*api.GCReport, error) {
	release, err := h.claim("host gc is running", "host/gc")
	if err != nil {
		return nil, err
	}
	defer release()
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	left, err := h.leftovers(ctx, r)
	if err != nil {
		return nil, err
	}
	rep := &api.GCReport{DryRun: req.DryRun, Leftovers: left}
	if req.DryRun {
		return rep, nil
	}
	var removedIntents []string
	for i := range rep.Leftovers {
		l := &rep.Leftovers[i]
		err := h.removeLeftover(ctx, r, l)
		if err != nil {
			l.Error = err.Error()
			h.log.Error("host gc: not removed", "where", l.Where, "path", l.Path, "err", err)
			continue
		}
		if l.Where == api.WhereStorage {
			removedIntents = append(removedIntents, l.Path)
		}
		l.Removed = true
		h.log.Info("host gc: removed", "where", l.Where, "path", l.Path, "reason", l.Reason)
	}
	if _, err := h.update(ctx, func(r *store.Records) error {
		for _, p := range removedIntents {
			delete(r.Intents, p)
		}
		// An intent whose resource exists is stale (only a hand-edited
		// state holds one: the record and the intent's end are one
		// commit).
		for p := range r.Intents {
			if !h.creating(p) && !slices.ContainsFunc(left, func(l api.Leftover) bool { return l.Where == api.WhereStorage && l.Path == p }) {
				delete(r.Intents, p)
			}
		}
		return nil
	}); err != nil {
		return rep, err
	}
	return rep, nil
}

func (h *Host) removeLeftover(ctx context.Context, r *store.Records, l *api.Leftover) error {
	switch l.Where {
	case api.WhereStorage:
		if _, ok := r.Removals[l.Path]; ok {
			return h.finishRemoval(ctx, l.Path)
		}
		return h.removeObjects(ctx, l.Path)
	case api.WhereHost:
		if strings.HasPrefix(l.Path, "temp-plain/") {
			if err := h.cfg.HostLocal.Delete(ctx, l.Path); err != nil && !errors.Is(err, storage.ErrNotFound) {
				return err
			}
			return nil
		}
		// The temp disk's own key first, as a deallocation does.
		if err := h.destroyTempKeys(ctx, l.Path); err != nil {
			return fmt.Errorf("destroying the temp disk's key in the key store: %w", err)
		}
		err := disk.Destroy(ctx, h.cfg.HostLocal, l.Path)
		if err != nil && !errors.Is(err, disk.ErrNotFound) {
			return err
		}
		keys, err := h.cfg.HostLocal.List(ctx, l.Path)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := h.cfg.HostLocal.Delete(ctx, k); err != nil && !errors.Is(err, storage.ErrNotFound) {
				return err
			}
		}
		return nil
	case api.WhereCache:
		if l.Path == "" || strings.ContainsAny(l.Path, "/") || strings.HasPrefix(l.Path, ".") {
			return fmt.Errorf("cache directory %q: not a name under the cache directory", l.Path)
		}
		return os.RemoveAll(filepath.Join(h.cfg.CacheDir, l.Path))
	}
	return fmt.Errorf("unknown place %q", l.Where)
}
