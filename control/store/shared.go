package store

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

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
// own Secrets (and on hosts with a key store identity there are none).
//
// With a record key (WithRecordKey; the host group's, from the key store,
// never in the pool) every record is sealed: the object carries, beside
// the records, an HMAC-SHA256 of each one ("seals"), bound to its kind and
// name, and Load refuses records whose seals are missing or do not match
// (ErrTampered, naming them). Whoever writes the pool without the key can
// delete the records or put back an older copy of the whole object, but
// not change, add or move one record unnoticed: a customer-managed disk
// cannot be made platform-managed, nor a set's key switched.
type Shared struct {
	be  storage.Backend
	key string
	// sealKey is the record key of host group group; nil: no seals are
	// written or checked, and records that carry seals are refused (see
	// Load).
	sealKey []byte
	group   string
	// adopt accepts records that carry no seal at all (written before
	// seals, by an older version); the next commit seals them.
	adopt bool

	// verified is the SHA-256 of the records object last found sealed
	// right (or written here): the same bytes again are not checked
	// again, record by record.
	mu       sync.Mutex
	verified [sha256.Size]byte
}

var _ Store = (*Shared)(nil)

// SharedOption configures a Shared store.
type SharedOption func(*Shared)

// WithRecordKey seals every record with key, host group group's record key
// (see Shared). The store keeps key; the caller wipes it after Close.
func WithRecordKey(group string, key []byte) SharedOption {
	return func(s *Shared) { s.group, s.sealKey = group, key }
}

// AdoptUnsealed lets a store with a record key load records that carry no
// seal at all, as an older version wrote them, so that its next commit
// (or Adopt) seals them. Whoever could write the pool meanwhile could have
// changed them: an operator adopts records once, after checking them.
func AdoptUnsealed() SharedOption { return func(s *Shared) { s.adopt = true } }

// NewShared returns the store of the records in be (RecordsKey). It does
// not own be: Close leaves it open.
func NewShared(be storage.Backend, opts ...SharedOption) *Shared {
	s := &Shared{be: be, key: RecordsKey}
	for _, o := range opts {
		o(s)
	}
	return s
}

// ErrTampered is wrapped by Load's error when records fail their seals.
var ErrTampered = errors.New("the shared records fail their integrity check")

// Members of the records object that are not records.
var notRecords = map[string]bool{"version": true, "generation": true, "credentials": true, "seals": true, "sealedFor": true}

// kindNames name the records' kinds, by their member, in errors.
var kindNames = map[string]string{
	"disks": "disk", "vms": "VM", "diskEncryptionSets": "disk encryption set", "snapshots": "snapshot",
	"images": "image", "intents": "intent", "removals": "removal", "identities": "user-assigned identity",
	"subscriptions": "subscription", "galleries": "gallery", "galleryImages": "gallery image",
	"galleryImageVersions": "gallery image version",
}

// recordName is how an error names record name of member kind.
func recordName(kind, name string) string {
	k := kindNames[kind]
	if k == "" {
		k = kind
	}
	return fmt.Sprintf("%s %q", k, name)
}

// seal is the seal of record raw, kept under name of member kind.
func (s *Shared) seal(kind, name string, raw []byte) string {
	m := hmac.New(sha256.New, s.sealKey)
	m.Write([]byte("hostcrypt shared record seal v1\x00"))
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write([]byte(name))
	m.Write([]byte{0})
	m.Write(raw)
	return base64.RawStdEncoding.EncodeToString(m.Sum(nil))
}

// records splits a records object's members into each record's bytes
// exactly as written, by "KIND/NAME".
func records(top map[string]json.RawMessage) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	for kind, raw := range top {
		if notRecords[kind] {
			continue
		}
		var entries map[string]json.RawMessage
		if err := json.Unmarshal(raw, &entries); err != nil {
			return nil, fmt.Errorf("member %q is not a map of records: %w", kind, err)
		}
		for name, e := range entries {
			out[kind+"/"+name] = e
		}
	}
	return out, nil
}

// Load returns the records last committed; none yet is empty records at
// NoVersion.
func (s *Shared) Load(ctx context.Context) (*Records, Version, error) {
	r, v, _, err := s.load(ctx)
	return r, v, err
}

