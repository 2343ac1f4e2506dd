package server

import (
	"hostcrypt/keystore/api"

	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"hostcrypt/keystore/auditchain"
)

// Operation names of the lines the store writes itself.
const (
	opAuthThrottled = "AuthenticationThrottled"
	opRetention     = auditchain.RetentionOp
)

// auditLog appends records as hash-chained JSON lines to DIR/audit/audit.log
// and rotates the file by size into audit-<last seq>.log, which starts
// with a checkpoint of the chain. Append returns once the line is on
// stable storage; concurrent appends share one fsync (group commit).
// Retention removes the oldest rotated files beyond a total size or age,
// after writing a line that says so.
type auditLog struct {
	dir        string
	rotateSize int64
	maxTotal   int64         // all files together; <= 0: no cap
	maxAge     time.Duration // <= 0: no cap
	now        func() time.Time
	log        *slog.Logger

	// filesMu keeps the set of files still: readers (Query, Verify) share
	// it while they list and open the files, then read from their open
	// descriptors (which a rename or unlink leaves intact); rotation and
	// retention take it alone. Locks are taken in the order filesMu,
	// syncMu, mu.
	filesMu sync.RWMutex

	mu   sync.Mutex // guards f, size, seq, prev and writes
	f    *os.File
	size int64
	seq  uint64
	prev auditchain.Hash

	syncMu sync.Mutex      // serialises fsync and rotation
	synced uint64          // guarded by syncMu
	head   auditchain.Head // last synced line; guarded by syncMu

	rotated chan struct{} // wakes retention after a rotation

	retainMu  sync.Mutex           // one retention pass at a time
	described map[string]auditFile // rotated files; guarded by retainMu
}

type auditOptions struct {
	rotateSize int64
	maxTotal   int64
	maxAge     time.Duration
	now        func() time.Time
	log        *slog.Logger
}

func openAuditLog(dir string, o auditOptions) (*auditLog, error) {
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	a := &auditLog{dir: dir, rotateSize: o.rotateSize, maxTotal: o.maxTotal, maxAge: o.maxAge, now: o.now, log: o.log, rotated: make(chan struct{}, 1)}
	if a.maxTotal > 0 && a.rotateSize > a.maxTotal/4 {
		a.rotateSize = max(a.maxTotal/4, 1)
	}
	path := filepath.Join(dir, auditchain.Current)
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	// A line cut short by a crash was never acknowledged: drop it.
	head, _, keep, found := auditchain.LastLine(data)
	lines, _ := auditchain.Lines(data[:keep])
	legacy := len(lines) > 0 && !isCheckpoint(lines[0]) && !isChained(lines[0])
	if legacy {
		// Written before the chain existed: keep it as a rotated file and
		// start the chain after it.
		var last uint64
		for _, l := range lines {
			var r api.AuditRecord
			if json.Unmarshal(l, &r) == nil && r.Seq > last {
				last = r.Seq
			}
		}
		before, _, err := a.newestRotatedHead()
		if err != nil {
			return nil, err
		}
		target := filepath.Join(dir, auditchain.RotatedName(last))
		if _, err := os.Lstat(target); last <= before.Seq || err == nil {
			return nil, fmt.Errorf("%s holds no audit records after those of the rotated files (seq %d); it is not a log this version can continue: move it out of %s and start again", path, before.Seq, dir)
		}
		if err := truncateFile(path, int64(keep)); err != nil {
			return nil, err
		}
		if err := os.Rename(path, target); err != nil {
			return nil, err
		}
		head, found, keep = auditchain.Head{Seq: last}, true, 0
	}
	if keep == 0 && !legacy {
		// No current file (or an empty one): continue from the newest
		// rotated file.
		if head, found, err = a.newestRotatedHead(); err != nil {
			return nil, err
		}
	}
	if !found {
		head = auditchain.Head{} // the very start: seq 0, zero hash
	}
	a.f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := a.f.Truncate(int64(keep)); err != nil {
		a.f.Close()
		return nil, err
	}
	if _, err := a.f.Seek(int64(keep), io.SeekStart); err != nil {
		a.f.Close()
		return nil, err
	}
	a.size, a.seq, a.prev = int64(keep), head.Seq, head.Hash
	if keep == 0 {
		if err := a.writeCheckpoint(); err != nil {
			a.f.Close()
			return nil, err
		}
	}
	a.synced, a.head = a.seq, head
	return a, nil
}

func isCheckpoint(line []byte) bool {
	_, _, ok := auditchain.ParseCheckpoint(line)
	return ok
}

func isChained(line []byte) bool {
	_, _, ok := auditchain.Split(line)
	return ok
}

func truncateFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}

