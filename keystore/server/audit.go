package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// AuditRecord is one line of the audit log: one request, allowed or denied.
type AuditRecord struct {
	Seq            uint64    `json:"seq"`
	Time           time.Time `json:"time"`
	OperationName  string    `json:"operationName"`
	CallerObjectID string    `json:"callerObjectId"`
	CallerTenantID string    `json:"callerTenantId"`
	CallerType     string    `json:"callerType"`
	Vault          string    `json:"vault,omitempty"`
	Kid            string    `json:"kid,omitempty"`
	ResultCode     int       `json:"resultCode"`
	ResultType     string    `json:"resultType"`
	ErrorCode      string    `json:"errorCode,omitempty"`
	RequestID      string    `json:"requestId"`
	DurationMs     float64   `json:"durationMs"`
	ClientIP       string    `json:"clientIp,omitempty"`
}

// auditLog appends records as JSON lines to DIR/audit/audit.log and rotates
// the file by size into audit-<last seq>.log; rotated files are kept, so no
// line is ever lost. Append returns once the line is on stable storage;
// concurrent appends share one fsync (group commit).
type auditLog struct {
	dir     string
	maxSize int64

	mu   sync.Mutex // guards f, size, seq and writes
	f    *os.File
	size int64
	seq  uint64

	syncMu sync.Mutex // serialises fsync and rotation
	synced uint64     // guarded by syncMu
}

const currentAudit = "audit.log"

func openAuditLog(dir string, maxSize int64) (*auditLog, error) {
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	a := &auditLog{dir: dir, maxSize: maxSize}
	// The last sequence number is in the newest rotated file's name or the
	// last complete line of the current file.
	rotated, err := a.rotatedFiles()
	if err != nil {
		return nil, err
	}
	if n := len(rotated); n > 0 {
		fmt.Sscanf(strings.TrimSuffix(strings.TrimPrefix(rotated[n-1], "audit-"), ".log"), "%d", &a.seq)
	}
	path := filepath.Join(dir, currentAudit)
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	// A line cut short by a crash was never acknowledged: drop it.
	keep := bytes.LastIndexByte(data, '\n') + 1
	for _, line := range bytes.Split(data[:keep], []byte("\n")) {
		var r AuditRecord
		if len(line) > 0 && json.Unmarshal(line, &r) == nil && r.Seq > a.seq {
			a.seq = r.Seq
		}
	}
	a.f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := a.f.Truncate(int64(keep)); err != nil {
		return nil, err
	}
	if _, err := a.f.Seek(int64(keep), 0); err != nil {
		return nil, err
	}
	a.size = int64(keep)
	a.synced = a.seq
	return a, nil
}

func (a *auditLog) rotatedFiles() ([]string, error) {
	ents, err := os.ReadDir(a.dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "audit-") && strings.HasSuffix(e.Name(), ".log") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names) // zero-padded sequence numbers sort in order
	return names, nil
}

// Append writes r durably and assigns its sequence number.
func (a *auditLog) Append(r *AuditRecord) error {
	a.mu.Lock()
	a.seq++
	r.Seq = a.seq
	line, _ := json.Marshal(r)
	line = append(line, '\n')
	n, err := a.f.Write(line)
	a.size += int64(n)
	seq := a.seq
	a.mu.Unlock()
	if err != nil {
		return err
	}

	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	if a.synced >= seq {
		return nil
	}
	a.mu.Lock()
	target, f, size := a.seq, a.f, a.size
	a.mu.Unlock()
	if err := f.Sync(); err != nil {
		return err
	}
	a.synced = target
	if size >= a.maxSize {
		return a.rotate()
	}
	return nil
}

// rotate renames the current file after its last synced line; called with syncMu held.
func (a *auditLog) rotate() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.f.Sync(); err != nil {
		return err
	}
	a.synced = a.seq
	a.f.Close()
	name := fmt.Sprintf("audit-%020d.log", a.seq)
	if err := os.Rename(filepath.Join(a.dir, currentAudit), filepath.Join(a.dir, name)); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(a.dir, currentAudit), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if d, err := os.Open(a.dir); err == nil {
		d.Sync()
		d.Close()
	}
	a.f, a.size = f, 0
	return nil
}

// Read returns up to limit records with a sequence number above after.
func (a *auditLog) Read(after uint64, limit int, match func(*AuditRecord) bool) ([]AuditRecord, error) {
	a.syncMu.Lock() // no rotation while reading
	defer a.syncMu.Unlock()
	rotated, err := a.rotatedFiles()
	if err != nil {
		return nil, err
	}
	out := []AuditRecord{}
	for _, name := range append(rotated, currentAudit) {
		var last uint64
		if name != currentAudit {
			fmt.Sscanf(strings.TrimSuffix(strings.TrimPrefix(name, "audit-"), ".log"), "%d", &last)
			if last <= after {
				continue
			}
		}
		f, err := os.Open(filepath.Join(a.dir, name))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			var r AuditRecord
			if json.Unmarshal(sc.Bytes(), &r) != nil || r.Seq <= after || r.Seq > a.synced {
				continue
			}
			if match == nil || match(&r) {
				out = append(out, r)
				if len(out) >= limit {
					f.Close()
					return out, nil
				}
			}
		}
		f.Close()
	}
	return out, nil
}

func (a *auditLog) Close() error {
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.f.Sync()
	return a.f.Close()
}
