package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"hostcrypt/storage"
)

// Ownership of a disk. A disk's lock object (LockKey) holds, besides the
// lock, a record of its owner: the host and VM that hold the lock, the
// client instance that writes for them, and the disk's ownership epoch.
// Taking a disk runs in the order RBD uses: the lock first (refused while
// a lease runs), then, when the last owner did not let the disk go
// cleanly, its client instance is blocklisted and this client waits for
// the OSD map that says so, then the epoch is bumped, and only then is
// anything written. The epoch stays when the same host takes its own disk
// again (a restarted daemon) with nobody else in between, and grows
// otherwise; a host cache filled under one epoch is written back only
// under that same epoch.

// BlocklistExpiry is how long a fenced client instance stays blocklisted:
// hours, so that a host frozen for long still cannot write when it wakes.
const BlocklistExpiry = 12 * time.Hour

// Fencer fences client instances (storage/rados.Backend is one).
type Fencer interface {
	// Addr is this client instance's address, as a blocklist names it.
	Addr() (string, error)
	// Blocklist fences the instance at addr for expire, and returns once
	// this client has the OSD map that carries the entry.
	Blocklist(ctx context.Context, addr string, expire time.Duration) error
}

// EpochGuarded is a store that guards a disk's chunk writes by its
// ownership epoch on the server (storage/rados.Backend): the store
// WithEpoch returns has chunks whose writes and zeros the server refuses,
// with an error wrapping syscall.EIO, once a writer of a newer epoch wrote
// the same chunk, and creates chunk objects stamped with its epoch. It
// stops a writer of an older epoch that was not fenced (a restarted host's
// leftover client, a fence that did not happen). With a floor (the owner
// record's Floor), a chunk object below it found at opening (created by
// such a writer after the takeover that set the floor) is removed, never
// read.
type EpochGuarded interface {
	WithEpoch(epoch, floor uint64) storage.Backend
}

// ChunkStamper is a store WithEpoch returned that can stamp every chunk
// object of a disk with its epoch at once, so that a writer of an older
// epoch is refused on all of them and not only on those the new owner
// wrote since: a taker does so when it took the disk from a writer that
// did not let it go.
type ChunkStamper interface {
	StampChunks(ctx context.Context, prefix string) (int, error)
}

// Owner is a disk's owner record.
type Owner struct {
	Host string `json:"host"`
	VM   string `json:"vm"`
	// Op, for a disk taken by an operation on it while no VM runs it (a
	// snapshot, a copy, a resize, a re-wrap ...), says which; VM is
	// empty then.
	Op    string `json:"op,omitempty"`
	Addr  string `json:"addr"`
	Epoch uint64 `json:"epoch"`
	// Released says the owner let the disk go cleanly (its VM stopped):
	// its client writes no more, and nobody needs to fence it.
	Released bool `json:"released,omitempty"`
	// Floor is the epoch of the disk's last takeover from a writer that
	// did not let it go, recorded once every chunk object of the disk was
	// stamped with it (RaiseFloor): a chunk object below it was created
	// after that by a writer of an older epoch. It never goes down, and
	// is at most Epoch; 0 until the first such takeover.
	Floor uint64 `json:"floor,omitempty"`
}

// Ownership is what Own did.
type Ownership struct {
	Owner
	// Fenced is the previous owner, when its client was blocklisted.
	Fenced *Owner
}

// ReadOwner returns disk id's owner record and its version; a disk never
// owned has a zero record.
func ReadOwner(ctx context.Context, st storage.Backend, id string) (Owner, storage.Version, error) {
	raw, v, err := st.ReadMetaVersion(ctx, LockKey(id))
	if errors.Is(err, storage.ErrNotFound) {
		return Owner{}, storage.NoVersion, nil
	}
	if err != nil {
		return Owner{}, storage.NoVersion, fmt.Errorf("reading the owner of disk %s: %w", id, err)
	}
	if len(raw) == 0 {
		return Owner{}, v, nil // the lock created the object
	}
	o, err := parseOwner(raw)
	if err != nil {
		return Owner{}, storage.NoVersion, fmt.Errorf("the owner record of disk %s (%s) is damaged: %v; "+
			"once no host runs the disk, replace it with {\"epoch\":N}, N the highest hostcrypt.epoch xattr of the disk's chunk objects "+
			"(never remove it: epochs would start again below the chunks' and every write would fail)", id, LockKey(id), err)
	}
	return o, v, nil
}