func (a *auditLog) newestRotatedHead() (auditchain.Head, bool, error) {
	rotated, err := a.rotatedFiles()
	if err != nil || len(rotated) == 0 {
		return auditchain.Head{}, false, err
	}
	name := rotated[len(rotated)-1]
	data, err := os.ReadFile(filepath.Join(a.dir, name))
	if err != nil {
		return auditchain.Head{}, false, err
	}
	if h, _, _, ok := auditchain.LastLine(data); ok {
		return h, true, nil
	}
	// An unchained (older) file: its name carries its last seq.
	seq, _ := auditchain.RotatedSeq(name)
	return auditchain.Head{Seq: seq}, true, nil
}

// writeCheckpoint starts the (empty) current file with the chain's state;
// called with mu held or before the log is shared.
func (a *auditLog) writeCheckpoint() error {
	line := append(auditchain.CheckpointLine(auditchain.Head{Seq: a.seq, Hash: a.prev}, a.now()), '\n')
	if _, err := a.f.Write(line); err != nil {
		return err
	}
	a.size += int64(len(line))
	if err := a.f.Sync(); err != nil {
		return err
	}
	return syncDir(a.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (a *auditLog) rotatedFiles() ([]string, error) {
	names, err := auditchain.Files(a.dir)
	if err != nil {
		return nil, err
	}
	if n := len(names); n > 0 && names[n-1] == auditchain.Current {
		names = names[:n-1]
	}
	return names, nil
}

// Append writes r durably, assigning its sequence number and hash.
func (a *auditLog) Append(r *api.AuditRecord) error {
	a.mu.Lock()
	r.Seq, r.Hash = a.seq+1, ""
	canonical, err := json.Marshal(r)
	if err != nil {
		a.mu.Unlock()
		return err
	}
	line, h := auditchain.Seal(a.prev, canonical)
	line = append(line, '\n')
	if n, err := a.f.Write(line); err != nil {
		// Leave no partial line for the next one to follow.
		if n > 0 {
			a.f.Truncate(a.size)
			a.f.Seek(a.size, io.SeekStart)
		}
		a.mu.Unlock()
		return err
	}
	a.seq, a.prev = r.Seq, h
	a.size += int64(len(line))
	r.Hash = h.String()
	seq := a.seq
	a.mu.Unlock()

	a.syncMu.Lock()
	if a.synced >= seq {
		a.syncMu.Unlock()
		return nil
	}
	a.mu.Lock()
	target, f, size, head := a.seq, a.f, a.size, auditchain.Head{Seq: a.seq, Hash: a.prev}
	a.mu.Unlock()
	if err := f.Sync(); err != nil {
		a.syncMu.Unlock()
		return err
	}
	a.synced, a.head = target, head
	a.syncMu.Unlock()
	if size >= a.rotateSize {
		return a.rotateDue()
	}
	return nil
}

// rotateDue rotates the current file if it is (still) over the rotation
// size.
func (a *auditLog) rotateDue() error {
	a.filesMu.Lock()
	defer a.filesMu.Unlock()
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	a.mu.Lock()
	size := a.size
	a.mu.Unlock()
	if size < a.rotateSize {
		return nil // another append rotated it
	}
	err := a.rotate()
	select {
	case a.rotated <- struct{}{}:
	default:
	}
	return err
}

// rotate renames the current file after its last line and starts a new
// one with a checkpoint; called with syncMu and filesMu held.
func (a *auditLog) rotate() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.f.Sync(); err != nil {
		return err
	}
	a.synced, a.head = a.seq, auditchain.Head{Seq: a.seq, Hash: a.prev}
	if err := os.Rename(filepath.Join(a.dir, auditchain.Current), filepath.Join(a.dir, auditchain.RotatedName(a.seq))); err != nil {
		return err // the current file stays open and in use
	}
	a.f.Close()
	f, err := os.OpenFile(filepath.Join(a.dir, auditchain.Current), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	a.f, a.size = f, 0
	return a.writeCheckpoint()
}

// Head is the chain's head: the last line on stable storage.
func (a *auditLog) Head() auditchain.Head {
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	return a.head
}

// Verify checks the files against the running head and, if given, a head
// saved earlier.
func (a *auditLog) Verify(since *auditchain.Head) (*auditchain.Report, error) {
	live := a.Head() // taken first: the files opened after reach at least it
	files, closeAll, err := a.openFiles()
	if err != nil {
		return nil, err
	}
	defer closeAll()
	return auditchain.VerifyFiles(files, auditchain.Options{SinceHead: since, Live: &live})
}

// openFiles opens every audit file, oldest first, under filesMu.
func (a *auditLog) openFiles() ([]auditchain.File, func(), error) {
	a.filesMu.RLock()
	defer a.filesMu.RUnlock()
	names, err := auditchain.Files(a.dir)
	if err != nil {
		return nil, nil, err
	}
	var opened []*os.File
	closeAll := func() {
		for _, f := range opened {
			f.Close()
		}
	}
	files := make([]auditchain.File, 0, len(names))
	for _, name := range names {
		f, err := os.Open(filepath.Join(a.dir, name))
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		opened = append(opened, f)
		files = append(files, auditchain.File{Name: name, R: f})
	}
	return files, closeAll, nil
}

// auditQuery selects records: after a sequence number, of one vault,
// without some operations or the host's own event polling, the first or
// (last) the newest limit of them.
type auditQuery struct {
	after       uint64
	limit       int
	last        bool
	vault       string
	exclude     map[string]bool
	hidePolling bool
}

// isPolling says whether r is the host's own event polling: a successful
// EventsRead by the platform principal. It is most of a quiet log.
func isPolling(r *api.AuditRecord) bool {
	return r.OperationName == "EventsRead" && r.CallerType == kindPlatform && r.ResultCode == 200
}

// Query returns the records q selects in sequence order, and how many
// lines of the host's polling it left out among those it looked at.
func (a *auditLog) Query(q auditQuery) ([]api.AuditRecord, int, error) {
	a.syncMu.Lock()
	synced := a.synced
	a.syncMu.Unlock()
	files, closeAll, err := a.openFiles()
	if err != nil {
		return nil, 0, err
	}
	defer closeAll()
	out, hidden := []api.AuditRecord{}, 0
	take := func(r *api.AuditRecord) bool {
		switch {
		case r.Seq <= q.after || r.Seq > synced:
		case q.vault != "" && r.Vault != q.vault:
		case q.exclude[r.OperationName]:
		case q.hidePolling && isPolling(r):
			hidden++
		default:
			out = append(out, *r)
		}
		return len(out) >= q.limit
	}
	if !q.last {
		for _, f := range files {
			if seq, ok := auditchain.RotatedSeq(f.Name); ok && seq <= q.after {
				continue
			}
			done, err := scan(f.R, take)
			if err != nil || done {
				return out, hidden, err
			}
		}
		return out, hidden, nil
	}
	// The newest first, file by file, then back in order.
	for i := len(files) - 1; i >= 0 && len(out) < q.limit; i-- {
		data, err := io.ReadAll(files[i].R)
		if err != nil {
			return nil, 0, err
		}
		lines, _ := auditchain.Lines(data)
		stop := false
		for j := len(lines) - 1; j >= 0 && !stop; j-- {
			var r api.AuditRecord
			if json.Unmarshal(lines[j], &r) != nil || r.Seq == 0 {
				continue
			}
			if r.Seq <= q.after {
				stop = true
				break
			}
			stop = take(&r)
		}
		if stop {
			break
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, hidden, nil
}

// scan feeds the records of one file to take until it returns true.
func scan(r io.Reader, take func(*api.AuditRecord) bool) (bool, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var r api.AuditRecord
		if json.Unmarshal(sc.Bytes(), &r) != nil || r.Seq == 0 {
			continue // a checkpoint, or a line being written
		}
		if take(&r) {
			return true, nil
		}
	}
	return false, sc.Err()
}

// retentionLoop applies retention after each rotation and every interval
// (ages grow without rotations) until ctx ends.
func (a *auditLog) retentionLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := a.retain(); err != nil {
			a.log.Error("audit retention failed; old audit files are kept", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-a.rotated:
		case <-t.C:
		}
	}
}

type auditFile struct {
	name    string
	size    int64
	lastSeq uint64
	newest  time.Time // time of its newest line
	oldest  time.Time // time of its oldest record (current file only)
}

// retain enforces the caps. Rotated files go oldest first: while all audit
// files together exceed maxTotal, and while the oldest one's newest line is
// older than maxAge. The current file is rotated once its oldest line is
// older than a quarter of maxAge, so that no line outlives maxAge by more
// than that. Before removing anything it appends an AuditRetention line
// naming the first sequence number kept.
func (a *auditLog) retain() error {
	if a.maxTotal <= 0 && a.maxAge <= 0 {
		return nil
	}
	a.retainMu.Lock()
	defer a.retainMu.Unlock()
	now := a.now()
	if a.maxAge > 0 {
		if err := a.rotateIfOld(now); err != nil {
			return err
		}
	}
	// Measure while readers go on; only retention removes files, and it
	// runs in one goroutine, so what it measures stays until it removes.
	a.filesMu.RLock()
	files, total, err := a.measure()
	a.filesMu.RUnlock()
	if err != nil {
		return err
	}
	cut, sizeCut, ageCut := 0, 0, 0
	for cut < len(files) {
		f := files[cut]
		over := a.maxTotal > 0 && total > a.maxTotal
		old := a.maxAge > 0 && !f.newest.IsZero() && now.Sub(f.newest) > a.maxAge
		if !over && !old {
			break
		}
		if over {
			sizeCut++
		} else {
			ageCut++
		}
		total -= f.size
		cut++
	}
	if cut == 0 {
		return nil
	}
	keptFrom := files[cut-1].lastSeq + 1
	var why []string
	if sizeCut > 0 {
		why = append(why, fmt.Sprintf("%d over --audit-max-size %d bytes", sizeCut, a.maxTotal))
	}
	if ageCut > 0 {
		why = append(why, fmt.Sprintf("%d older than --audit-max-age %s", ageCut, a.maxAge))
	}
	rec := &api.AuditRecord{
		Time: now.UTC(), OperationName: opRetention, ResultCode: 200, ResultType: "Success", RequestID: newID(),
		Count: cut, RetainedFromSeq: keptFrom,
		Message: fmt.Sprintf("removing %d audit files (%s) holding the lines before seq %d: %s … %s", cut, strings.Join(why, ", "), keptFrom, files[0].name, files[cut-1].name),
	}
	if err := a.Append(rec); err != nil {
		return err
	}
	a.filesMu.Lock()
	defer a.filesMu.Unlock()
	for _, f := range files[:cut] {
		if err := os.Remove(filepath.Join(a.dir, f.name)); err != nil && !os.IsNotExist(err) {
			return err
		}
		delete(a.described, f.name)
	}
	a.log.Info("audit retention removed old files", "files", cut, "keptFromSeq", keptFrom)
	return syncDir(a.dir)
}

// measure describes the rotated files, oldest first, and sums the sizes of
// all audit files.
func (a *auditLog) measure() ([]auditFile, int64, error) {
	rotated, err := a.rotatedFiles()
	if err != nil {
		return nil, 0, err
	}
	files := make([]auditFile, 0, len(rotated))
	var total int64
	for _, name := range rotated {
		af, err := a.describe(name)
		if err != nil {
			return nil, 0, err
		}
		files = append(files, af)
		total += af.size
	}
	if st, err := os.Stat(filepath.Join(a.dir, auditchain.Current)); err == nil {
		total += st.Size()
	}
	return files, total, nil
}

// rotateIfOld rotates the current file when its oldest record is older
// than a quarter of maxAge, so that retention can remove it in time.
func (a *auditLog) rotateIfOld(now time.Time) error {
	af, err := a.describe(auditchain.Current)
	if err != nil || af.oldest.IsZero() || now.Sub(af.oldest) <= a.maxAge/4 {
		return err
	}
	// Lock order everywhere: filesMu, then syncMu, then mu.
	a.filesMu.Lock()
	defer a.filesMu.Unlock()
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	return a.rotate()
}

// describe reads what retention needs of a file: its size, and the times
// of its oldest and newest lines from its first and last few KiB. Rotated
// files never change, so their descriptions are kept.
func (a *auditLog) describe(name string) (auditFile, error) {
	if af, ok := a.described[name]; ok && name != auditchain.Current {
		return af, nil
	}
	af := auditFile{name: name}
	f, err := os.Open(filepath.Join(a.dir, name))
	if err != nil {
		return af, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return af, err
	}
	af.size = st.Size()
	af.lastSeq, _ = auditchain.RotatedSeq(name)
	const window = 64 << 10
	head := make([]byte, min(af.size, window))
	if _, err := io.ReadFull(f, head); err != nil {
		return af, err
	}
	lines, _ := auditchain.Lines(head)
	for _, l := range lines {
		var r api.AuditRecord
		if json.Unmarshal(l, &r) == nil && r.Seq > 0 {
			af.oldest = r.Time
			break
		}
	}
	tail := make([]byte, min(af.size, window))
	if _, err := f.ReadAt(tail, af.size-int64(len(tail))); err != nil && err != io.EOF {
		return af, err
	}
	lines, _ = auditchain.Lines(tail)
	for i := len(lines) - 1; i >= 0; i-- {
		var r api.AuditRecord
		if json.Unmarshal(lines[i], &r) == nil && r.Seq > 0 {
			af.newest = r.Time
			break
		}
		if _, t, ok := auditchain.ParseCheckpoint(lines[i]); ok {
			af.newest = t
			break
		}
	}
	if name != auditchain.Current {
		if a.described == nil {
			a.described = map[string]auditFile{}
		}
		a.described[name] = af
	}
	return af, nil
}

func (a *auditLog) Close() error {
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.f.Sync()
	return a.f.Close()
}

// clip bounds a value taken from a request (a path's vault or key name)
// before it goes into an audit line, so that no request can write more
// than a bounded line; valid names are far shorter.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("…(%d bytes)", len(s))
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }
