package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"hostcrypt/storage"
)

// RecordsKey is the object a Shared store keeps the records in.
const RecordsKey = "cluster/records.json"

// Shared is a Store in a storage backend that several hosts use at once (a
// RADOS pool): the records are one metadata object, and a commit replaces
// it by compare-and-swap on the object's version
// (storage.Backend.WriteMetaIf), so that of two hosts committing from one
// version exactly one succeeds and the other runs its transaction again on
// what the first wrote. Every host reads the same records.
//
// It holds no secrets: a shared store is readable by its operator and by
// every host, so the disk encryption sets' credentials stay in each host's
// own Secrets.
type Shared struct {
	be  storage.Backend
	key string
}

var _ Store = (*Shared)(nil)

// NewShared returns the store of the records in be (RecordsKey). It does
// not own be: Close leaves it open.
func NewShared(be storage.Backend) *Shared { return &Shared{be: be, key: RecordsKey} }

// Load returns the records last committed; none yet is empty records at
// NoVersion.
func (s *Shared) Load(ctx context.Context) (*Records, Version, error) {
	raw, v, err := s.be.ReadMetaVersion(ctx, s.key)
	if errors.Is(err, storage.ErrNotFound) {
		return NewRecords(), NoVersion, nil
	}
	if err != nil {
		return nil, NoVersion, fmt.Errorf("reading the shared records (%s): %w", s.key, err)
	}
	var f stateFile
	f.Records = &Records{}
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, NoVersion, fmt.Errorf("the shared records (%s) are damaged: %w; no host changes them until they are restored from a copy", s.key, err)
	}
	if f.Version > formatVersion {
		return nil, NoVersion, fmt.Errorf("the shared records (%s) are of format %d, newer than this hostcryptd reads (%d); upgrade this host", s.key, f.Version, formatVersion)
	}
	if len(f.Credentials) > 0 {
		// Never written by a host: someone put secrets where every host
		// and the storage operator read them.
		return nil, NoVersion, fmt.Errorf("the shared records (%s) hold credentials, which never belong in shared storage; remove them (and give the sets new identities)", s.key)
	}
	f.Records.fill()
	return f.Records, Version(v), nil
}

// Commit writes r if the object is still at version base (or, at
// NoVersion, does not exist yet).
func (s *Shared) Commit(ctx context.Context, base Version, r *Records) (Version, error) {
	if err := ctx.Err(); err != nil {
		return NoVersion, err
	}
	raw, err := json.Marshal(stateFile{Version: formatVersion, Records: r})
	if err != nil {
		return NoVersion, err
	}
	nv, err := s.be.WriteMetaIf(ctx, s.key, raw, storage.Version(base))
	if errors.Is(err, storage.ErrConflict) {
		return NoVersion, fmt.Errorf("%w (%v)", ErrConflict, err)
	}
	if err != nil {
		return NoVersion, fmt.Errorf("writing the shared records (%s): %w", s.key, err)
	}
	return Version(nv), nil
}

// Close does nothing: the backend is the caller's.
func (s *Shared) Close() error { return nil }
