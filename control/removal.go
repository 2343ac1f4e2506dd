package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"hostcrypt/control/store"
	"hostcrypt/disk"
	"hostcrypt/storage"
)

// Crash ordering of deletions and creations.
//
// A deletion first records itself: in one transaction the resource's record
// goes and a removal of its storage prefix is recorded. Only then are its
// objects touched (a snapshot's chunks that later snapshots share are handed
// over to them first, then the wrapped keys are destroyed, then the rest
// goes), and the removal record is dropped last. A crash anywhere leaves
// either the resource, whole and usable, or a removal record that the next
// start finishes. Never a resource that is listed but whose keys are gone.
//
// A creation records an intent before its first object and drops it in the
// transaction that records the new resource. The intent also holds the new
// resource's name, so that no other creation takes it meanwhile. A crash in
// between leaves an intent whose objects nobody uses; start-up lists them
// and host gc removes them. Nothing is removed at start on the strength of
// what the state does not say: a state directory that is not this
// storage's must not shred it.

// removalRoots are where a removal may lead: the prefixes of disks,
// snapshots and images, never anything else.
var removalRoots = []string{"disks", "snapshots", "images"}

func removable(prefix string) bool {
	return slices.ContainsFunc(removalRoots, func(root string) bool { return validPrefix(prefix, root) })
}

// addRemoval records, in a transaction that drops the resource's record,
// the removal of prefix.
func (h *Host) addRemoval(r *store.Records, prefix, what string, objectBytes int64) {
	r.Removals[prefix] = &store.Removal{What: what, Since: h.cfg.Now().UTC(), ObjectBytes: objectBytes}
}

// finishRemoval removes what a removal record names and then the record.
func (h *Host) finishRemoval(ctx context.Context, prefix string) error {
	r, err := h.load(ctx)
	if err != nil {
		return err
	}
	rm := r.Removals[prefix]
	if rm == nil {
		return nil
	}
	var counts map[string]handedOver
	if !removable(prefix) {
		// Only a hand-edited state gets here: leave storage alone.
		h.log.Error("a removal names a prefix that no resource lives under; dropping it and leaving storage as it is", "prefix", prefix, "what", rm.What)
	} else {
		if strings.HasPrefix(prefix, "snapshots/") {
			if counts, err = h.handOver(ctx, r, prefix, rm.ObjectBytes); err != nil {
				return fmt.Errorf("%s: handing its shared chunks to later snapshots: %w", rm.What, err)
			}
		}
		if err := h.removeObjects(ctx, prefix); err != nil {
			return fmt.Errorf("%s: removing its objects: %w", rm.What, err)
		}
	}
	if _, err := h.update(ctx, func(r *store.Records) error {
		delete(r.Removals, prefix)
		for name, c := range counts {
			if s := r.Snapshots[name]; s != nil {
				s.ChunksCopied += c.chunks
				s.ChunksShared -= c.chunks
				if c.used >= 0 {
					s.UsedBytes = c.used
				}
			}
		}
		return nil
	}); err != nil {
		return err
	}
	h.log.Info("objects removed", "what", rm.What, "prefix", prefix)
	return nil
}

// finishRemovals finishes every removal a crash cut short.
func (h *Host) finishRemovals(ctx context.Context) {
	r, err := h.load(ctx)
	if err != nil {
		h.log.Error("finishing deletions", "err", err)
		return
	}
	for _, p := range sortedKeys(r.Removals) {
		h.log.Info("finishing a deletion cut short", "what", r.Removals[p].What, "prefix", p)
		if err := h.finishRemoval(ctx, p); err != nil {
			h.log.Error("a deletion could not be finished; the next start tries again", "prefix", p, "err", err)
		}
	}
}

// handedOver is what a hand-over changed of one snapshot: chunks it now
// holds itself, and its new usage (-1: unknown).
type handedOver struct {
	chunks int64
	used   int64
}