// load is Load, telling also whether the records were adopted unsealed.
func (s *Shared) load(ctx context.Context) (*Records, Version, bool, error) {
	raw, v, err := s.be.ReadMetaVersion(ctx, s.key)
	if errors.Is(err, storage.ErrNotFound) {
		return NewRecords(), NoVersion, false, nil
	}
	if err != nil {
		return nil, NoVersion, false, fmt.Errorf("reading the shared records (%s): %w", s.key, err)
	}
	damaged := func(err error) error {
		return fmt.Errorf("the shared records (%s) are damaged: %w; no host changes them until they are restored from a copy", s.key, err)
	}
	var f stateFile
	f.Records = &Records{}
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, NoVersion, false, damaged(err)
	}
	if f.Version > formatVersion {
		return nil, NoVersion, false, fmt.Errorf("the shared records (%s) are of format %d, newer than this hostcryptd reads (%d); upgrade this host", s.key, f.Version, formatVersion)
	}
	if len(f.Credentials) > 0 {
		// Never written by a host: someone put secrets where every host
		// and the storage operator read them.
		return nil, NoVersion, false, fmt.Errorf("the shared records (%s) hold credentials, which never belong in shared storage; remove them (and give the sets new identities)", s.key)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, NoVersion, false, damaged(err)
	}
	var seals map[string]string
	if rs, ok := top["seals"]; ok {
		if err := json.Unmarshal(rs, &seals); err != nil {
			return nil, NoVersion, false, fmt.Errorf("%w: the seals of %s are not a map: %v; put back a copy of the object or restore the seals", ErrTampered, s.key, err)
		}
	}
	if s.sealKey == nil {
		if len(seals) > 0 {
			return nil, NoVersion, false, fmt.Errorf("the shared records (%s) are sealed, and this host has no record key to check or keep the seals: start hostcryptd with --host-token-file (its host identity in the key store), as every host on this pool", s.key)
		}
		f.Records.fill()
		return f.Records, Version(v), false, nil
	}
	var group string
	if g, ok := top["sealedFor"]; ok && len(seals) > 0 && json.Unmarshal(g, &group) == nil && group != s.group {
		// Not a proof of anything (the name is not sealed): a better
		// word for a host of another group than "every record changed".
		return nil, NoVersion, false, fmt.Errorf("%w: %s is sealed by the hosts of group %q, and this host's identity is of group %q: give it a host identity of group %q (hostcrypt identity create --type Host --host-group %s)",
			ErrTampered, s.key, group, s.group, group, group)
	}
	sum := sha256.Sum256(raw)
	s.mu.Lock()
	known := sum == s.verified
	s.mu.Unlock()
	if known {
		f.Records.fill()
		return f.Records, Version(v), false, nil
	}
	recs, err := records(top)
	if err != nil {
		return nil, NoVersion, false, fmt.Errorf("%w: %s: %v", ErrTampered, s.key, err)
	}
	adopted := false
	if len(seals) == 0 && len(recs) > 0 {
		if !s.adopt {
			return nil, NoVersion, false, fmt.Errorf("%w: %s holds %d records and no seal: written by a hostcryptd older than record seals, or stripped of its seals by someone who writes the pool; check the records (hostcrypt disk list, des list) and start one host once with --adopt-unsealed-records to seal them", ErrTampered, s.key, len(recs))
		}
		adopted = true
	} else {
		var bad []string
		for id, e := range recs {
			kind, name, _ := strings.Cut(id, "/")
			want, ok := seals[id]
			switch {
			case !ok:
				bad = append(bad, recordName(kind, name)+" has no seal (added outside hostcryptd)")
			case !hmac.Equal([]byte(want), []byte(s.seal(kind, name, e))):
				bad = append(bad, recordName(kind, name)+" does not match its seal (changed outside hostcryptd)")
			}
		}
		for id := range seals {
			if _, ok := recs[id]; !ok {
				kind, name, _ := strings.Cut(id, "/")
				bad = append(bad, recordName(kind, name)+" is sealed but gone (removed outside hostcryptd)")
			}
		}
		if len(bad) > 0 {
			sort.Strings(bad)
			return nil, NoVersion, false, fmt.Errorf("%w (%s): %s; no host uses or changes the records until each is put back as it was, or the object restored from a copy", ErrTampered, s.key, strings.Join(bad, "; "))
		}
		s.remember(sum)
	}
	f.Records.fill()
	return f.Records, Version(v), adopted, nil
}

// encode is the records object of r: the records, their format version,
// and with a record key the seal of each.
func (s *Shared) encode(r *Records) ([]byte, error) {
	raw, err := json.Marshal(stateFile{Version: formatVersion, Records: r})
	if err != nil || s.sealKey == nil {
		return raw, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, err
	}
	recs, err := records(top)
	if err != nil {
		return nil, err
	}
	seals := make(map[string]string, len(recs))
	for id, e := range recs {
		kind, name, _ := strings.Cut(id, "/")
		seals[id] = s.seal(kind, name, e)
	}
	if top["seals"], err = json.Marshal(seals); err != nil {
		return nil, err
	}
	if top["sealedFor"], err = json.Marshal(s.group); err != nil {
		return nil, err
	}
	// Each record's bytes go out as they were sealed: a RawMessage is
	// copied as it is (it is compact already).
	return json.Marshal(top)
}

// Commit writes r if the object is still at version base (or, at
// NoVersion, does not exist yet).
func (s *Shared) Commit(ctx context.Context, base Version, r *Records) (Version, error) {
	if err := ctx.Err(); err != nil {
		return NoVersion, err
	}
	raw, err := s.encode(r)
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
	if s.sealKey != nil {
		s.remember(sha256.Sum256(raw))
	}
	return Version(nv), nil
}

// remember notes records object bytes whose seals are right.
func (s *Shared) remember(sum [sha256.Size]byte) {
	s.mu.Lock()
	s.verified = sum
	s.mu.Unlock()
}

// Adopt seals records that carry no seal yet (see AdoptUnsealed), and
// tells how many it sealed; sealed records are left as they are.
func (s *Shared) Adopt(ctx context.Context) (int, error) {
	if s.sealKey == nil {
		return 0, errors.New("adopting unsealed records needs a record key")
	}
	r, v, adopted, err := s.load(ctx)
	if err != nil || !adopted {
		return 0, err
	}
	if _, err := s.Commit(ctx, v, r); err != nil {
		return 0, err
	}
	n := 0
	for _, m := range []int{len(r.Disks), len(r.VMs), len(r.DES), len(r.Snapshots), len(r.Images), len(r.Intents), len(r.Removals),
		len(r.Identities), len(r.Subscriptions), len(r.Galleries), len(r.GalleryImages), len(r.GalleryImageVersions)} {
		n += m
	}
	return n, nil
}

// Close does nothing: the backend is the caller's.
func (s *Shared) Close() error { return nil }
