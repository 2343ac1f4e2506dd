// Package auditchain is the tamper-evident form of the key store's audit
// log, shared by the key store that writes it and the CLI that verifies a
// copy of it.
//
// Each line is a JSON object whose last member is "hash": the hex SHA-256
// of the previous line's hash (32 bytes) followed by this line's canonical
// bytes, which are the line exactly as written with the hash member left
// out. The first line of every file is a checkpoint,
// {"checkpoint":{"seq":N,"hash":H},...}: the sequence number and hash of
// the line the file follows (0 and 32 zero bytes at the very start). A
// file can therefore be verified on its own, from its checkpoint, after
// retention removed the files before it.
//
// What the chain proves and what it cannot is written in docs/SECURITY.md.
package auditchain

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Hash is one link of the chain.
type Hash [sha256.Size]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// Head names a point of the chain: a line's sequence number and hash.
// Saved somewhere the key store's host cannot write, it is what a later
// verification checks the log against (--since-head).
type Head struct {
	Seq  uint64
	Hash Hash
}

// String is the form `hostcrypt keyvault audit --head` prints: SEQ:HEX.
func (h Head) String() string { return strconv.FormatUint(h.Seq, 10) + ":" + h.Hash.String() }

// ParseHead reads SEQ:HEX.
func ParseHead(s string) (Head, error) {
	seq, hx, ok := strings.Cut(strings.TrimSpace(s), ":")
	var h Head
	n, err := strconv.ParseUint(seq, 10, 64)
	if !ok || err != nil || len(hx) != 2*sha256.Size {
		return h, fmt.Errorf("head %q is not SEQ:HASH as `hostcrypt keyvault audit --head` prints it", s)
	}
	if _, err := hex.Decode(h.Hash[:], []byte(hx)); err != nil {
		return h, fmt.Errorf("head %q: the hash is not hex", s)
	}
	h.Seq = n
	return h, nil
}

// Link is the hash of a line with the given canonical bytes after prev.
func Link(prev Hash, canonical []byte) Hash {
	d := sha256.New()
	d.Write(prev[:])
	d.Write(canonical)
	var h Hash
	d.Sum(h[:0])
	return h
}

const hashMember = `,"hash":"`

// Seal appends the hash member to canonical, a JSON object without one,
// and returns the line (without its newline) and its hash.
func Seal(prev Hash, canonical []byte) ([]byte, Hash) {
	h := Link(prev, canonical)
	line := make([]byte, 0, len(canonical)+len(hashMember)+2*sha256.Size+2)
	line = append(line, canonical[:len(canonical)-1]...)
	line = append(line, hashMember...)
	line = hex.AppendEncode(line, h[:])
	line = append(line, '"', '}')
	return line, h
}

// Split is Seal's inverse: the canonical bytes and the stored hash of a
// line, or false if the line does not end with a hash member.
func Split(line []byte) ([]byte, Hash, bool) {
	var h Hash
	tail := len(hashMember) + 2*sha256.Size + 2
	if len(line) < tail+2 || !bytes.HasSuffix(line, []byte(`"}`)) {
		return nil, h, false
	}
	cut := len(line) - tail
	if string(line[cut:cut+len(hashMember)]) != hashMember {
		return nil, h, false
	}
	if _, err := hex.Decode(h[:], line[cut+len(hashMember):len(line)-2]); err != nil {
		return nil, h, false
	}
	canonical := make([]byte, 0, cut+1)
	canonical = append(append(canonical, line[:cut]...), '}')
	return canonical, h, true
}

type checkpointJSON struct {
	Checkpoint *struct {
		Seq  uint64 `json:"seq"`
		Hash string `json:"hash"`
	} `json:"checkpoint"`
	Time time.Time `json:"time"`
}

// CheckpointLine is the first line of a file that follows h.
func CheckpointLine(h Head, t time.Time) []byte {
	var c checkpointJSON
	c.Checkpoint = &struct {
		Seq  uint64 `json:"seq"`
		Hash string `json:"hash"`
	}{h.Seq, h.Hash.String()}
	c.Time = t.UTC()
	b, _ := json.Marshal(c)
	return b
}

// ParseCheckpoint reads a checkpoint line.
func ParseCheckpoint(line []byte) (Head, time.Time, bool) {
	var c checkpointJSON
	var h Head
	if !bytes.HasPrefix(line, []byte(`{"checkpoint":`)) || json.Unmarshal(line, &c) != nil || c.Checkpoint == nil {
		return h, time.Time{}, false
	}
	b, err := hex.DecodeString(c.Checkpoint.Hash)
	if err != nil || len(b) != sha256.Size {
		return h, time.Time{}, false
	}
	h.Seq = c.Checkpoint.Seq
	copy(h.Hash[:], b)
	return h, c.Time, true
}

// File names in the audit directory: the current file and rotated files
// named by their last sequence number, zero-padded so that names sort in
// order.
const Current = "audit.log"

// RotatedName is the name a file gets when it is rotated after seq.
func RotatedName(lastSeq uint64) string { return fmt.Sprintf("audit-%020d.log", lastSeq) }

// RotatedSeq is the last sequence number a rotated file's name carries.
func RotatedSeq(name string) (uint64, bool) {
	s, ok := strings.CutPrefix(name, "audit-")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, ".log")
	n, err := strconv.ParseUint(s, 10, 64)
	return n, ok && err == nil
}

// Files lists dir's audit files oldest first: the rotated files, then the
// current file if it exists.
func Files(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	current := false
	for _, e := range ents {
		if _, ok := RotatedSeq(e.Name()); ok && e.Type().IsRegular() {
			names = append(names, e.Name())
		}
		current = current || (e.Name() == Current && e.Type().IsRegular())
	}
	sort.Strings(names)
	if current {
		names = append(names, Current)
	}
	return names, nil
}

// ErrNoLog is returned by Verify for a directory without audit files.
var ErrNoLog = errors.New("no audit files (audit.log, audit-<seq>.log) in the directory")

// Lines splits a file's content into lines; the last is partial (cut
// short, without its newline) when partial is true.
func Lines(data []byte) (lines [][]byte, partial bool) {
	if len(data) == 0 {
		return nil, false
	}
	lines = bytes.Split(data, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		return lines[:len(lines)-1], false
	}
	return lines, true
}

func path(dir, name string) string { return filepath.Join(dir, name) }
