package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"hostcrypt/internal/atomicfile"
	"hostcrypt/internal/dirfd"
)

// File names in a Dir.
const (
	// StateFile holds the records: small, and replaced whole, atomically
	// (temporary file, fsync, rename, fsync of the directory) at every
	// commit, so a crash leaves the old state or the new, never a mix.
	StateFile = "state.json"
	// SecretsFile holds the credentials (0600).
	SecretsFile = "secrets.json"
	// lockFile serialises commits between processes (flock).
	lockFile = "state.lock"
)

// formatVersion is the format of state.json.
const formatVersion = 1

// stateFile is state.json: the records with the format version and the
// commit's generation, the version compare-and-swap compares.
type stateFile struct {
	Version    int     `json:"version"`
	Generation Version `json:"generation,omitempty"`
	*Records
	// Credentials is where state files written before secrets.json held
	// the sets' credentials; Open moves them out.
	Credentials map[string]string `json:"credentials,omitempty"`
}

// Dir is a Store and Secrets in a directory of the host (hostcryptd's
// --state). Readers never wait: a commit replaces the file atomically.
// Commits are serialised by an exclusive flock on state.lock, so two
// processes (or two Dirs of one) committing to one directory see each
// other's versions and conflict as Store says.
type Dir struct {
	dir string
	log *slog.Logger
	// mu serialises this Dir's own commits (flock does not between the
	// goroutines of one open file) and its secrets.
	mu   sync.Mutex
	lock *os.File
}

var (
	_ Store   = (*Dir)(nil)
	_ Secrets = (*Dir)(nil)
)

// Open opens the store in dir, creating dir (0700) if needed. A state file
// written before secrets.json existed has its credentials moved into
// secrets.json. A damaged state file is an error that says what to do:
// the daemon must not start on it, so that no record is lost at the next
// commit.
func Open(dir string, log *slog.Logger) (*Dir, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	d, err := dirfd.Open(dir)
	if err != nil {
		return nil, err
	}
	lock, err := d.OpenFile(lockFile, os.O_RDWR|os.O_CREATE, 0o600)
	d.Close()
	if err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	s := &Dir{dir: dir, log: log, lock: lock}
	if err := s.migrate(); err != nil {
		lock.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the store.
func (s *Dir) Close() error { return s.lock.Close() }

// Path is the state file's path.
func (s *Dir) Path() string { return filepath.Join(s.dir, StateFile) }

// read reads state.json; a missing one is empty records at NoVersion.
func (s *Dir) read() (*stateFile, error) {
	// Read through the directory: a link planted at state.json is refused,
	// never followed (and none of its target's bytes reach an error).
	raw, err := atomicfile.Read(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return &stateFile{Version: formatVersion, Records: NewRecords()}, nil
	}
	if err != nil {
		return nil, err
	}
	f := stateFile{Records: &Records{}}
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("state file %s is damaged: %w; hostcryptd does not start on it, so that no record is lost at the next save: restore it from a copy", s.Path(), err)
	}
	if f.Version > formatVersion {
		return nil, fmt.Errorf("state file %s is of format %d, newer than this hostcryptd reads (%d); run the hostcryptd that wrote it", s.Path(), f.Version, formatVersion)
	}
	f.Records.fill()
	return &f, nil
}

// Load returns the records last committed.
func (s *Dir) Load(ctx context.Context) (*Records, Version, error) {
	if err := ctx.Err(); err != nil {
		return nil, NoVersion, err
	}
	f, err := s.read()
	if err != nil {
		return nil, NoVersion, err
	}
	return f.Records, f.Generation, nil
}

// Commit writes r as the next generation if the file is still at base.
func (s *Dir) Commit(ctx context.Context, base Version, r *Records) (Version, error) {
	if err := ctx.Err(); err != nil {
		return NoVersion, err
	}
	raw := []byte(nil)
	var next Version
	err := s.locked(func() error {
		cur, err := s.read()
		if err != nil {
			return err
		}
		if cur.Generation != base {
			return fmt.Errorf("%w (read at %d, now at %d)", ErrConflict, base, cur.Generation)
		}
		next = base + 1
		raw, err = json.MarshalIndent(stateFile{Version: formatVersion, Generation: next, Records: r}, "", "  ")
		if err != nil {
			return err
		}
		return atomicfile.Write(s.Path(), raw, 0o600)
	})
	if err != nil {
		return NoVersion, err
	}
	return next, nil
}

// locked runs fn holding this Dir's mutex and the exclusive flock.
func (s *Dir) locked(fn func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := flock(s.lock, unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", filepath.Join(s.dir, lockFile), err)
	}
	defer flock(s.lock, unix.LOCK_UN)
	return fn()
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

// migrate moves the credentials a state file written before secrets.json
// holds into secrets.json, then writes the state file without them.
func (s *Dir) migrate() error {
	return s.locked(func() error {
		f, err := s.read()
		if err != nil || len(f.Credentials) == 0 {
			return err
		}
		sec, err := s.readSecrets()
		if err != nil {
			return err
		}
		for des, c := range f.Credentials {
			if _, ok := sec[des]; !ok {
				sec[des] = c
			}
		}
		if err := s.writeSecrets(sec); err != nil {
			return err
		}
		raw, err := json.MarshalIndent(stateFile{Version: formatVersion, Generation: f.Generation + 1, Records: f.Records}, "", "  ")
		if err != nil {
			return err
		}
		if err := atomicfile.Write(s.Path(), raw, 0o600); err != nil {
			return err
		}
		s.log.Info("state: the disk encryption sets' credentials moved from state.json to secrets.json", "sets", len(f.Credentials))
		return nil
	})
}

func (s *Dir) secretsPath() string { return filepath.Join(s.dir, SecretsFile) }

func (s *Dir) readSecrets() (map[string]string, error) {
	raw, err := atomicfile.Read(s.secretsPath())
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil {
		// Not the content: it is credentials.
		return nil, fmt.Errorf("secrets file %s is damaged (not a JSON object of credentials); restore it from a copy, or delete it and give each disk encryption set a new identity", s.secretsPath())
	}
	if m == nil {
		m = map[string]string{}
	}
	return m, nil
}

func (s *Dir) writeSecrets(m map[string]string) error {
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.secretsPath(), raw, 0o600)
}

// Credential returns the credential of set des, or "".
func (s *Dir) Credential(ctx context.Context, des string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	m, err := s.readSecrets()
	return m[des], err
}

// SetCredential stores the credential of set des.
func (s *Dir) SetCredential(ctx context.Context, des, credential string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.locked(func() error {
		m, err := s.readSecrets()
		if err != nil {
			return err
		}
		m[des] = credential
		return s.writeSecrets(m)
	})
}

// DeleteCredential forgets the credential of set des.
func (s *Dir) DeleteCredential(ctx context.Context, des string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.locked(func() error {
		m, err := s.readSecrets()
		if err != nil {
			return err
		}
		if _, ok := m[des]; !ok {
			return nil
		}
		delete(m, des)
		return s.writeSecrets(m)
	})
}
