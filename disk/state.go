package disk

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"hostcrypt/internal/zeros"
	"hostcrypt/storage"
)

// Version 3 keeps a chunk's selectors in an authenticated selector state
// instead of a bare table (docs/FORMAT.md, "Selector state"). A state copy
// is
//
//	magic "HCSTATE3" (8) || generation (8, big-endian) || selectors (chunkBlocks) || MAC (32)
//
// padded with zeros to whole pages, and the MAC is HMAC-SHA256 under a key
// derived from the layer-1 data key over "HCS3" || volume id || chunk index
// (8) || the copy's bytes before the MAC. Each chunk has two copies; state
// of generation g is written into copy g mod 2 with one aligned write, made
// durable, and only then is the other copy zeroed. So a torn write leaves
// the previous copy valid, and once a state is durable no older one
// authenticates in the chunk any more: an edit of any byte of the newest
// copy is an integrity error, never a step back to the copy before.

const (
	stateMagic  = "HCSTATE3"
	stateMACLen = sha256.Size
	stateLabel  = "hostcrypt v3 selector state"
)

// stateLen is the length of a state copy before its padding.
func stateLen(chunkBlocks int) int { return 16 + chunkBlocks + stateMACLen }

var errBadState = errors.New("no copy of the chunk's selector state authenticates")

// stateMAC puts the MAC of a state copy whose bytes before the MAC are head
// into dst.
func (d *Disk) stateMAC(dst []byte, idx int64, head []byte) {
	h := hmac.New(sha256.New, d.selKey)
	var pre [4 + 16 + 8]byte
	copy(pre[:4], "HCS3")
	copy(pre[4:20], d.vol[:])
	binary.BigEndian.PutUint64(pre[20:], uint64(idx))
	h.Write(pre[:])
	h.Write(head)
	h.Sum(dst[:0])
}

// encodeState fills buf (stateBytes long) with the state copy of
// generation gen of chunk idx naming sel.
func (d *Disk) encodeState(buf []byte, idx int64, gen uint64, sel []byte) {
	clear(buf)
	copy(buf, stateMagic)
	binary.BigEndian.PutUint64(buf[8:16], gen)
	n := 16 + copy(buf[16:], sel)
	d.stateMAC(buf[n:n+stateMACLen], idx, buf[:n])
}

// decodeState checks copy i of chunk idx's selector state, held in buf
// (stateBytes long): ok is false unless it authenticates, belongs in copy
// i, and its padding is zero.
func (d *Disk) decodeState(buf []byte, idx int64, i int) (gen uint64, sel []byte, ok bool) {
	n := 16 + d.lay.chunkBlocks
	if string(buf[:8]) != stateMagic {
		return 0, nil, false
	}
	var mac [stateMACLen]byte
	d.stateMAC(mac[:], idx, buf[:n])
	if !hmac.Equal(mac[:], buf[n:n+stateMACLen]) || !zeros.Is(buf[n+stateMACLen:]) {
		return 0, nil, false
	}
	gen = binary.BigEndian.Uint64(buf[8:16])
	if gen == 0 || int(gen%2) != i {
		return 0, nil, false
	}
	return gen, buf[16:n], true
}

// pickState returns the newest copy of the selector state that
// authenticates in meta, the chunk's bytes from offset 0 through both
// copies.
func (d *Disk) pickState(meta []byte, idx int64) (gen uint64, sel []byte, err error) {
	for i := range 2 {
		off := d.lay.stateOffset(i)
		if g, s, ok := d.decodeState(meta[off:off+d.lay.stateBytes], idx, i); ok && g > gen {
			gen, sel = g, s
		}
	}
	if gen == 0 {
		return 0, nil, errBadState
	}
	return gen, sel, nil
}

// commitState makes fill's selectors the chunk's persisted state: it
// writes them as the next generation into its copy with one write, makes
// that durable, and zeroes the other copy, which no longer authenticates
// then (the zeros reach the device with the chunk's next sync). fill gets
// a buffer of chunkBlocks bytes to fill. The caller holds c.syncMu. Any
// failure fences the disk: the device may hold either state.
func (d *Disk) commitState(idx int64, st *chunkState, fill func(sel []byte)) error {
	bp := d.getBuf(int(d.lay.stateBytes) + d.lay.chunkBlocks)
	defer d.putBuf(bp)
	buf, sel := (*bp)[:d.lay.stateBytes], (*bp)[d.lay.stateBytes:]
	fill(sel)
	gen := st.gen + 1
	d.encodeState(buf, idx, gen, sel)
	i := int(gen % 2)
	if _, err := st.obj.WriteAt(buf, d.lay.stateOffset(i)); err != nil {
		d.fence(idx, "write of selectors", err)
		return err
	}
	if err := st.obj.Sync(); err != nil {
		d.fence(idx, "sync of selectors", err)
		return err
	}
	st.gen = gen
	clear(buf)
	if _, err := st.obj.WriteAt(buf, d.lay.stateOffset(1-i)); err != nil {
		d.fence(idx, "write of selectors", err)
		return err
	}
	return nil
}

// checkBlank reports whether a version 3 chunk whose header is all zeros
// is blank: a creation cut short before its header was durable. A chunk is
// created by writing its header and first state and making them durable
// before any block is written into it, so a blank chunk is zeros through
// and through; one with anything else in it (a zeroed header and state
// over data) is an integrity error, not a chunk to read as zeros.
func (d *Disk) checkBlank(obj storage.Chunk, meta []byte) error {
	if !zeros.Is(meta) {
		return fmt.Errorf("the chunk header is zero but its selector state or entries are not")
	}
	bp := d.getBuf(1 << 20)
	defer d.putBuf(bp)
	end := d.lay.objectBytes()
	for off := d.lay.pageBase; off < end; {
		b := (*bp)[:min(int64(len(*bp)), end-off)]
		if _, err := obj.ReadAt(b, off); err != nil {
			return err
		}
		if !zeros.Is(b) {
			return fmt.Errorf("the chunk header and selector state are zero but the chunk holds data at %d", off)
		}
		off += int64(len(b))
	}
	return nil
}
