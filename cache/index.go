package cache

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"slices"

	"hostcrypt/storage"
)

// indexMagic starts the dirty-page index; its last two bytes are the
// layout version.
const indexMagic = "HCCIDX01"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// entry names one dirty page in the index: page n of object key is in
// slot of the data file.
type entry struct {
	key    string
	n      int64
	slot   int32
	lo, hi uint16 // the dirty extent in the page
}

// encodeIndex lays out the index (see the package comment): the magic, the
// number of objects, then per object its key and its pages, and a CRC-32C
// of all that.
func encodeIndex(es []entry) []byte {
	slices.SortFunc(es, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.key, b.key), cmp.Compare(a.n, b.n))
	})
	var groups [][]entry
	for i := 0; i < len(es); {
		j := i
		for j < len(es) && es[j].key == es[i].key {
			j++
		}
		groups = append(groups, es[i:j])
		i = j
	}
	b := []byte(indexMagic)
	b = binary.BigEndian.AppendUint32(b, uint32(len(groups)))
	for _, g := range groups {
		b = binary.BigEndian.AppendUint16(b, uint16(len(g[0].key)))
		b = append(b, g[0].key...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(g)))
		for _, e := range g {
			b = binary.BigEndian.AppendUint64(b, uint64(e.n))
			b = binary.BigEndian.AppendUint32(b, uint32(e.slot))
			b = binary.BigEndian.AppendUint16(b, e.lo)
			b = binary.BigEndian.AppendUint16(b, e.hi)
		}
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

var errBadIndex = errors.New("damaged dirty-page index")

func decodeIndex(b []byte) ([]entry, error) {
	if len(b) < len(indexMagic)+8 || string(b[:len(indexMagic)]) != indexMagic {
		return nil, fmt.Errorf("%w: bad header", errBadIndex)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch", errBadIndex)
	}
	r := bytes.NewReader(body[len(indexMagic):])
	var ng uint32
	if err := binary.Read(r, binary.BigEndian, &ng); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadIndex, err)
	}
	var es []entry
	for range ng {
		var kl uint16
		if err := binary.Read(r, binary.BigEndian, &kl); err != nil {
			return nil, fmt.Errorf("%w: %w", errBadIndex, err)
		}
		key := make([]byte, kl)
		if _, err := io.ReadFull(r, key); err != nil {
			return nil, fmt.Errorf("%w: %w", errBadIndex, err)
		}
		if err := storage.ValidKey(string(key)); err != nil {
			return nil, fmt.Errorf("%w: %w", errBadIndex, err)
		}
		var np uint32
		if err := binary.Read(r, binary.BigEndian, &np); err != nil {
			return nil, fmt.Errorf("%w: %w", errBadIndex, err)
		}
		for range np {
			var rec struct {
				N      uint64
				Slot   uint32
				Lo, Hi uint16
			}
			if err := binary.Read(r, binary.BigEndian, &rec); err != nil {
				return nil, fmt.Errorf("%w: %w", errBadIndex, err)
			}
			if rec.N >= 1<<50 || rec.Slot >= 1<<31 || rec.Lo >= rec.Hi || rec.Hi > PageSize {
				return nil, fmt.Errorf("%w: page %d slot %d extent %d-%d out of range", errBadIndex, rec.N, rec.Slot, rec.Lo, rec.Hi)
			}
			es = append(es, entry{key: string(key), n: int64(rec.N), slot: int32(rec.Slot), lo: rec.Lo, hi: rec.Hi})
		}
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errBadIndex, r.Len())
	}
	return es, nil
}

