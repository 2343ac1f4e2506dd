package soak

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func block(s Stamp) []byte {
	b := make([]byte, BlockSize)
	Encode(b, s)
	return b
}

func TestDecode(t *testing.T) {
	s := Stamp{Writer: 7, Block: 12345, Seq: 99}
	content, got, why := Decode(block(s))
	require.Equal(t, Written, content, why)
	require.Equal(t, s, got)

	content, _, _ = Decode(make([]byte, BlockSize))
	require.Equal(t, Zeros, content)

	// Half of the new version over the old one: a torn write.
	torn := block(Stamp{Writer: 7, Block: 12345, Seq: 98})
	copy(torn[:BlockSize/2], block(s))
	content, got, why = Decode(torn)
	require.Equal(t, Damaged, content)
	require.Equal(t, uint64(99), got.Seq, "the header read is reported")
	require.Contains(t, why, "parts of different writes")

	flipped := block(s)
	flipped[3000] ^= 1
	content, _, _ = Decode(flipped)
	require.Equal(t, Damaged, content)

	junk := bytes.Repeat([]byte{0xa5}, BlockSize)
	content, _, why = Decode(junk)
	require.Equal(t, Damaged, content)
	require.Contains(t, why, "no block header")

	content, _, _ = Decode(make([]byte, 512))
	require.Equal(t, Damaged, content)

	// Two writes of one block never share their content.
	require.NotEqual(t, block(s)[100:200], block(Stamp{Writer: 7, Block: 12345, Seq: 100})[100:200])
}

// testLog: block 10 acknowledged at 1, then a failed write 3; block 11
// acknowledged at 2 and again at 4; block 12 in flight (5) when the writer
// died.
const testLog = `I 1 10
I 2 11
A 2
I 3 10
F 3 fdatasync: input/output error
I 4 11
A 4
I 5 12
`

func TestModelCheck(t *testing.T) {
	m := NewModel(3, 10, 6)
	st, err := m.Apply(strings.NewReader(testLog))
	require.NoError(t, err)
	require.Equal(t, 3, st.Acked)
	require.Equal(t, 2, st.Unacked)
	require.Equal(t, []string{"fdatasync: input/output error"}, st.Failures)
	require.EqualValues(t, 3, m.Acked)
	require.EqualValues(t, 6, m.NextSeq())

	w := func(blk int64, seq uint64) []byte { return block(Stamp{Writer: 3, Block: blk, Seq: seq}) }
	for _, c := range []struct {
		name  string
		block int64
		data  []byte
		err   error
		want  Problem // "" for a good block
		found uint64
	}{
		{"the acknowledged write", 10, w(10, 1), nil, "", 0},
		{"a failed write that landed anyway", 10, w(10, 3), nil, "", 0},
		{"zeros where a write was acknowledged", 10, make([]byte, BlockSize), nil, Lost, 0},
		{"an older acknowledged write", 11, w(11, 2), nil, Lost, 2},
		{"the last acknowledged write", 11, w(11, 4), nil, "", 0},
		{"zeros, the write in flight did not land", 12, make([]byte, BlockSize), nil, "", 0},
		{"the write in flight landed", 12, w(12, 5), nil, "", 0},
		{"never written", 13, make([]byte, BlockSize), nil, "", 0},
		{"a sequence number never issued to the block", 13, w(13, 4), nil, Torn, 4},
		{"another block's content", 10, w(11, 4), nil, Torn, 4},
		{"another writer's block", 10, block(Stamp{Writer: 9, Block: 10, Seq: 1}), nil, Torn, 1},
		{"a torn block", 11, append(w(11, 4)[:BlockSize/2:BlockSize/2], w(11, 2)[BlockSize/2:]...), nil, Torn, 0},
		{"a read error", 11, nil, errors.New("EIO"), ReadError, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := m.Check(c.block, c.data, c.err)
			if c.want == "" {
				require.Nil(t, f)
				return
			}
			require.NotNil(t, f)
			require.Equal(t, c.want, f.Problem)
			require.Equal(t, c.found, f.Found)
			require.Equal(t, m.AckedSeq(c.block), f.Expected)
			require.Contains(t, f.String(), "expected seq")
		})
	}

	// A later log acknowledges block 12: the old in-flight write no longer
	// passes.
	_, err = m.Apply(strings.NewReader("I 6 12\nA 6\n"))
	require.NoError(t, err)
	require.Equal(t, Lost, m.Check(12, w(12, 5), nil).Problem)
	require.Nil(t, m.Check(12, w(12, 6), nil))
}

func TestModelRefusesBadLogs(t *testing.T) {
	for _, log := range []string{
		"I 1 3\n",          // below the region
		"I 1 16\n",         // past it
		"I 1 10\nI 1 11\n", // a sequence number reused
		"A 1\n",            // nothing issued
		"I 1 10\nA 2\n",    // not the batch's last
		"X 1\n",
		"I\n",
		"I x 10\n",
	} {
		m := NewModel(1, 10, 6)
		_, err := m.Apply(strings.NewReader(log))
		require.Error(t, err, "%q", log)
	}
	// Sequence numbers go on across logs, never back.
	m := NewModel(1, 10, 6)
	_, err := m.Apply(strings.NewReader("I 1 10\nA 1\n"))
	require.NoError(t, err)
	_, err = m.Apply(strings.NewReader("I 1 11\nA 1\n"))
	require.ErrorContains(t, err, "reused")
}

