package disk

import (
	"bytes"
	"fmt"

	hcrypto "hostcrypt/crypto"
)

// BlockView is one block as the engine stores it, for a person looking at
// what storage holds: where its current version lies and its sealed unit
// taken apart, one LayerView per encryption layer. It holds ciphertext
// only: the innermost layer is never opened here.
type BlockView struct {
	// Block is the absolute block index, Chunk the chunk it is in and
	// Object that chunk's object key in the backend.
	Block  int64
	Chunk  int64
	Object string
	Format int
	// Written is false for a block that was never written (or was
	// discarded, or is all zeros): it is a hole and nothing is stored.
	Written bool
	// Slot is "A" or "B", the slot holding the current version, and
	// Offset where its ciphertext lies in the chunk object (the page in
	// formats 2 and 3, the whole sealed unit in format 1); EntryOffset is
	// where its nonces and tags lie (formats 2 and 3).
	Slot        string
	Offset      int64
	EntryOffset int64
	// Persisted says whether the chunk's selector on the device names this
	// version already (false until the next sync: the entry is then still
	// only in memory, and a crash would bring back the previous version).
	Persisted bool
	// Layers are outermost first: the unit as stored, then, for double
	// encryption, layer 1's sealed unit as layer 2 opens it.
	Layers []LayerView
}

// LayerView is one layer's sealed unit: nonce || ciphertext || tag.
type LayerView struct {
	Layer      int
	Algorithm  string
	Nonce      []byte
	Ciphertext []byte
	Tag        []byte
}

// layerTagSize is the tag of both layers' AEADs.
const layerTagSize = 16

func splitUnit(layer int, alg hcrypto.Algorithm, unit []byte) LayerView {
	n := hcrypto.LayerNonceSize
	return LayerView{Layer: layer, Algorithm: string(alg),
		Nonce:      bytes.Clone(unit[:n]),
		Ciphertext: bytes.Clone(unit[n : len(unit)-layerTagSize]),
		Tag:        bytes.Clone(unit[len(unit)-layerTagSize:])}
}

// InspectBlock returns the block holding byte off as the engine stores it.
// It reads the current version's ciphertext from the backend as a read
// does (through the host cache under the engine, if any) and opens the
// outer layer of a doubly encrypted disk to show layer 1's sealed unit
// inside it, which is ciphertext too. It fails like a read: on a closed
// disk, after the lease ends, or when the stored unit fails
// authentication (an integrity alarm).
func (d *Disk) InspectBlock(off int64) (*BlockView, error) {
	if off < 0 || off >= d.size.Load() {
		return nil, fmt.Errorf("disk %s: offset %d is outside the disk (size %d): %w", d.prefix, off, d.size.Load(), ErrRange)
	}
	b := off / BlockSize
	cb := int64(d.lay.chunkBlocks)
	ci, k := b/cb, int(b%cb)
	v := &BlockView{Block: b, Chunk: ci, Object: chunkKey(d.prefix, ci), Format: d.lay.format}
	held := d.lockBlocks(b, b+1, false)
	defer held.unlock()
	if err := d.usable(b); err != nil {
		return nil, err
	}
	st, err := d.stateOf(d.chunk(ci), false, false)
	if err != nil {
		return nil, d.ioErr(b, err)
	}
	if st == nil {
		return v, nil
	}
	slot, ok, err := slotOf(st.sel[k])
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrIntegrity, err)
		d.alarm(b, 0, err)
		return nil, d.ioErr(b, err)
	}
	if !ok {
		return v, nil
	}
	v.Written, v.Slot, v.Persisted = true, string(rune('A'+slot)), st.psel[k] == st.sel[k]
	sc := d.getScratch()
	defer d.putScratch(sc)
	unit := make([]byte, d.lay.slotSize)
	if d.lay.format == formatV1 {
		v.Offset = d.lay.slotOffset(slot, k)
		if _, err := st.obj.ReadAt(unit, v.Offset); err != nil {
			return nil, d.ioErr(b, err)
		}
	} else {
		v.Offset, v.EntryOffset = d.lay.pageOffset(slot, k), d.lay.entryOffset(slot, k)
		page := make([]byte, BlockSize)
		if _, err := st.obj.ReadAt(page, v.Offset); err != nil {
			return nil, d.ioErr(b, err)
		}
		es := d.lay.entrySize
		d.lay.join(unit, page, st.ent[k*es:(k+1)*es])
	}
	if len(d.layers) == 1 {
		v.Layers = []LayerView{splitUnit(1, d.layers[0].Algorithm(), unit)}
		return v, nil
	}
	inner, err := sc.open[1].Open(nil, unit, blockAD(&sc.ad, &d.vol, uint64(b), 2))
	if err != nil {
		d.alarm(b, 2, err)
		return nil, d.ioErr(b, err)
	}
	v.Layers = []LayerView{splitUnit(2, d.layers[1].Algorithm(), unit), splitUnit(1, d.layers[0].Algorithm(), inner)}
	return v, nil
}