// commit makes every completed write durable in the cache: it pins the
// slots of the dirty pages, fsyncs the data file, then replaces the index
// atomically with one naming those slots. Slots named by the previous
// index stay pinned until then, so the index on disk only ever names slots
// holding its pages.
func (c *Cache) commit() error {
	if c.mode != ReadWrite {
		return nil
	}
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.mu.Lock()
	if c.changes == c.committed || c.dirty == 0 && len(c.indexed) == 0 {
		c.mu.Unlock()
		return nil // the committed index is up to date
	}
	changes := c.changes
	var es []entry
	for _, o := range c.objs {
		for _, pg := range o.dirty {
			es = append(es, entry{key: o.key, n: pg.n, slot: pg.slot, lo: uint16(pg.lo), hi: uint16(pg.hi)})
			c.slots[pg.slot].inPending = true
		}
	}
	c.mu.Unlock()

	err := c.data.Sync()
	if err == nil {
		err = c.writeIndex(es)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		for _, e := range es {
			st := &c.slots[e.slot]
			st.inPending = false
			if st.free() {
				c.free = append(c.free, e.slot)
			}
		}
		return fmt.Errorf("cache %s: commit dirty-page index: %w", c.dir, err)
	}
	c.committed = changes
	old := c.indexed
	for _, s := range old {
		c.slots[s].inIndex = false
	}
	c.indexed = make([]int32, 0, len(es))
	for _, e := range es {
		st := &c.slots[e.slot]
		st.inPending = false
		st.inIndex = true
		c.indexed = append(c.indexed, e.slot)
	}
	for _, s := range old {
		if st := &c.slots[s]; st.free() {
			c.free = append(c.free, s)
		}
	}
	return nil
}

// writeIndex replaces the index with es: a temporary file written and
// fsynced, renamed over the index, and the directory fsynced. An empty
// index is removed instead.
func (c *Cache) writeIndex(es []entry) error {
	if len(es) == 0 {
		if err := c.d.Remove(indexName); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return c.d.Sync()
	}
	// Whatever has the temporary name (a file left by a crash, or
	// anything else) is removed, and the new file made in its place.
	if err := c.d.Remove(indexTmpName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := c.d.OpenFile(indexTmpName, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		return err
	}
	_, err = f.Write(encodeIndex(es))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = c.d.Rename(indexTmpName, indexName)
	}
	if err == nil {
		err = c.d.Sync()
	}
	return err
}

// recover writes back the dirty pages named by an index left in the
// cache directory, syncs them in the remote, and then empties the
// directory. Run again after a crash in the middle, it does the same
// writes again, which is harmless.
func (c *Cache) recover(ctx context.Context) error {
	b, err := c.d.ReadFile(indexName)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("cache directory %s: %w", c.dir, err)
	default:
		es, err := decodeIndex(b)
		if err != nil {
			return fmt.Errorf("cache directory %s: %w; move the directory away to start with an empty cache (its unflushed writes are then lost)", c.dir, err)
		}
		if err := c.writeBackIndex(ctx, es); err != nil {
			return fmt.Errorf("cache directory %s: writing back %d dirty pages left by a crash: %w", c.dir, len(es), err)
		}
		c.log.Info("cache recovered: dirty pages left by a crash written back", "dir", c.dir, "pages", len(es))
		if err := c.d.Remove(indexName); err != nil {
			return fmt.Errorf("cache directory %s: %w", c.dir, err)
		}
		if err := c.d.Sync(); err != nil {
			return fmt.Errorf("cache directory %s: %w", c.dir, err)
		}
	}
	// Clean pages of an earlier run may be stale (the disk may have been
	// used without this cache since), so a cache always starts empty.
	for _, name := range []string{indexTmpName, dataName} {
		if err := c.d.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cache directory %s: %w", c.dir, err)
		}
	}
	return nil
}

func (c *Cache) writeBackIndex(ctx context.Context, es []entry) error {
	f, err := c.d.OpenFile(dataName, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, PageSize)
	for i := 0; i < len(es); {
		j := i
		for j < len(es) && es[j].key == es[i].key {
			j++
		}
		rc, err := c.remote.OpenChunk(ctx, es[i].key, true)
		if err != nil {
			return err
		}
		for _, e := range es[i:j] {
			p := buf[e.lo:e.hi]
			if _, err := f.ReadAt(p, int64(e.slot)*PageSize+int64(e.lo)); err != nil {
				rc.Close()
				return fmt.Errorf("slot %d of %s page %d: %w", e.slot, e.key, e.n, err)
			}
			if _, err := rc.WriteAt(p, e.n*PageSize+int64(e.lo)); err != nil {
				rc.Close()
				return err
			}
		}
		err = rc.Sync()
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		i = j
	}
	return nil
}
