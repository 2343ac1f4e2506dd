package auditchain

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// Problem is the first thing wrong with a log: what (Kind), where (File,
// Line, 1-based, counting the checkpoint) and a sentence saying it.
type Problem struct {
	Kind    string `json:"kind"` // altered, removed, reordered, truncated, head-mismatch, head-unavailable
	File    string `json:"file"`
	Line    int    `json:"line"`
	Seq     uint64 `json:"seq,omitempty"`
	Message string `json:"message"`
}

// Report is the result of Verify.
type Report struct {
	OK       bool     `json:"ok"`
	Files    []string `json:"files"`
	Lines    int      `json:"lines"`              // chained lines verified
	FirstSeq uint64   `json:"firstSeq,omitempty"` // oldest chained line kept
	Head     string   `json:"head,omitempty"`     // last verified line, SEQ:HASH
	// Unchained counts lines written before the chain existed (an older
	// version's files); they are kept but cannot be verified.
	Unchained int `json:"unchainedLines,omitempty"`
	// SinceHead is the saved head checked, if one was given.
	SinceHead string   `json:"sinceHead,omitempty"`
	Problem   *Problem `json:"problem,omitempty"`
}

// Options of Verify.
type Options struct {
	// SinceHead is a head saved earlier: the line it names must still be
	// in the log with that hash. This catches a log rewritten with the
	// chain recomputed, which the chain alone cannot.
	SinceHead *Head
	// Live is the head of the running key store that writes the log:
	// verification stops there (lines after it are being written) and
	// the log must reach it, which catches lines cut from the end.
	Live *Head
}

// lineInfo is what Verify reads of a chained line.
type lineInfo struct {
	Seq             *uint64 `json:"seq"`
	OperationName   string  `json:"operationName"`
	RetainedFromSeq uint64  `json:"retainedFromSeq"`
}

// RetentionOp is the operation name of the line the key store writes
// before retention removes files; it carries the first sequence number
// kept (retainedFromSeq), so that removal by anyone else shows.
const RetentionOp = "AuditRetention"

// Verify checks the audit files in dir and reports the first line that
// was altered, removed or reordered. An error is returned only when the
// files cannot be read; what is wrong with their content is the report's
// Problem.
func Verify(dir string, opt Options) (*Report, error) {
	names, err := Files(dir)
	if err != nil {
		return nil, err
	}
	files := make([]File, 0, len(names))
	for _, name := range names {
		f, err := os.Open(path(dir, name))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		files = append(files, File{Name: name, R: f})
	}
	return VerifyFiles(files, opt)
}

// File is an audit file to verify, oldest first as Files lists them.
type File struct {
	Name string
	R    io.Reader
}

// VerifyFiles is Verify on files already opened (a running store opens
// them under its lock, then reads them while it goes on writing).
func VerifyFiles(files []File, opt Options) (*Report, error) {
	if len(files) == 0 {
		return nil, ErrNoLog
	}
	v := &verifier{opt: opt, rep: &Report{}}
	for _, f := range files {
		v.rep.Files = append(v.rep.Files, f.Name)
	}
	if opt.SinceHead != nil {
		v.rep.SinceHead = opt.SinceHead.String()
	}
	for i, f := range files {
		data, err := io.ReadAll(f.R)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Name, err)
		}
		if v.file(f.Name, data, i == len(files)-1) {
			break
		}
	}
	if v.rep.Problem == nil {
		v.finish()
	}
	if v.started {
		v.rep.Head = Head{v.lastSeq, v.prev}.String()
	}
	v.rep.OK = v.rep.Problem == nil
	return v.rep, nil
}

type verifier struct {
	opt Options
	rep *Report

	started  bool // a checkpoint was read: prev and lastSeq hold
	legacy   bool // unchained files came first
	prev     Hash
	lastSeq  uint64
	lastFile string
	lastLine int

	firstCheckpoint uint64 // seq the oldest chained file follows
	retainedFrom    uint64 // from the newest retention line; 0: none seen
	retentionSeq    uint64
	sinceChecked    bool
	stopped         bool // reached the live head
}

func (v *verifier) fail(kind, file string, line int, seq uint64, format string, args ...any) bool {
	v.rep.Problem = &Problem{Kind: kind, File: file, Line: line, Seq: seq, Message: fmt.Sprintf(format, args...)}
	return true
}

