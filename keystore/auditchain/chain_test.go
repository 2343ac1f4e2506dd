package auditchain

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func record(seq uint64, op string, extra string) []byte {
	return []byte(fmt.Sprintf(`{"seq":%d,"time":%q,"operationName":%q,"requestId":"r%d"%s}`, seq, t0.Add(time.Duration(seq)*time.Second).Format(time.RFC3339), op, seq, extra))
}

// testLog writes a chained log of files holding sizes[i] records each; the
// last file is the current one. It returns the head after every seq.
func testLog(t testing.TB, sizes ...int) (string, map[uint64]Head) {
	dir := t.TempDir()
	heads := map[uint64]Head{0: {}}
	var prev Hash
	var seq uint64
	for i, n := range sizes {
		var buf bytes.Buffer
		buf.Write(CheckpointLine(Head{seq, prev}, t0))
		buf.WriteByte('\n')
		for j := 0; j < n; j++ {
			seq++
			line, h := Seal(prev, record(seq, "KeyGet", ""))
			buf.Write(line)
			buf.WriteByte('\n')
			prev = h
			heads[seq] = Head{seq, h}
		}
		name := Current
		if i < len(sizes)-1 {
			name = RotatedName(seq)
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o600))
	}
	return dir, heads
}

func readLines(t *testing.T, dir, name string) [][]byte {
	data, err := os.ReadFile(filepath.Join(dir, name))
	require.NoError(t, err)
	lines, _ := Lines(data)
	return lines
}

func writeLines(t *testing.T, dir, name string, lines [][]byte) {
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), append(bytes.Join(lines, []byte("\n")), '\n'), 0o600))
}

func verify(t *testing.T, dir string, opt Options) *Report {
	rep, err := Verify(dir, opt)
	require.NoError(t, err)
	return rep
}

func requireProblem(t *testing.T, rep *Report, kind, file string, line int) {
	t.Helper()
	require.NotNil(t, rep.Problem, "the change was not detected")
	assert.False(t, rep.OK)
	assert.Equal(t, kind, rep.Problem.Kind, rep.Problem.Message)
	assert.Equal(t, file, rep.Problem.File, rep.Problem.Message)
	assert.Equal(t, line, rep.Problem.Line, rep.Problem.Message)
	assert.Contains(t, rep.Problem.Message, file)
}

func TestHeadRoundTrip(t *testing.T) {
	h := Head{42, Link(Hash{}, []byte("{}"))}
	got, err := ParseHead(h.String())
	require.NoError(t, err)
	assert.Equal(t, h, got)
	for _, bad := range []string{"", "42", "x:" + h.Hash.String(), "42:abc", "42:" + h.Hash.String()[:62] + "zz"} {
		_, err := ParseHead(bad)
		assert.Error(t, err, bad)
	}
	line, hash := Seal(Hash{}, []byte(`{"seq":1}`))
	assert.Equal(t, `{"seq":1,"hash":"`+hash.String()+`"}`, string(line))
	c, h2, ok := Split(line)
	require.True(t, ok)
	assert.Equal(t, `{"seq":1}`, string(c))
	assert.Equal(t, hash, h2)
}

func TestUntouchedLogVerifies(t *testing.T) {
	dir, heads := testLog(t, 5, 5, 3)
	rep := verify(t, dir, Options{})
	require.Nil(t, rep.Problem)
	assert.True(t, rep.OK)
	assert.Equal(t, 13, rep.Lines)
	assert.Equal(t, uint64(1), rep.FirstSeq)
	assert.Equal(t, heads[13].String(), rep.Head)
	live := heads[13]
	assert.True(t, verify(t, dir, Options{Live: &live, SinceHead: ptr(heads[7])}).OK)
	// A saved head on a file boundary is checked against the checkpoint.
	assert.True(t, verify(t, dir, Options{SinceHead: ptr(heads[10])}).OK)
}

func ptr[T any](v T) *T { return &v }

func TestAlteredLineLocated(t *testing.T) {
	dir, _ := testLog(t, 5, 5, 3)
	name := RotatedName(10)
	lines := readLines(t, dir, name)
	lines[3] = bytes.Replace(lines[3], []byte("KeyGet"), []byte("KeyDel"), 1) // seq 8
	writeLines(t, dir, name, lines)
	rep := verify(t, dir, Options{})
	requireProblem(t, rep, "altered", name, 4)
	assert.Equal(t, uint64(8), rep.Problem.Seq)
	assert.Equal(t, 7, rep.Lines, "lines before the altered one verified")
}

