package control

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"hostcrypt/disk"
	"hostcrypt/storage"
)

// Leftovers: what storage and the host directory hold that no record of the
// state owns. A crash in a creation leaves such objects (with an intent
// record saying what was being created); so does anything else that went
// wrong. Start-up lists them in the log, and only host gc removes them:
// never automatically, because a state directory that is not this
// storage's own would otherwise shred every disk in it.

// Where a leftover is.
const (
	WhereStorage = "storage"    // the storage backend (--storage)
	WhereHost    = "host"       // the host-local backend (--host-dir): temp disks
	WhereCache   = "host-cache" // a host cache directory (--host-dir/cache)
)

// Leftover is one thing host gc removes.
type Leftover struct {
	Where string `json:"where"`
	// Path is a storage prefix, or a cache directory's name.
	Path string `json:"path"`
	// Reason says why it is a leftover: the creation it was for, a
	// deletion not finished, or that no record owns it.
	Reason string `json:"reason"`
	// UsedBytes is the space it takes, as the backend reports it.
	UsedBytes int64 `json:"usedBytes"`
	// Removed is set by a gc that is not a dry run once it is gone; Error
	// says why it could not be removed.
	Removed bool   `json:"removed"`
	Error   string `json:"error,omitempty"`
}

// GCRequest is the body of POST /host/gc.
type GCRequest struct {
	// DryRun lists what would be removed and removes nothing.
	DryRun bool `json:"dryRun,omitempty"`
}

// GCReport is what host gc found and did.
type GCReport struct {
	DryRun    bool       `json:"dryRun"`
	Leftovers []Leftover `json:"leftovers"`
}

// leftovers lists what no record owns. The caller holds h.mu.
func (h *Host) leftovers(ctx context.Context) ([]Leftover, error) {
	owned := map[string]bool{}
	for _, d := range h.st.Disks {
		owned[d.StoragePrefix] = true
		if d.Conversion != nil {
			owned[d.Conversion.TargetPrefix] = true
		}
	}
	for _, s := range h.st.Snapshots {
		owned[s.StoragePrefix] = true
	}
	for _, im := range h.st.Images {
		owned[im.StoragePrefix] = true
	}
	var out []Leftover
	seen := map[string]bool{}
	add := func(where, path, reason string, used int64) {
		if seen[where+":"+path] {
			return
		}
		seen[where+":"+path] = true
		out = append(out, Leftover{Where: where, Path: path, Reason: reason, UsedBytes: used})
	}
	for _, p := range sortedKeys(h.st.Removals) {
		u, _ := h.cfg.Storage.Usage(ctx, p)
		add(WhereStorage, p, "deletion of "+h.st.Removals[p].What+" not finished", u)
	}
	for _, p := range sortedKeys(h.st.Intents) {
		if owned[p] {
			continue // the creation finished; only its intent stayed
		}
		u, _ := h.cfg.Storage.Usage(ctx, p)
		it := h.st.Intents[p]
		add(WhereStorage, p, fmt.Sprintf("creation of %s cut short (started %s)", it.What, it.Since.Format("2006-01-02T15:04:05Z")), u)
	}
	for _, root := range removalRoots {
		keys, err := h.cfg.Storage.List(ctx, root)
		if err != nil {
			return nil, fmt.Errorf("listing storage under %s/: %w", root, err)
		}
		for _, p := range prefixesOf(keys) {
			if owned[p] || !removable(p) {
				continue
			}
			u, _ := h.cfg.Storage.Usage(ctx, p)
			add(WhereStorage, p, "no record owns it", u)
		}
	}
	vms := h.st.VMs
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
			if vm := strings.TrimPrefix(p, root+"/"); vms[vm] == nil && !strings.Contains(vm, "/") {
				var u int64 // Usage counts what is under a prefix, not one object
				if root == "temp" {
					u, _ = h.cfg.HostLocal.Usage(ctx, p)
				}
				add(WhereHost, p, "temp disk of a VM that does not exist", u)
			}
		}
	}
	if h.cfg.CacheDir != "" {
		uids := map[string]bool{}
		for _, d := range h.st.Disks {
			uids[d.UniqueID] = true
		}
		entries, err := os.ReadDir(h.cfg.CacheDir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("listing the host caches: %w", err)
		}
		for _, e := range entries {
			uid := strings.TrimSuffix(e.Name(), ".plain")
			if e.IsDir() && !uids[uid] && !strings.HasPrefix(e.Name(), ".") {
				add(WhereCache, e.Name(), "host cache of a disk that does not exist", dirUsage(filepath.Join(h.cfg.CacheDir, e.Name())))
			}
		}
	}
	return out, nil
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
// nothing. The caller holds h.mu.
func (h *Host) logLeftovers(ctx context.Context) {
	left, err := h.leftovers(ctx)
	if err != nil {
		h.log.Error("listing what no record owns", "err", err)
		return
	}
	for _, l := range left {
		h.log.Warn("leftover that no record owns; hostcrypt host gc removes it (--dry-run true lists it)", "where", l.Where, "path", l.Path, "reason", l.Reason, "bytes", l.UsedBytes)
	}
	if len(left) > 0 {
		h.log.Warn("leftovers found; nothing was removed", "count", len(left))
	}
}

// GC lists the leftovers and, unless r.DryRun, removes them: a disk's,
// snapshot's or image's objects are crypto-shredded (wrapped keys first), a
// temp disk's key is destroyed in the key store before its files, a cache
// directory is removed. Intent records of creations cut short go with
// their objects; unfinished deletions are finished.
func (h *Host) GC(ctx context.Context, r GCRequest) (*GCReport, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	left, err := h.leftovers(ctx)
	if err != nil {
		return nil, err
	}
	rep := &GCReport{DryRun: r.DryRun, Leftovers: left}
	if r.DryRun {
		return rep, nil
	}
	for i := range rep.Leftovers {
		l := &rep.Leftovers[i]
		if err := h.removeLeftover(ctx, l); err != nil {
			l.Error = err.Error()
			h.log.Error("host gc: not removed", "where", l.Where, "path", l.Path, "err", err)
			continue
		}
		l.Removed = true
		h.log.Info("host gc: removed", "where", l.Where, "path", l.Path, "reason", l.Reason)
	}
	// An intent whose resource exists is stale (only a hand-edited state
	// holds one: the record and the intent's end are one save).
	for p := range h.st.Intents {
		if !slices.ContainsFunc(left, func(l Leftover) bool { return l.Where == WhereStorage && l.Path == p }) {
			delete(h.st.Intents, p)
		}
	}
	if err := h.save(); err != nil {
		return rep, err
	}
	return rep, nil
}

func (h *Host) removeLeftover(ctx context.Context, l *Leftover) error {
	switch l.Where {
	case WhereStorage:
		if _, ok := h.st.Removals[l.Path]; ok {
			return h.finishRemoval(ctx, l.Path)
		}
		if err := h.removeObjects(ctx, l.Path); err != nil {
			return err
		}
		delete(h.st.Intents, l.Path)
		return nil
	case WhereHost:
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
	case WhereCache:
		if l.Path == "" || strings.ContainsAny(l.Path, "/") || strings.HasPrefix(l.Path, ".") {
			return fmt.Errorf("cache directory %q: not a name under the cache directory", l.Path)
		}
		return os.RemoveAll(filepath.Join(h.cfg.CacheDir, l.Path))
	}
	return fmt.Errorf("unknown place %q", l.Where)
}