// file verifies one file; it returns true to stop (a problem, or the live
// head reached).
func (v *verifier) file(name string, data []byte, last bool) bool {
	lines, partial := Lines(data)
	if partial {
		if last && v.opt.Live != nil {
			lines = lines[:len(lines)-1] // being written right now
		} else if len(lines) > 0 {
			n := len(lines)
			return v.fail("truncated", name, n, 0, "%s line %d is cut short (no newline): the file was truncated there, or the key store crashed while writing it and has not started since (it drops such a line at its next start)", name, n)
		}
	}
	if len(lines) == 0 {
		return v.fail("removed", name, 1, 0, "%s is empty: its checkpoint line and everything after it were removed", name)
	}
	cp, _, ok := ParseCheckpoint(lines[0])
	if !ok {
		if _, _, chained := Split(lines[0]); !chained && !v.started && json.Valid(lines[0]) {
			// A file written before the chain existed.
			v.legacy = true
			v.rep.Unchained += len(lines)
			return false
		}
		return v.fail("removed", name, 1, 0, "%s line 1 is not a checkpoint: the file's first line was removed or altered", name)
	}
	if !v.checkpoint(name, cp) {
		return true
	}
	for i := 1; i < len(lines); i++ {
		if v.line(name, lines, i) {
			return true
		}
	}
	return false
}

func (v *verifier) checkpoint(name string, cp Head) bool {
	if v.opt.SinceHead != nil && cp.Seq == v.opt.SinceHead.Seq {
		v.sinceChecked = true
		if cp.Hash != v.opt.SinceHead.Hash {
			v.fail("head-mismatch", name, 1, cp.Seq, "%s's checkpoint (seq %d) does not carry the saved head's hash: the log up to seq %d was rewritten and its chain recomputed", name, cp.Seq, cp.Seq)
			return false
		}
	}
	if !v.started {
		v.started, v.prev, v.lastSeq, v.firstCheckpoint = true, cp.Hash, cp.Seq, cp.Seq
		v.rep.FirstSeq = cp.Seq + 1
		v.lastFile, v.lastLine = name, 1
		return true
	}
	switch {
	case cp.Seq > v.lastSeq:
		v.fail("removed", v.lastFile, v.lastLine+1, v.lastSeq+1, "lines with seq %d to %d are missing after %s line %d (seq %d): %s's checkpoint continues from seq %d; the end of %s was cut off or a file was removed", v.lastSeq+1, cp.Seq, v.lastFile, v.lastLine, v.lastSeq, name, cp.Seq, v.lastFile)
		return false
	case cp.Seq < v.lastSeq:
		v.fail("reordered", name, 1, cp.Seq, "%s's checkpoint (seq %d) goes back before %s's last line (seq %d): files were reordered or lines repeated", name, cp.Seq, v.lastFile, v.lastSeq)
		return false
	case cp.Hash != v.prev:
		v.fail("altered", name, 1, cp.Seq, "%s's checkpoint does not match %s line %d (seq %d): one of the two was altered", name, v.lastFile, v.lastLine, v.lastSeq)
		return false
	}
	v.lastFile, v.lastLine = name, 1
	return true
}

func (v *verifier) line(name string, lines [][]byte, i int) bool {
	n := i + 1
	canonical, h, ok := Split(lines[i])
	var info lineInfo
	if !ok || json.Unmarshal(canonical, &info) != nil || info.Seq == nil {
		return v.fail("altered", name, n, v.lastSeq+1, "%s line %d is not a hashed audit record: it was altered or inserted", name, n)
	}
	seq, want := *info.Seq, v.lastSeq+1
	switch {
	case seq > want:
		for j := i + 1; j < len(lines); j++ {
			if c, _, ok := Split(lines[j]); ok {
				var other lineInfo
				if json.Unmarshal(c, &other) == nil && other.Seq != nil && *other.Seq == want {
					return v.fail("reordered", name, n, seq, "%s line %d has seq %d where seq %d was due; seq %d is on line %d: lines were reordered", name, n, seq, want, want, j+1)
				}
			}
		}
		return v.fail("removed", name, n, want, "%s line %d has seq %d after seq %d on the line before: the lines with seq %d to %d were removed (or this line's seq was altered)", name, n, seq, v.lastSeq, want, seq-1)
	case seq < want:
		return v.fail("reordered", name, n, seq, "%s line %d has seq %d, not after seq %d on the line before: lines were reordered or repeated", name, n, seq, v.lastSeq)
	case Link(v.prev, canonical) != h:
		return v.fail("altered", name, n, seq, "%s line %d (seq %d) does not match its hash: the line was altered, or the line before it was altered and its hash recomputed", name, n, seq)
	}
	if s := v.opt.SinceHead; s != nil && seq == s.Seq {
		v.sinceChecked = true
		if h != s.Hash {
			return v.fail("head-mismatch", name, n, seq, "%s line %d (seq %d) does not hash to the saved head: the log up to it was rewritten (lines removed, altered or reordered) and its chain recomputed", name, n, seq)
		}
	}
	if info.OperationName == RetentionOp {
		v.retainedFrom, v.retentionSeq = info.RetainedFromSeq, seq
	}
	v.prev, v.lastSeq, v.lastFile, v.lastLine = h, seq, name, n
	v.rep.Lines++
	if l := v.opt.Live; l != nil && seq == l.Seq {
		if h != l.Hash {
			return v.fail("altered", name, n, seq, "%s line %d (seq %d) is not the line the running key store wrote there: it was altered", name, n, seq)
		}
		v.stopped = true
		return true
	}
	return false
}