// parseOwner decodes an owner record and checks what a writer relies on:
// a floor above the epoch would have the writer remove its own chunks.
func parseOwner(raw []byte) (Owner, error) {
	var o Owner
	if err := json.Unmarshal(raw, &o); err != nil {
		return Owner{}, err
	}
	if o.Floor > o.Epoch {
		return Owner{}, fmt.Errorf("its floor %d is above its epoch %d", o.Floor, o.Epoch)
	}
	return o, nil
}

// Own makes host's VM vm the owner of disk id, whose lock the caller
// holds: it fences the last owner's client unless that one released the
// disk or is this very client, bumps the epoch unless the last owner was
// this host, and records the new owner by compare-and-swap. Nothing of
// the disk may be written before Own returns.
func Own(ctx context.Context, st storage.Backend, f Fencer, id, host, vm string) (Ownership, error) {
	return OwnAs(ctx, st, f, id, Owner{Host: host, VM: vm})
}

// OwnAs is Own for the holder who names: its Host, and its VM or its Op.
func OwnAs(ctx context.Context, st storage.Backend, f Fencer, id string, who Owner) (Ownership, error) {
	host := who.Host
	prev, ver, err := ReadOwner(ctx, st, id)
	if err != nil {
		return Ownership{}, err
	}
	addr, err := f.Addr()
	if err != nil {
		return Ownership{}, err
	}
	own := Ownership{Owner: Owner{Host: host, VM: who.VM, Op: who.Op, Addr: addr, Epoch: prev.Epoch, Floor: prev.Floor}}
	if prev.Addr != "" && !prev.Released && prev.Addr != addr {
		if err := f.Blocklist(ctx, prev.Addr, BlocklistExpiry); err != nil {
			return Ownership{}, fmt.Errorf("fencing the last writer of disk %s (host %s, client %s): %w", id, prev.Host, prev.Addr, err)
		}
		p := prev
		own.Fenced = &p
	}
	if prev.Host != host || prev.Epoch == 0 {
		own.Epoch++
	}
	raw, _ := json.Marshal(own.Owner)
	if _, err := st.WriteMetaIf(ctx, LockKey(id), raw, ver); err != nil {
		return Ownership{}, fmt.Errorf("recording the owner of disk %s: %w", id, err)
	}
	return own, nil
}

// RaiseFloor records o's epoch as disk id's floor, once o, which took the
// disk from a writer that did not let it go, stamped every chunk object of
// the disk with its epoch; it returns the record as written. It fails,
// wrapping ErrLeaseLost, when the record names another owner or epoch by
// now. Until it ran, the record keeps the floor before, so a taker that
// dies in between leaves a record a later taker fences and stamps again.
func RaiseFloor(ctx context.Context, st storage.Backend, id string, o Owner) (Owner, error) {
	cur, ver, err := ReadOwner(ctx, st, id)
	if err != nil {
		return Owner{}, err
	}
	if cur.Addr != o.Addr || cur.Epoch != o.Epoch {
		return Owner{}, fmt.Errorf("%w: disk %s is owned by host %s under epoch %d now (this writer had epoch %d)", ErrLeaseLost, id, cur.Host, cur.Epoch, o.Epoch)
	}
	if cur.Floor >= cur.Epoch {
		return cur, nil
	}
	cur.Floor = cur.Epoch
	raw, _ := json.Marshal(cur)
	if _, err := st.WriteMetaIf(ctx, LockKey(id), raw, ver); err != nil {
		return Owner{}, fmt.Errorf("recording the epoch floor of disk %s: %w", id, err)
	}
	return cur, nil
}

// Disown records that o let disk id go cleanly. It changes nothing when
// the record names another owner or epoch by now.
func Disown(ctx context.Context, st storage.Backend, id string, o Owner) error {
	cur, ver, err := ReadOwner(ctx, st, id)
	if err != nil {
		return err
	}
	if cur.Addr != o.Addr || cur.Epoch != o.Epoch {
		return nil
	}
	cur.Released = true
	raw, _ := json.Marshal(cur)
	_, err = st.WriteMetaIf(ctx, LockKey(id), raw, ver)
	return err
}

// CheckOwner fails, wrapping ErrLeaseLost, unless disk id's owner record
// still names o's client and epoch.
func CheckOwner(ctx context.Context, st storage.Backend, id string, o Owner) error {
	cur, _, err := ReadOwner(ctx, st, id)
	if err != nil {
		return err
	}
	if cur.Addr != o.Addr || cur.Epoch != o.Epoch {
		return fmt.Errorf("%w: disk %s is owned by host %s under epoch %d now (this writer had epoch %d)", ErrLeaseLost, id, cur.Host, cur.Epoch, o.Epoch)
	}
	return nil
}