// cancelAfter cancels once the log holds n acknowledgements.
type cancelAfter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	n      int
	cancel func()
}

func (c *cancelAfter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p[0] == 'A' || p[0] == 'F' {
		c.n--
		if c.n == 0 {
			c.cancel()
		}
	}
	return c.buf.Write(p)
}

// TestWriteReadCheck writes a file, reads it back and checks it, then
// damages it in each way the checker must catch.
func TestWriteReadCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	const first, blocks = 16, 64
	require.NoError(t, os.WriteFile(path, make([]byte, (first+blocks+16)*BlockSize), 0o600))
	m := NewModel(5, first, blocks)
	for _, direct := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		log := &cancelAfter{n: 40, cancel: cancel}
		cfg := WriterConfig{Path: path, Writer: 5, First: first, Blocks: blocks, StartSeq: m.NextSeq(), Seed: 1, MaxBatch: 4, Direct: direct}
		st, err := Write(ctx, cfg, log)
		cancel()
		if direct && errors.Is(err, unix.EINVAL) {
			continue // no O_DIRECT on this file system
		}
		require.NoError(t, err)
		require.Equal(t, 40, st.Batches)
		ls, err := m.Apply(&log.buf)
		require.NoError(t, err)
		require.Equal(t, st.Acked, ls.Acked)
		require.Zero(t, ls.Unacked)
	}
	check := func() Result {
		var out bytes.Buffer
		require.NoError(t, ReadRegion(path, first, blocks, &out))
		res, err := m.CheckStream(&out)
		require.NoError(t, err)
		require.EqualValues(t, blocks, res.Blocks)
		return res
	}
	require.True(t, check().OK())

	// Pick three blocks that were written at least twice.
	var twice []int64
	for b := int64(first); b < first+blocks && len(twice) < 3; b++ {
		if m.AckedSeq(b) > 1 {
			twice = append(twice, b)
		}
	}
	require.Len(t, twice, 3)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	older := block(Stamp{Writer: 5, Block: twice[0], Seq: m.AckedSeq(twice[0]) - 1})
	_, err = f.WriteAt(older, twice[0]*BlockSize)
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, BlockSize), twice[1]*BlockSize)
	require.NoError(t, err)
	_, err = f.WriteAt(older[:BlockSize/2], twice[2]*BlockSize)
	require.NoError(t, err)

	res := check()
	assert.Equal(t, 2, res.Lost)
	assert.Equal(t, 1, res.Torn)
	require.Len(t, res.Findings, 3)
	assert.Equal(t, Finding{Problem: Lost, Writer: 5, Block: twice[0], Expected: m.AckedSeq(twice[0]), Found: m.AckedSeq(twice[0]) - 1, Detail: "an older write"}, res.Findings[0])
	assert.Equal(t, twice[1], res.Findings[1].Block)
	assert.Equal(t, Torn, res.Findings[2].Problem)

	// A region past the end of the file reads as errors, one per block.
	var out bytes.Buffer
	require.NoError(t, ReadRegion(path, first+blocks+8, 16, &out))
	res, err = NewModel(5, first+blocks+8, 16).CheckStream(&out)
	require.NoError(t, err)
	assert.Equal(t, 8, res.ReadErrors)
}

// TestWriteFailures: a failed write ends a writer, or is logged and passed
// over with KeepGoing; the log then acknowledges none of it.
func TestWriteFailures(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	cfg := WriterConfig{Path: "/dev/full", Writer: 1, First: 0, Blocks: 8, StartSeq: 1, Seed: 1, MaxBatch: 2}
	var log bytes.Buffer
	st, err := Write(context.Background(), cfg, &log)
	require.ErrorIs(t, err, ErrIO)
	require.Equal(t, 1, st.Batches)
	m := NewModel(1, 0, 8)
	ls, err := m.Apply(&log)
	require.NoError(t, err)
	require.Zero(t, ls.Acked)
	require.Len(t, ls.Failures, 1)
	require.Contains(t, ls.Failures[0], "no space left on device")

	cfg.KeepGoing, cfg.StartSeq = true, m.NextSeq()
	ctx, cancel := context.WithCancel(context.Background())
	cl := &cancelAfter{n: 3, cancel: cancel}
	st, err = Write(ctx, cfg, cl)
	cancel()
	require.NoError(t, err)
	require.Equal(t, 3, st.Batches)
	ls, err = m.Apply(&cl.buf)
	require.NoError(t, err)
	require.Len(t, ls.Failures, 3)
	require.Zero(t, m.Acked)

	// The process form: exit status 3 and the failure in the log.
	logPath := filepath.Join(t.TempDir(), "log")
	var stdout, stderr bytes.Buffer
	code := Main([]string{"write", "-path", "/dev/full", "-writer", "1", "-blocks", "8", "-log", logPath}, &stdout, &stderr)
	require.Equal(t, ExitIOError, code, stderr.String())
	raw, err := os.ReadFile(logPath)
	require.NoError(t, err)
	require.Contains(t, string(raw), "\nF ")
	require.Equal(t, ExitUsage, Main([]string{"erase"}, &stdout, &stderr))
	require.Equal(t, ExitFailed, Main([]string{"read", "-path", filepath.Join(t.TempDir(), "none"), "-blocks", "1"}, &stdout, &stderr))
}