// finish checks what can only be judged once every file was read: the end
// of the log against the live and saved heads, and its start against
// retention.
func (v *verifier) finish() {
	if !v.started {
		if v.legacy {
			return // nothing chained yet
		}
		v.fail("removed", v.rep.Files[0], 1, 0, "no file starts with a checkpoint")
		return
	}
	if l := v.opt.Live; l != nil && !v.stopped {
		switch {
		case v.lastSeq < l.Seq:
			v.fail("removed", v.lastFile, v.lastLine+1, v.lastSeq+1, "the log ends at seq %d (%s line %d) but the running key store has written up to seq %d: lines were cut from the end", v.lastSeq, v.lastFile, v.lastLine, l.Seq)
			return
		case v.lastSeq == l.Seq && v.prev != l.Hash:
			v.fail("altered", v.lastFile, v.lastLine, v.lastSeq, "%s line %d (seq %d) is not what the running key store wrote there", v.lastFile, v.lastLine, v.lastSeq)
			return
		}
	}
	if s := v.opt.SinceHead; s != nil && !v.sinceChecked {
		if s.Seq > v.lastSeq {
			v.fail("removed", v.lastFile, v.lastLine+1, v.lastSeq+1, "the log ends at seq %d (%s line %d) but the saved head is at seq %d: lines were cut from the end", v.lastSeq, v.lastFile, v.lastLine, s.Seq)
			return
		}
		v.fail("head-unavailable", v.rep.Files[0], 1, s.Seq, "the saved head's line (seq %d) is no longer in the log, which now starts after seq %d (%s): retention removed it (save heads more often than --audit-max-age) or someone else did; the log cannot be checked against this head", s.Seq, v.firstCheckpoint, v.rep.Files[0])
		return
	}
	// The oldest chained file may start after seq 0 only where a retention
	// line says lines before it were removed (or unchained files precede).
	first := v.firstCheckpoint + 1
	if v.firstCheckpoint > 0 && !v.legacy {
		chainStart := v.rep.Files[0]
		if v.retentionSeq == 0 {
			v.fail("removed", chainStart, 1, 1, "the log starts after seq %d (%s) and no retention line says lines before it were removed: the oldest files were removed by someone other than the key store", v.firstCheckpoint, chainStart)
			return
		}
		if first > v.retainedFrom {
			v.fail("removed", chainStart, 1, v.retainedFrom, "the log starts after seq %d (%s) but the last retention line (seq %d) removed only lines before seq %d: lines %d to %d were removed by someone other than the key store", v.firstCheckpoint, chainStart, v.retentionSeq, v.retainedFrom, v.retainedFrom, v.firstCheckpoint)
			return
		}
	}
}

// LastLine returns the head after the last complete line of a file's
// content (a record or the checkpoint), its time, and the number of
// complete bytes; ok is false when no line carries a head.
func LastLine(data []byte) (h Head, t time.Time, complete int, ok bool) {
	complete = bytes.LastIndexByte(data, '\n') + 1
	lines, _ := Lines(data[:complete])
	for i := len(lines) - 1; i >= 0; i-- {
		if c, hash, split := Split(lines[i]); split {
			var info struct {
				Seq  *uint64   `json:"seq"`
				Time time.Time `json:"time"`
			}
			if json.Unmarshal(c, &info) == nil && info.Seq != nil {
				return Head{*info.Seq, hash}, info.Time, complete, true
			}
		}
		if cp, ct, isCP := ParseCheckpoint(lines[i]); isCP {
			return cp, ct, complete, true
		}
	}
	return h, t, complete, false
}