// handOver gives every incremental snapshot that refers to a chunk of the
// snapshot under prefix its own copy (the first of them by time; later ones
// then refer to that copy) and rewrites their manifests. Each copy is made
// before the manifest that names it, and the old chunks stay until every
// manifest is rewritten, so an interrupted hand-over is simply done again.
func (h *Host) handOver(ctx context.Context, r *store.Records, prefix string, objBytes int64) (map[string]handedOver, error) {
	own := prefix + "/chunks/"
	var others []*store.Snapshot
	for _, o := range r.Snapshots {
		if o.Incremental && o.StoragePrefix != prefix {
			others = append(others, o)
		}
	}
	sort.Slice(others, func(i, j int) bool { return others[i].TimeCreated.Before(others[j].TimeCreated) })
	moved := map[string]string{} // old key -> new key
	counts := map[string]handedOver{}
	for _, o := range others {
		m, err := h.readManifest(ctx, o.StoragePrefix)
		if err != nil {
			return nil, err
		}
		c := handedOver{used: -1}
		changed := false
		for n, e := range m.Chunks {
			if !strings.HasPrefix(e.Key, own) {
				continue
			}
			nk, ok := moved[e.Key]
			if !ok {
				nk = o.StoragePrefix + "/chunks/" + n
				if err := copyObject(ctx, h.cfg.Storage, e.Key, nk, objBytes); err != nil {
					return nil, fmt.Errorf("handing chunk %s to snapshot %q: %w", n, o.Name, err)
				}
				moved[e.Key] = nk
				c.chunks++
			}
			e.Key = nk
			m.Chunks[n] = e
			changed = true
		}
		if changed {
			if err := h.writeManifest(ctx, o.StoragePrefix, m); err != nil {
				return nil, err
			}
			if u, err := h.cfg.Storage.Usage(ctx, o.StoragePrefix); err == nil {
				c.used = u
			}
			counts[o.Name] = c
		}
	}
	if len(moved) > 0 {
		h.log.Info("chunks handed over to later snapshots", "prefix", prefix, "chunks", len(moved))
	}
	return counts, nil
}

// nameTaken refuses a name that a resource of kind has, or that a
// creation in progress holds.
func nameTaken(r *store.Records, kind, name string) error {
	var exists bool
	switch kind {
	case "disk":
		_, exists = r.Disks[name]
	case "snapshot":
		_, exists = r.Snapshots[name]
	case "image":
		_, exists = r.Images[name]
	}
	if exists {
		return conflict("%s %q already exists; choose another name or delete it first", kind, name)
	}
	for _, it := range r.Intents {
		if it.Kind == kind && it.Name == name {
			return conflict("%s %q is being created (%s, started %s); choose another name", kind, name, it.What, it.Since.Format("2006-01-02T15:04:05Z"))
		}
	}
	return nil
}

// beginIntent records that the objects under prefix are being created for
// what, holding the name of the resource (kind, name) it makes, if any.
// check, if not nil, runs in the same transaction. done, which the caller
// defers, ends the creation's hold on the prefix in this host (host gc
// leaves a prefix alone while a creation holds it); the intent record
// itself goes in the transaction that records the new resource, or with
// abandonIntent.
func (h *Host) beginIntent(ctx context.Context, prefix, what, kind, name string, check func(r *store.Records) error) (done func(), err error) {
	release, err := h.claim(what, "intent/"+prefix)
	if err != nil {
		return nil, err
	}
	_, err = h.update(ctx, func(r *store.Records) error {
		if kind != "" {
			if err := nameTaken(r, kind, name); err != nil {
				return err
			}
		}
		if check != nil {
			if err := check(r); err != nil {
				return err
			}
		}
		r.Intents[prefix] = &store.Intent{What: what, Since: h.cfg.Now().UTC(), Kind: kind, Name: name, Host: h.hostTag()}
		return nil
	})
	if err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// abandonIntent removes what a failed creation made under prefix and drops
// its intent. A removal that fails leaves the intent: host gc finishes it.
func (h *Host) abandonIntent(ctx context.Context, prefix string) {
	ctx = context.WithoutCancel(ctx)
	if err := h.removeObjects(ctx, prefix); err != nil {
		h.log.Error("removing what a failed creation made; host gc removes it later", "prefix", prefix, "err", err)
		return
	}
	if _, err := h.update(ctx, func(r *store.Records) error {
		delete(r.Intents, prefix)
		return nil
	}); err != nil {
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

// deleteRecorded deletes a disk, snapshot or image by its records: drop
// takes the record out (or refuses) and names its prefix, the removal is
// recorded with it, then the objects go.
func (h *Host) deleteRecorded(ctx context.Context, kind, name string, drop func(r *store.Records) (prefix string, objBytes int64, err error)) error {
	var prefix string
	_, err := h.update(ctx, func(r *store.Records) error {
		p, ob, err := drop(r)
		if err != nil {
			return err
		}
		prefix = p
		if validPrefix(p, kind+"s") {
			h.addRemoval(r, p, kind+" "+name, ob)
		} else {
			prefix = ""
		}
		return nil
	})
	if err != nil {
		return err
	}
	h.log.Info(kind+" deleted", kind, name)
	if prefix == "" {
		// A damaged record: its prefix leads to no such resource's
		// objects, and following it could shred another resource. Only
		// the record went.
		h.log.Warn("deleted a record that names no objects of its kind; storage is left as it is (host gc lists what no record owns)", "kind", kind, "name", name)
		return nil
	}
	if err := h.finishRemoval(ctx, prefix); err != nil {
		return fmt.Errorf("%s %q is deleted, but %w; the next start of hostcryptd finishes the removal", kind, name, err)
	}
	return nil
}
