package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"hostcrypt/disk"
	"hostcrypt/storage"
)

// Crash ordering of deletions and creations.
//
// A deletion first records itself: in one state save the resource's record
// goes and a removal of its storage prefix is recorded. Only then are its
// objects touched (a snapshot's chunks that later snapshots share are handed
// over to them first, then the wrapped keys are destroyed, then the rest
// goes), and the removal record is dropped last. A crash anywhere leaves
// either the resource, whole and usable, or a removal record that the next
// start finishes. Never a resource that is listed but whose keys are gone.
//
// A creation records an intent before its first object and drops it in the
// save that records the new resource. A crash in between leaves an intent
// whose objects nobody uses; start-up lists them and host gc removes them.
// Nothing is removed at start on the strength of what the state does not
// say: a state directory that is not this storage's must not shred it.

// removal is a deletion whose objects are still to go.
type removal struct {
	// What names the resource, for the log: "snapshot s1".
	What  string    `json:"what"`
	Since time.Time `json:"since"`
	// ObjectBytes is a snapshot's chunk object length: chunks that later
	// snapshots share are copied for them before the removal.
	ObjectBytes int64 `json:"objectBytes,omitempty"`
}

// intent is a creation in progress.
type intent struct {
	What  string    `json:"what"`
	Since time.Time `json:"since"`
}

// removalRoots are where a removal may lead: the prefixes of disks,
// snapshots and images, never anything else.
var removalRoots = []string{"disks", "snapshots", "images"}

func removable(prefix string) bool {
	return slices.ContainsFunc(removalRoots, func(root string) bool { return validPrefix(prefix, root) })
}

// recordRemoval records the removal of prefix. The caller has dropped the
// resource's record from the state, and saves.
func (h *Host) recordRemoval(prefix, what string, objectBytes int64) {
	h.st.Removals[prefix] = &removal{What: what, Since: h.cfg.Now().UTC(), ObjectBytes: objectBytes}
}

// finishRemoval removes what a removal record names and then the record.
// The caller holds h.mu.
func (h *Host) finishRemoval(ctx context.Context, prefix string) error {
	r := h.st.Removals[prefix]
	if r == nil {
		return nil
	}
	if !removable(prefix) {
		// Only a hand-edited state gets here: leave storage alone.
		h.log.Error("a removal names a prefix that no resource lives under; dropping it and leaving storage as it is", "prefix", prefix, "what", r.What)
	} else {
		if strings.HasPrefix(prefix, "snapshots/") {
			if err := h.handOver(ctx, prefix, r.ObjectBytes); err != nil {
				return fmt.Errorf("%s: handing its shared chunks to later snapshots: %w", r.What, err)
			}
		}
		if err := h.removeObjects(ctx, prefix); err != nil {
			return fmt.Errorf("%s: removing its objects: %w", r.What, err)
		}
	}
	delete(h.st.Removals, prefix)
	if err := h.save(); err != nil {
		return err
	}
	h.log.Info("objects removed", "what", r.What, "prefix", prefix)
	return nil
}

// finishRemovals finishes every removal a crash cut short. The caller holds
// h.mu.
func (h *Host) finishRemovals(ctx context.Context) {
	prefixes := make([]string, 0, len(h.st.Removals))
	for p := range h.st.Removals {
		prefixes = append(prefixes, p)
	}
	slices.Sort(prefixes)
	for _, p := range prefixes {
		h.log.Info("finishing a deletion cut short", "what", h.st.Removals[p].What, "prefix", p)
		if err := h.finishRemoval(ctx, p); err != nil {
			h.log.Error("a deletion could not be finished; the next start tries again", "prefix", p, "err", err)
		}
	}
}

