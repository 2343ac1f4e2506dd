package soak

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// The writer's log is text, one record a line, appended with one write(2)
// per batch before its writes and one after its fdatasync, so that a writer
// killed at any point leaves a log that says no more than what happened:
//
//	I <seq> <block>    write seq is about to go to block (issued)
//	A <seq>            fdatasync acknowledged every write issued since the
//	                   last A or F line; seq is the last of them
//	F <seq> <error>    a write or the fdatasync of that batch failed: its
//	                   writes are not acknowledged, each may or may not
//	                   have landed
//
// Writes issued with neither an A nor an F after them (the writer died or
// was killed) are in flight: not acknowledged either.

// Model is what the logs of one writer said so far: for each block, the
// last acknowledged write and the later ones that were in flight. It
// outlives the writer processes: each new one continues at NextSeq.
type Model struct {
	Writer        uint32
	First, Blocks int64 // the region the writer writes, in blocks

	next     uint64
	acked    map[int64]uint64   // block -> last acknowledged seq
	inflight map[int64][]uint64 // block -> issued seqs later than acked[block], never acknowledged
	// Acked counts the writes fdatasync acknowledged, over every log.
	Acked int64
}

// NewModel starts the model of writer id over blocks [first, first+blocks).
func NewModel(writer uint32, first, blocks int64) *Model {
	return &Model{Writer: writer, First: first, Blocks: blocks, next: 1,
		acked: map[int64]uint64{}, inflight: map[int64][]uint64{}}
}

// NextSeq is the sequence number the next writer process starts at.
func (m *Model) NextSeq() uint64 { return m.next }

// AckedSeq returns the last acknowledged seq of block, 0 if none.
func (m *Model) AckedSeq(block int64) uint64 { return m.acked[block] }

// LogStats is what one writer's log added to the model.
type LogStats struct {
	Acked    int      // writes acknowledged by fdatasync
	Unacked  int      // writes issued and not acknowledged (failed or in flight)
	Failures []string // the error of each F line
}

type issued struct {
	seq   uint64
	block int64
}

// Apply adds a writer's log to the model. A log that contradicts itself or
// the model (a sequence number reused, a block outside the region) is an
// error: the run proves nothing then.
func (m *Model) Apply(r io.Reader) (LogStats, error) {
	var (
		st    LogStats
		batch []issued
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		f := strings.SplitN(sc.Text(), " ", 3)
		bad := func(why string) error {
			return fmt.Errorf("writer %d log line %d %q: %s", m.Writer, line, sc.Text(), why)
		}
		if len(f) < 2 {
			return st, bad("too few fields")
		}
		seq, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return st, bad("bad sequence number")
		}
		switch f[0] {
		case "I":
			if len(f) != 3 {
				return st, bad("no block")
			}
			block, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil || block < m.First || block >= m.First+m.Blocks {
				return st, bad(fmt.Sprintf("block outside the region [%d, %d)", m.First, m.First+m.Blocks))
			}
			if seq < m.next {
				return st, bad(fmt.Sprintf("sequence number reused (next is %d)", m.next))
			}
			m.next = seq + 1
			batch = append(batch, issued{seq, block})
			m.inflight[block] = append(m.inflight[block], seq)
		case "A":
			if len(batch) == 0 || batch[len(batch)-1].seq != seq {
				return st, bad("acknowledges a batch that was not issued")
			}
			for _, w := range batch {
				if w.seq > m.acked[w.block] {
					m.acked[w.block] = w.seq
				}
				m.inflight[w.block] = slices.DeleteFunc(m.inflight[w.block], func(s uint64) bool { return s <= m.acked[w.block] })
				if len(m.inflight[w.block]) == 0 {
					delete(m.inflight, w.block)
				}
			}
			st.Acked += len(batch)
			m.Acked += int64(len(batch))
			batch = batch[:0]
		case "F":
			st.Unacked += len(batch)
			batch = batch[:0]
			msg := ""
			if len(f) == 3 {
				msg = f[2]
			}
			st.Failures = append(st.Failures, msg)
		default:
			return st, bad("unknown record")
		}
	}
	st.Unacked += len(batch)
	return st, sc.Err()
}

// Problem is what is wrong with a block read back.
type Problem string

const (
	// Lost: an acknowledged write is not there; an older one or zeros is.
	Lost Problem = "lost acknowledged write"
	// Torn: the block holds neither its old nor its new content.
	Torn Problem = "neither old nor new"
	// ReadError: the block could not be read.
	ReadError Problem = "read error"
)

