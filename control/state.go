package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"hostcrypt/internal/atomicfile"
	"io/fs"
	"os"
	"path/filepath"
)

// state is everything the control plane remembers across restarts. It is
// small, so it is written whole, atomically (temp file, fsync, rename, fsync
// of the directory) after every change: a crash leaves the old or the new
// state, never a mix.
type state struct {
	Version int                           `json:"version"`
	Disks   map[string]*Disk              `json:"disks"`
	VMs     map[string]*VM                `json:"vms"`
	DES     map[string]*DiskEncryptionSet `json:"diskEncryptionSets"`
	// Snapshots and Images, by name.
	Snapshots map[string]*Snapshot `json:"snapshots"`
	Images    map[string]*Image    `json:"images"`
	// Credentials of the disk encryption sets' identities, by set name.
	// They are bearer tokens for the key store, never keys; the file is
	// 0600 in a 0700 directory.
	Credentials map[string]string `json:"credentials"`
	// Intents record, by storage prefix, a creation in progress: written
	// before its first object, dropped with the record of what it made. A
	// crash leaves one behind; host gc removes its objects (see gc.go).
	Intents map[string]*intent `json:"intents,omitempty"`
	// Removals record, by storage prefix, a deletion whose objects are
	// still to go: written (with the resource's record gone) before the
	// first object is touched, dropped once the last is removed. The next
	// start finishes what a crash cut short (see removal.go).
	Removals map[string]*removal `json:"removals,omitempty"`
}

const stateFile = "state.json"

func loadState(dir string) (*state, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	// Read through the directory: a link planted at state.json is refused,
	// never followed (and none of its target's bytes reach an error).
	raw, err := atomicfile.Read(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &state{Version: 1, Disks: map[string]*Disk{}, VMs: map[string]*VM{},
			DES: map[string]*DiskEncryptionSet{}, Credentials: map[string]string{},
			Snapshots: map[string]*Snapshot{}, Images: map[string]*Image{},
			Intents: map[string]*intent{}, Removals: map[string]*removal{}}, nil
	}
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("state file %s is damaged: %w; hostcryptd does not start on it, so that no record is lost at the next save: restore it from a copy", filepath.Join(dir, stateFile), err)
	}
	if s.Disks == nil {
		s.Disks = map[string]*Disk{}
	}
	if s.VMs == nil {
		s.VMs = map[string]*VM{}
	}
	if s.DES == nil {
		s.DES = map[string]*DiskEncryptionSet{}
	}
	if s.Credentials == nil {
		s.Credentials = map[string]string{}
	}
	if s.Snapshots == nil {
		s.Snapshots = map[string]*Snapshot{}
	}
	if s.Images == nil {
		s.Images = map[string]*Image{}
	}
	if s.Intents == nil {
		s.Intents = map[string]*intent{}
	}
	if s.Removals == nil {
		s.Removals = map[string]*removal{}
	}
	return &s, nil
}

func (s *state) save(dir string) error {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, stateFile), raw, 0o600)
}
