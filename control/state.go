package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// state is everything the control plane remembers across restarts. It is
// small, so it is written whole, atomically (temp file, fsync, rename, fsync
// of the directory) after every change: a crash leaves the old or the new
// state, never a mix.
type state struct {
	Version int              `json:"version"`
	Disks   map[string]*Disk `json:"disks"`
	VMs     map[string]*VM   `json:"vms"`
	DES     map[string]*DiskEncryptionSet `json:"diskEncryptionSets"`
	// Credentials of the disk encryption sets' identities, by set name.
	// They are bearer tokens for the key store, never keys; the file is
	// 0600 in a 0700 directory.
	Credentials map[string]string `json:"credentials"`
}

const stateFile = "state.json"

func loadState(dir string) (*state, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &state{Version: 1, Disks: map[string]*Disk{}, VMs: map[string]*VM{},
			DES: map[string]*DiskEncryptionSet{}, Credentials: map[string]string{}}, nil
	}
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("state file %s is damaged: %w", filepath.Join(dir, stateFile), err)
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
	return &s, nil
}

func (s *state) save(dir string) error {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, stateFile), raw)
}

// writeFileAtomic replaces path with data durably: readers see the old or the
// new content, and after it returns the new content survives a crash.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
