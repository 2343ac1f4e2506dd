// Package store keeps the control plane's records — disks, VMs, disk
// encryption sets, snapshots, images, and the intents and removals that
// make creations and deletions crash-safe — and changes them by
// transactions.
//
// Several rules of the control plane span records: a name is unique among
// its kind, a subscription has at most so many disk encryption sets in a
// location, a disk belongs to one VM at most, a VM that starts changes its
// disks' states with its own. So the unit of change is not a record but the
// records as a whole: Update reads them with their version, lets a function
// change them, and commits the result by compare-and-swap on that version.
// When another writer committed in between, the function runs again on the
// new records; a rule checked inside it therefore holds over every commit,
// whoever the writers are.
//
// Dir, the first implementation, keeps the records in one file
// (state.json, replaced atomically) and serialises commits between
// processes with flock. A store on a shared object store implements the
// same interface with an object per commit and the object store's own
// compare-and-swap (storage.Backend.WriteMetaIf).
//
// Secrets — the key store credentials of the disk encryption sets'
// identities — are not records: a store that others can read (a storage
// operator, another host) must never hold them, so they have an interface
// of their own and stay on the host.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Version identifies one committed state of the records. A store that
// holds nothing yet is at NoVersion.
type Version uint64

// NoVersion is the version of a store that holds no records yet.
const NoVersion Version = 0

// ErrConflict is returned, wrapped, by Commit when the records are no longer
// at the version the caller read: another writer committed since.
var ErrConflict = errors.New("store: the records changed since they were read")

// Records is the control plane's state: every record by name (intents and
// removals by storage prefix).
type Records struct {
	Disks     map[string]*Disk     `json:"disks"`
	VMs       map[string]*VM       `json:"vms"`
	DES       map[string]*DES      `json:"diskEncryptionSets"`
	Snapshots map[string]*Snapshot `json:"snapshots"`
	Images    map[string]*Image    `json:"images"`
	Intents   map[string]*Intent   `json:"intents,omitempty"`
	Removals  map[string]*Removal  `json:"removals,omitempty"`
	// Identities are the user-assigned managed identities, by name.
	Identities map[string]*ManagedIdentity `json:"identities,omitempty"`
	// Subscriptions records the subscriptions moved to another tenant, by
	// id; one not here is in the key store's own tenant.
	Subscriptions map[string]*Subscription `json:"subscriptions,omitempty"`
	// Galleries, their image definitions ("GALLERY/DEFINITION") and the
	// definitions' versions ("GALLERY/DEFINITION/VERSION").
	Galleries            map[string]*Gallery             `json:"galleries,omitempty"`
	GalleryImages        map[string]*GalleryImage        `json:"galleryImages,omitempty"`
	GalleryImageVersions map[string]*GalleryImageVersion `json:"galleryImageVersions,omitempty"`
}

// NewRecords returns empty records.
func NewRecords() *Records {
	r := &Records{}
	r.fill()
	return r
}

// fill makes every map of r non-nil.
func (r *Records) fill() {
	if r.Disks == nil {
		r.Disks = map[string]*Disk{}
	}
	if r.VMs == nil {
		r.VMs = map[string]*VM{}
	}
	if r.DES == nil {
		r.DES = map[string]*DES{}
	}
	if r.Snapshots == nil {
		r.Snapshots = map[string]*Snapshot{}
	}
	if r.Images == nil {
		r.Images = map[string]*Image{}
	}
	if r.Intents == nil {
		r.Intents = map[string]*Intent{}
	}
	if r.Removals == nil {
		r.Removals = map[string]*Removal{}
	}
	if r.Identities == nil {
		r.Identities = map[string]*ManagedIdentity{}
	}
	if r.Subscriptions == nil {
		r.Subscriptions = map[string]*Subscription{}
	}
	if r.Galleries == nil {
		r.Galleries = map[string]*Gallery{}
	}
	if r.GalleryImages == nil {
		r.GalleryImages = map[string]*GalleryImage{}
	}
	if r.GalleryImageVersions == nil {
		r.GalleryImageVersions = map[string]*GalleryImageVersion{}
	}
}

// Clone returns a deep copy of r.
func (r *Records) Clone() *Records {
	raw, err := json.Marshal(r)
	if err != nil {
		panic(fmt.Sprintf("store: records do not marshal: %v", err))
	}
	var c Records
	if err := json.Unmarshal(raw, &c); err != nil {
		panic(fmt.Sprintf("store: records do not unmarshal: %v", err))
	}
	c.fill()
	return &c
}

// Store keeps the records.
type Store interface {
	// Load returns the current records, which the caller owns, and their
	// version.
	Load(ctx context.Context) (*Records, Version, error)
	// Commit replaces the records with r if they are still at version
	// base, durably, and returns the new version. When another writer
	// committed since base, nothing changes and the error wraps
	// ErrConflict.
	Commit(ctx context.Context, base Version, r *Records) (Version, error)
	// Close releases the store.
	Close() error
}

// Secrets keeps the key store credentials of the disk encryption sets'
// identities (bearer tokens, never keys), by set name, on this host only.
type Secrets interface {
	// Credential returns the credential of set des, or "" if it has none.
	Credential(ctx context.Context, des string) (string, error)
	// SetCredential stores the credential of set des, durably.
	SetCredential(ctx context.Context, des, credential string) error
	// DeleteCredential forgets the credential of set des; one not there is
	// no error.
	DeleteCredential(ctx context.Context, des string) error
}

// maxAttempts bounds how often Update runs its function against writers
// that keep committing first.
const maxAttempts = 100

// Update reads the records, runs fn on them and commits what fn leaves. When
// another writer committed in between, fn runs again on the new records.
// When fn returns an error nothing is committed and Update returns it. It
// returns the records as committed and their version.
func Update(ctx context.Context, s Store, fn func(*Records) error) (*Records, Version, error) {
	for range maxAttempts {
		r, v, err := s.Load(ctx)
		if err != nil {
			return nil, v, err
		}
		if err := fn(r); err != nil {
			return nil, v, err
		}
		nv, err := s.Commit(ctx, v, r)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return nil, v, err
		}
		return r, nv, nil
	}
	return nil, NoVersion, fmt.Errorf("store: %d attempts in a row met a newer commit: %w", maxAttempts, ErrConflict)
}