func TestRemovedLineLocated(t *testing.T) {
	dir, _ := testLog(t, 5, 5, 3)
	lines := readLines(t, dir, Current)
	writeLines(t, dir, Current, append(lines[:2:2], lines[3:]...)) // drop seq 12
	rep := verify(t, dir, Options{})
	requireProblem(t, rep, "removed", Current, 3)
	assert.Contains(t, rep.Problem.Message, "seq 12 to 12 were removed")
}

func TestSwappedLinesLocated(t *testing.T) {
	dir, _ := testLog(t, 5, 5, 3)
	name := RotatedName(5)
	lines := readLines(t, dir, name)
	lines[2], lines[4] = lines[4], lines[2] // seq 2 and 4
	writeLines(t, dir, name, lines)
	rep := verify(t, dir, Options{})
	requireProblem(t, rep, "reordered", name, 3)
	assert.Contains(t, rep.Problem.Message, "line 5")
}

func TestTruncationLocated(t *testing.T) {
	t.Run("rotated file cut at a line end", func(t *testing.T) {
		dir, _ := testLog(t, 5, 5, 3)
		name := RotatedName(10)
		lines := readLines(t, dir, name)
		writeLines(t, dir, name, lines[:4]) // seq 6..8 stay, 9 and 10 go
		rep := verify(t, dir, Options{})
		requireProblem(t, rep, "removed", name, 5)
		assert.Contains(t, rep.Problem.Message, "seq 9 to 10")
	})
	t.Run("a line cut in the middle", func(t *testing.T) {
		dir, _ := testLog(t, 5, 5, 3)
		data, err := os.ReadFile(filepath.Join(dir, Current))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, Current), data[:len(data)-40], 0o600))
		rep := verify(t, dir, Options{})
		requireProblem(t, rep, "truncated", Current, 4)
	})
	t.Run("current file cut at a line end, against the live head", func(t *testing.T) {
		dir, heads := testLog(t, 5, 5, 3)
		lines := readLines(t, dir, Current)
		writeLines(t, dir, Current, lines[:2])
		assert.True(t, verify(t, dir, Options{}).OK, "without a head, a clean cut at the end is invisible")
		live := heads[13]
		rep := verify(t, dir, Options{Live: &live})
		requireProblem(t, rep, "removed", Current, 3)
		rep = verify(t, dir, Options{SinceHead: ptr(heads[12])})
		requireProblem(t, rep, "removed", Current, 3)
	})
}

func TestRemovedFiles(t *testing.T) {
	t.Run("a middle file", func(t *testing.T) {
		dir, _ := testLog(t, 5, 5, 3)
		require.NoError(t, os.Remove(filepath.Join(dir, RotatedName(10))))
		rep := verify(t, dir, Options{})
		requireProblem(t, rep, "removed", RotatedName(5), 7)
	})
	t.Run("the oldest file without a retention line", func(t *testing.T) {
		dir, _ := testLog(t, 5, 5, 3)
		require.NoError(t, os.Remove(filepath.Join(dir, RotatedName(5))))
		rep := verify(t, dir, Options{})
		requireProblem(t, rep, "removed", RotatedName(10), 1)
		assert.Contains(t, rep.Problem.Message, "no retention line")
	})
	t.Run("the oldest file as a retention line says", func(t *testing.T) {
		dir, heads := retainedLog(t, 6)
		rep := verify(t, dir, Options{})
		require.Nil(t, rep.Problem)
		assert.Equal(t, uint64(6), rep.FirstSeq)
		// A head saved on the boundary is still checkable, one before it is not.
		assert.True(t, verify(t, dir, Options{SinceHead: ptr(heads[5])}).OK)
		rep = verify(t, dir, Options{SinceHead: ptr(heads[4])})
		requireProblem(t, rep, "head-unavailable", RotatedName(10), 1)
	})
	t.Run("more files than the retention line says", func(t *testing.T) {
		dir, _ := retainedLog(t, 6)
		require.NoError(t, os.Remove(filepath.Join(dir, RotatedName(10))))
		rep := verify(t, dir, Options{})
		require.NotNil(t, rep.Problem)
		// The file after the removed one no longer continues from a file
		// that is kept: it is now the first, and starts after seq 10.
		requireProblem(t, rep, "removed", RotatedName(15), 1)
		assert.Contains(t, rep.Problem.Message, "removed only lines before seq 6")
	})
}