// Finding is one bad block, with the evidence.
type Finding struct {
	Problem  Problem
	Writer   uint32
	Block    int64
	Expected uint64 // last acknowledged seq (0: none)
	Found    uint64 // seq the block holds (0: zeros, unreadable or damaged)
	Detail   string
}

func (f Finding) String() string {
	return fmt.Sprintf("%s: writer %d block %d (byte %d): expected seq %d (or a later one in flight), found %d: %s",
		f.Problem, f.Writer, f.Block, f.Block*BlockSize, f.Expected, f.Found, f.Detail)
}

// Check judges one block read back: data (BlockSize bytes) or the error
// reading it. It returns nil for a good block.
func (m *Model) Check(block int64, data []byte, readErr error) *Finding {
	want := m.acked[block]
	f := &Finding{Writer: m.Writer, Block: block, Expected: want}
	if readErr != nil {
		f.Problem, f.Detail = ReadError, readErr.Error()
		return f
	}
	content, s, why := Decode(data)
	switch content {
	case Zeros:
		if want == 0 {
			return nil
		}
		f.Problem, f.Detail = Lost, "reads zeros"
		return f
	case Damaged:
		f.Problem, f.Found, f.Detail = Torn, 0, why
		return f
	}
	f.Found = s.Seq
	switch {
	case s.Writer != m.Writer || s.Block != block:
		f.Problem, f.Detail = Torn, fmt.Sprintf("holds writer %d's block %d: misplaced", s.Writer, s.Block)
	case s.Seq == want:
		return nil
	case s.Seq < want:
		f.Problem, f.Detail = Lost, "an older write"
	case slices.Contains(m.inflight[block], s.Seq):
		return nil // a later write that was in flight landed
	default:
		f.Problem, f.Detail = Torn, "a sequence number never issued to this block"
	}
	return f
}

// Result sums up the check of a region.
type Result struct {
	Blocks     int64 // blocks checked
	Lost       int
	Torn       int
	ReadErrors int
	// Findings are the first MaxFindings bad blocks.
	Findings []Finding
}

// MaxFindings bounds the evidence a Result keeps.
const MaxFindings = 20

// OK tells whether every block was good.
func (r Result) OK() bool { return r.Lost == 0 && r.Torn == 0 && r.ReadErrors == 0 }

func (r *Result) add(f *Finding) {
	switch f.Problem {
	case Lost:
		r.Lost++
	case Torn:
		r.Torn++
	case ReadError:
		r.ReadErrors++
	}
	if len(r.Findings) < MaxFindings {
		r.Findings = append(r.Findings, *f)
	}
}

// CheckStream checks the model's whole region as ReadRegion streams it.
func (m *Model) CheckStream(r io.Reader) (Result, error) {
	var res Result
	br := bufio.NewReaderSize(r, 1<<20)
	buf := make([]byte, BlockSize)
	for b := m.First; b < m.First+m.Blocks; b++ {
		data, rerr, err := readRecord(br, buf)
		if err != nil {
			return res, fmt.Errorf("reading back block %d of writer %d: %w", b, m.Writer, err)
		}
		res.Blocks++
		if f := m.Check(b, data, rerr); f != nil {
			res.add(f)
		}
	}
	return res, nil
}

// The stream of ReadRegion: per block, 'D' and its BlockSize bytes, or 'E',
// a 2-byte length and the error's text.
func readRecord(br *bufio.Reader, buf []byte) (data []byte, readErr, err error) {
	tag, err := br.ReadByte()
	if err != nil {
		return nil, nil, fmt.Errorf("stream ended early: %w", err)
	}
	switch tag {
	case 'D':
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, nil, err
		}
		return buf, nil, nil
	case 'E':
		var n [2]byte
		if _, err := io.ReadFull(br, n[:]); err != nil {
			return nil, nil, err
		}
		msg := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(br, msg); err != nil {
			return nil, nil, err
		}
		return nil, errors.New(string(msg)), nil
	}
	return nil, nil, fmt.Errorf("bad record tag %q", tag)
}

func writeRecord(w io.Writer, data []byte, readErr error) error {
	if readErr == nil {
		if _, err := w.Write([]byte{'D'}); err != nil {
			return err
		}
		_, err := w.Write(data)
		return err
	}
	msg := readErr.Error()
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	hdr := []byte{'E', 0, 0}
	binary.BigEndian.PutUint16(hdr[1:], uint16(len(msg)))
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	_, err := io.WriteString(w, msg)
	return err
}