// handOver gives every incremental snapshot that refers to a chunk of the
// snapshot under prefix its own copy (the first of them by time; later ones
// then refer to that copy) and rewrites their manifests. Each copy is made
// before the manifest that names it, and the old chunks stay until every
// manifest is rewritten, so an interrupted hand-over is simply done again.
func (h *Host) handOver(ctx context.Context, prefix string, objBytes int64) error {
	own := prefix + "/chunks/"
	var others []*Snapshot
	for _, o := range h.st.Snapshots {
		if o.Incremental && o.StoragePrefix != prefix {
			others = append(others, o)
		}
	}
	sort.Slice(others, func(i, j int) bool { return others[i].TimeCreated.Before(others[j].TimeCreated) })
	moved := map[string]string{} // old key -> new key
	for _, o := range others {
		m, err := h.readManifest(ctx, o.StoragePrefix)
		if err != nil {
			return err
		}
		changed := false
		for n, e := range m.Chunks {
			if !strings.HasPrefix(e.Key, own) {
				continue
			}
			nk, ok := moved[e.Key]
			if !ok {
				nk = o.StoragePrefix + "/chunks/" + n
				if err := copyObject(ctx, h.cfg.Storage, e.Key, nk, objBytes); err != nil {
					return fmt.Errorf("handing chunk %s to snapshot %q: %w", n, o.Name, err)
				}
				moved[e.Key] = nk
				o.ChunksCopied++
				o.ChunksShared--
			}
			e.Key = nk
			m.Chunks[n] = e
			changed = true
		}
		if changed {
			if err := h.writeManifest(ctx, o.StoragePrefix, m); err != nil {
				return err
			}
			if u, err := h.cfg.Storage.Usage(ctx, o.StoragePrefix); err == nil {
				o.UsedBytes = u
			}
		}
	}
	if len(moved) > 0 {
		h.log.Info("chunks handed over to later snapshots", "prefix", prefix, "chunks", len(moved))
	}
	return nil
}

// beginIntent records, and saves, that the objects under prefix are being
// created for what. The caller holds h.mu.
func (h *Host) beginIntent(prefix, what string) error {
	h.st.Intents[prefix] = &intent{What: what, Since: h.cfg.Now().UTC()}
	if err := h.save(); err != nil {
		delete(h.st.Intents, prefix)
		return err
	}
	return nil
}

// abandonIntent removes what a failed creation made under prefix and drops
// its intent. A removal that fails leaves the intent: host gc finishes it.
func (h *Host) abandonIntent(ctx context.Context, prefix string) {
	if err := h.removeObjects(ctx, prefix); err != nil {
		h.log.Error("removing what a failed creation made; host gc removes it later", "prefix", prefix, "err", err)
		return
	}
	delete(h.st.Intents, prefix)
	if err := h.save(); err != nil {
		h.log.Error("saving the state", "err", err)
	}
}

// removeObjects crypto-shreds and removes what is stored under prefix: the
// wrapped keys first, then the chunks, the metadata, the manifest and
// whatever else a crash left there.
func (h *Host) removeObjects(ctx context.Context, prefix string) error {
	if !removable(prefix) {
		return fmt.Errorf("storage prefix %q is not one of a disk, snapshot or image; nothing removed", prefix)
	}
	err := destroyKeys(ctx, h.cfg.Storage, prefix)
	if derr := h.cfg.Storage.Delete(ctx, manifestKey(prefix)); derr != nil && !errors.Is(derr, storage.ErrNotFound) {
		err = errors.Join(err, derr)
	}
	keys, lerr := h.cfg.Storage.List(ctx, prefix)
	if lerr != nil {
		return errors.Join(err, lerr)
	}
	for _, k := range keys {
		if derr := h.cfg.Storage.Delete(ctx, k); derr != nil && !errors.Is(derr, storage.ErrNotFound) {
			err = errors.Join(err, derr)
		}
	}
	return err
}

// destroyKeys crypto-shreds the disk or copy under prefix (see
// disk.Destroy); one already gone is no error.
func destroyKeys(ctx context.Context, be storage.Backend, prefix string) error {
	if err := disk.Destroy(ctx, be, prefix); err != nil && !errors.Is(err, disk.ErrNotFound) {
		return err
	}
	return nil
}