// retainedLog is testLog(5, 5, 5, 3) with a retention line (kept from
// seq keptFrom) as the current file's last line and the first file removed.
func retainedLog(t *testing.T, keptFrom uint64) (string, map[uint64]Head) {
	dir, heads := testLog(t, 5, 5, 5, 3)
	lines := readLines(t, dir, Current)
	prev := heads[18]
	line, h := Seal(prev.Hash, record(19, RetentionOp, fmt.Sprintf(`,"retainedFromSeq":%d`, keptFrom)))
	heads[19] = Head{19, h}
	writeLines(t, dir, Current, append(lines, line))
	require.NoError(t, os.Remove(filepath.Join(dir, RotatedName(5))))
	return dir, heads
}

// TestSinceHeadCatchesRecomputedChain: someone who removes a line and
// recomputes the whole chain (renumbering the lines and rewriting every
// hash and checkpoint) makes a log that verifies on its own; a head saved
// before catches it.
func TestSinceHeadCatchesRecomputedChain(t *testing.T) {
	dir, heads := testLog(t, 5, 5, 3)
	saved := heads[11]
	// The forger drops seq 3 and rewrites everything after it.
	var records [][]byte
	for _, name := range []string{RotatedName(5), RotatedName(10), Current} {
		for _, l := range readLines(t, dir, name)[1:] {
			c, _, ok := Split(l)
			require.True(t, ok)
			records = append(records, c)
		}
		require.NoError(t, os.Remove(filepath.Join(dir, name)))
	}
	records = append(records[:2:2], records[3:]...)
	var prev Hash
	var seq uint64
	for i, n := range []int{5, 5, 2} {
		var buf bytes.Buffer
		buf.Write(CheckpointLine(Head{seq, prev}, t0))
		buf.WriteByte('\n')
		for j := 0; j < n; j++ {
			seq++
			c := bytes.Replace(records[seq-1], []byte(fmt.Sprintf(`{"seq":%d,`, seqOf(t, records[seq-1]))), []byte(fmt.Sprintf(`{"seq":%d,`, seq)), 1)
			line, h := Seal(prev, c)
			buf.Write(line)
			buf.WriteByte('\n')
			prev = h
		}
		name := Current
		if i < 2 {
			name = RotatedName(seq)
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o600))
	}
	assert.True(t, verify(t, dir, Options{}).OK, "a recomputed chain verifies on its own")
	rep := verify(t, dir, Options{SinceHead: &saved})
	requireProblem(t, rep, "head-mismatch", Current, 2)
	assert.Equal(t, uint64(11), rep.Problem.Seq)
}

func seqOf(t *testing.T, canonical []byte) uint64 {
	var n uint64
	_, err := fmt.Sscanf(string(canonical), `{"seq":%d,`, &n)
	require.NoError(t, err)
	return n
}

func TestAlteredCheckpointLocated(t *testing.T) {
	dir, heads := testLog(t, 5, 5, 3)
	name := RotatedName(10)
	lines := readLines(t, dir, name)
	lines[0] = CheckpointLine(Head{5, heads[4].Hash}, t0)
	writeLines(t, dir, name, lines)
	rep := verify(t, dir, Options{})
	requireProblem(t, rep, "altered", name, 1)
}

func TestUnchainedFilesBeforeTheChain(t *testing.T) {
	dir := t.TempDir()
	var old bytes.Buffer
	for seq := uint64(1); seq <= 4; seq++ {
		old.Write(record(seq, "KeyGet", ""))
		old.WriteByte('\n')
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, RotatedName(4)), old.Bytes(), 0o600))
	var cur bytes.Buffer
	cur.Write(CheckpointLine(Head{Seq: 4}, t0))
	cur.WriteByte('\n')
	line, _ := Seal(Hash{}, record(5, "KeyGet", ""))
	cur.Write(line)
	cur.WriteByte('\n')
	require.NoError(t, os.WriteFile(filepath.Join(dir, Current), cur.Bytes(), 0o600))
	rep := verify(t, dir, Options{})
	require.Nil(t, rep.Problem)
	assert.Equal(t, 4, rep.Unchained)
	assert.Equal(t, 1, rep.Lines)
}

func TestNoLog(t *testing.T) {
	_, err := Verify(t.TempDir(), Options{})
	require.ErrorIs(t, err, ErrNoLog)
}
