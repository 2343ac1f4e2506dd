package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseLine(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		want    result
		wantErr bool
	}{
		{
			name: "direct job",
			line: "passthrough rand-write-4k 60.1 15381 11599.9 mode=direct ios=46159 daemon_us_per_io=29.2",
			want: result{label: "passthrough", job: "rand-write-4k", mibs: 60.1, iops: 15381, p99us: 11599.9,
				fields: map[string]string{"mode": "direct", "ios": "46159", "daemon_us_per_io": "29.2"}},
		},
		{
			name: "failed job",
			line: "gocryptfs seq-read-1M FAILED - - mode=direct rc=1",
			want: result{label: "gocryptfs", job: "seq-read-1M", failed: true,
				fields: map[string]string{"mode": "direct", "rc": "1"}},
		},
		{name: "too short", line: "a b c", wantErr: true},
		{name: "not a number", line: "a b x 1 2", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLine(tt.line)
			if tt.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestFormatThroughput(t *testing.T) {
	assert.Equal(t, "4718", formatThroughput("seq-write-1M", 4718.4))
	assert.Equal(t, "126.0k", formatThroughput("rand-write-4k", 125990))
	assert.Equal(t, "950", formatThroughput("rand-read-4k", 950))
}

func TestRenderRatiosAndSkips(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644))
	}
	write("meta.txt", "date: 2026-11-28\nruntime per job: 8 s\n")
	write("targets.txt", "passthrough ok\ngocryptfs ok\nhostcrypt-pmk ok\ncmk skipped the CLI has no des group yet\n")
	write("lines.txt", strings.Join([]string{
		"# LABEL JOB MiB/s IOPS p99_us key=value...",
		"passthrough seq-write-1M 4000.0 4000 900.0 mode=direct daemon_us_per_io=300.0",
		"passthrough rand-write-4k 400.0 100000 500.0 mode=direct daemon_us_per_io=29.0",
		"gocryptfs seq-write-1M 1000.0 1000 3000.0 mode=direct daemon_us_per_io=900.0",
		"gocryptfs rand-write-4k 25.0 6400 9000.0 mode=direct daemon_us_per_io=81.0",
		"hostcrypt-pmk seq-write-1M 2000.0 2000 1500.0 mode=direct daemon_us_per_io=500.0",
		"hostcrypt-pmk rand-write-4k FAILED - - mode=direct rc=1",
	}, "\n"))
	r, err := load(dir)
	require.NoError(t, err)
	out := render(r)
	assert.Contains(t, out, "- runtime per job: 8 s\n")
	assert.Contains(t, out, "| passthrough | 4000 | – | 100.0k | – | – |\n")
	assert.Contains(t, out, "| hostcrypt-pmk | 2000 | – | failed | – | – |\n")
	assert.Contains(t, out, "| hostcrypt-pmk | seq-write-1M | 2000 | 1500 | 500.0 | 0.50 | 2.00 |\n")
	assert.Contains(t, out, "| gocryptfs | rand-write-4k | 6.4k | 9000 | 81.0 | 0.06 | 1.00 |\n")
	assert.Contains(t, out, "- `cmk` skipped: the CLI has no des group yet\n")
	assert.NotContains(t, out, "| cmk |")
}

func TestRenderBusyColumnOnlyWhenMeasured(t *testing.T) {
	r := &run{
		targets: []target{{label: "passthrough", status: "ok"}},
		results: map[string]map[string]result{"passthrough": {
			"rand-read-4k": {label: "passthrough", job: "rand-read-4k", iops: 70000, p99us: 600,
				fields: map[string]string{"mode": "direct", "daemon_us_per_io": "25.0", "pre_busy": "-"}},
		}},
	}
	assert.NotContains(t, render(r), "busy before")

	r.results["passthrough"]["rand-read-4k"].fields["pre_busy"] = "12%"
	assert.Contains(t, render(r), "| passthrough | rand-read-4k | 70.0k | 600 | 25.0 | 1.00 | 12% |\n")
}

func TestRenderSameOptionsColumn(t *testing.T) {
	res := func(label string, iops float64) result {
		return result{label: label, job: "rand-write-4k", iops: iops, p99us: 100,
			fields: map[string]string{"mode": "direct", "daemon_us_per_io": "20.0"}}
	}
	r := &run{
		targets: []target{{label: "passthrough", status: "ok"}, {label: "cmk", status: "ok"}},
		results: map[string]map[string]result{
			"passthrough": {"rand-write-4k": res("passthrough", 40000)},
			"cmk":         {"rand-write-4k": res("cmk", 30000)},
		},
	}
	assert.NotContains(t, render(r), "same options")
	r.targets = append(r.targets, target{label: "passthrough-hc", status: "ok"})
	r.results["passthrough-hc"] = map[string]result{"rand-write-4k": res("passthrough-hc", 32000)}
	out := render(r)
	assert.Contains(t, out, "× same options")
	assert.Contains(t, out, "| cmk | rand-write-4k | 30.0k | 100 | 20.0 | 0.75 | 0.94 | 1.00 |\n")
}

func TestUpdateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "PERFORMANCE.md")
	startMarker, endMarker := markers("fio-table")

	require.NoError(t, updateFile(path, "fio-table", "first\n"))
	doc, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Contains(t, string(doc), startMarker+"\nfirst\n"+endMarker)
	assert.Contains(t, string(doc), "How to reproduce")

	// Text outside the markers survives a second run.
	edited := strings.Replace(string(doc), "# Performance\n", "# Performance\n\nIntro by hand.\n", 1) +
		"\n## Profiles\n"
	require.NoError(t, os.WriteFile(path, []byte(edited), 0o644))
	require.NoError(t, updateFile(path, "fio-table", "second\n"))
	doc, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Contains(t, string(doc), startMarker+"\nsecond\n"+endMarker)
	assert.NotContains(t, string(doc), "first")
	assert.Contains(t, string(doc), "Intro by hand.")
	assert.Contains(t, string(doc), "## Profiles\n")
}

func TestUpdateFileWithoutMarkers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "PERFORMANCE.md")
	startMarker, endMarker := markers("fio-table")
	require.NoError(t, os.WriteFile(path, []byte("# Performance\n\nWritten by hand.\n"), 0o644))
	require.NoError(t, updateFile(path, "fio-table", "table\n"))
	doc, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(doc), "# Performance\n\nWritten by hand.\n"))
	assert.Contains(t, string(doc), startMarker+"\ntable\n"+endMarker)

	// Markers in the wrong order are an error, not a guess.
	require.NoError(t, os.WriteFile(path, []byte(endMarker+"\n"+startMarker+"\n"), 0o644))
	assert.Error(t, updateFile(path, "fio-table", "table\n"))
}

func TestRenderRounds(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644))
	}
	write("meta.txt", "date: 2026-11-30\n")
	write("targets.txt", strings.Join([]string{
		"passthrough-hc ok the same options", "cmk ok a CMK disk", "gocryptfs ok",
		"passthrough-hc ok the same options", "cmk ok a CMK disk", "gocryptfs failed it did not mount",
		"passthrough-hc ok the same options", "cmk ok a CMK disk", "gocryptfs ok",
	}, "\n"))
	line := func(label, job string, v float64, p99 int, round int) string {
		return fmt.Sprintf("%s %s %.1f %.0f %d mode=direct daemon_us_per_io=%d.0 round=%d",
			label, job, v/256, v, p99, p99/100, round)
	}
	write("lines.txt", strings.Join([]string{
		line("passthrough-hc", "rand-write-4k", 50000, 1000, 1),
		line("cmk", "rand-write-4k", 35000, 2100, 1),
		line("cmk", "seq-write-1M", 1100*256, 1500, 1),
		line("gocryptfs", "rand-write-4k", 5000, 9000, 1),
		line("passthrough-hc", "rand-write-4k", 60000, 1100, 2),
		line("cmk", "rand-write-4k", 51000, 2200, 2),
		"cmk seq-write-1M FAILED - - mode=direct rc=1 round=2",
		line("passthrough-hc", "rand-write-4k", 40000, 1200, 3),
		line("cmk", "rand-write-4k", 38000, 2300, 3),
		line("cmk", "seq-write-1M", 900*256, 1400, 3),
		line("gocryptfs", "rand-write-4k", 7000, 9100, 3),
	}, "\n"))
	r, err := load(dir)
	require.NoError(t, err)
	out := render(r)

	// One row per target, whatever the number of rounds.
	assert.Equal(t, 1, strings.Count(out, "| cmk | rand-write-4k |"))
	// The median round (38.0k, round 3) with its own latency; the range of
	// the three; the ratio is the median of 0.70, 0.85 and 0.95, not the
	// ratio of the medians (0.76). Against gocryptfs only rounds 1 and 3
	// pair up: 7.00 and 5.43, of which the lower.
	assert.Contains(t, out, "| cmk | rand-write-4k | 38.0k | 35.0k–51.0k | 2300 | 23.0 | 0.85 | 5.43 | 1.00 |\n")
	// A round that failed a job is left out of its median and range.
	assert.Contains(t, out, "| cmk | seq-write-1M | 900 | 900–1100 | 1400 |")
	// gocryptfs ran in two rounds of three: it has a row, and a note.
	assert.Contains(t, out, "| gocryptfs | rand-write-4k | 5.0k | 5.0k–7.0k |")
	assert.Contains(t, out, "- `gocryptfs`, one round failed: it did not mount\n")
	assert.Contains(t, out, "\"range\" is the lowest and highest")
}

// A target run on a fresh disk is its own row, compared with the
// references run fresh too; the same-durability and QEMU columns appear
// with their targets.
func TestRenderFreshStateAndPeers(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644))
	}
	write("meta.txt", "date: 2026-12-04\n")
	write("targets.txt", strings.Join([]string{
		"passthrough-sync ok synced", "qemu-luks ok QEMU", "cmk ok a CMK disk",
		"qemu-luks@fresh ok QEMU", "cmk@fresh ok a CMK disk",
	}, "\n"))
	write("lines.txt", strings.Join([]string{
		"passthrough-sync rand-write-4k 200.0 50000 900.0 mode=direct daemon_us_per_io=20.0",
		"qemu-luks rand-write-4k 80.0 20000 900.0 mode=direct daemon_us_per_io=40.0",
		"cmk rand-write-4k 160.0 40000 900.0 mode=direct daemon_us_per_io=30.0",
		"qemu-luks@fresh rand-write-4k 80.0 20000 900.0 mode=direct daemon_us_per_io=40.0",
		"cmk@fresh rand-write-4k 120.0 30000 900.0 mode=direct daemon_us_per_io=30.0",
	}, "\n"))
	r, err := load(dir)
	require.NoError(t, err)
	out := render(r)
	assert.Contains(t, out, "| target | job | throughput | p99 µs | daemon CPU µs/I/O | × same durability | × QEMU LUKS | × cmk |\n")
	assert.Contains(t, out, "| cmk | rand-write-4k | 40.0k | 900 | 30.0 | 0.80 | 2.00 | 1.00 |\n")
	assert.Contains(t, out, "| cmk, fresh | rand-write-4k | 30.0k | 900 | 30.0 | – | 1.50 | 1.00 |\n",
		"compared with QEMU on a fresh disk; no fresh same-durability row")
	assert.Contains(t, out, "| cmk, fresh | – | – | 30.0k | – | – |\n")
	assert.Contains(t, out, "- `cmk, fresh`: a CMK disk\n")
}

// A section of its own (the shared store's table) is written between its
// own markers and leaves the other table alone.
func TestUpdateFileSection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "PERFORMANCE.md")
	doc := "# Performance\n\n<!-- fio-table:start -->\nlocal\n<!-- fio-table:end -->\n\n" +
		"## RADOS\n\n<!-- rados-table:start -->\nold\n<!-- rados-table:end -->\n\nAfter.\n"
	require.NoError(t, os.WriteFile(path, []byte(doc), 0o644))
	require.NoError(t, updateFile(path, "rados-table", "new\n"))
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, strings.Replace(doc, "\nold\n", "\nnew\n", 1), string(got))

	assert.True(t, validSection("rados-table"))
	for _, bad := range []string{"", "a b", "x-->", "a:start"} {
		assert.False(t, validSection(bad), bad)
	}
}

// The shared store's run: the jobs at queue depth 1 get columns of their
// own, and each row is compared with the RBD image and with the disk
// without a host cache, round by round.
func TestRenderSharedStore(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644))
	}
	write("meta.txt", "date: 2026-12-05\nload average: 3.1 2.9 2.5 at the start\n")
	write("targets.txt", "rbd ok an RBD image\nrados-none ok None\nrados-readonly ok ReadOnly\n"+
		"rbd ok an RBD image\nrados-none ok None\nrados-readonly ok ReadOnly\n")
	write("lines.txt", strings.Join([]string{
		"rbd rand-read-4k-qd1 4.0 1000 900.0 mode=direct daemon_us_per_io=n/a round=1",
		"rados-none rand-read-4k-qd1 3.2 800 1200.0 mode=direct daemon_us_per_io=40.0 round=1",
		"rados-readonly rand-read-4k-qd1 40.0 10000 150.0 mode=direct daemon_us_per_io=30.0 round=1",
		"rados-none rand-write-4k 20.0 5000 9000.0 mode=direct daemon_us_per_io=50.0 round=1",
		"rbd rand-write-4k 25.0 6400 7000.0 mode=direct daemon_us_per_io=n/a round=1",
		"rbd rand-read-4k-qd1 4.0 1000 900.0 mode=direct daemon_us_per_io=n/a round=2",
		"rados-none rand-read-4k-qd1 2.4 600 1300.0 mode=direct daemon_us_per_io=40.0 round=2",
		"rados-readonly rand-read-4k-qd1 36.0 9000 160.0 mode=direct daemon_us_per_io=30.0 round=2",
	}, "\n"))
	r, err := load(dir)
	require.NoError(t, err)
	out := render(r)
	assert.Contains(t, out, "- load average: 3.1 2.9 2.5 at the start\n")
	// rand-read-4k-qd1 has a column; rand-write-4k-qd1, which nobody ran, has none.
	assert.Contains(t, out, "| target | seq-write-1M | seq-read-1M | rand-write-4k | rand-read-4k | rand-rw-4k | rand-read-4k-qd1 |\n")
	assert.Contains(t, out, "| rados-readonly | – | – | – | – | – | 9.0k |\n")
	assert.Contains(t, out, "| target | job | throughput | range | p99 µs | daemon CPU µs/I/O | × RBD image | × RADOS None |\n")
	// Ratios of the rounds: None 0.80 and 0.60 of RBD, the lower of the two;
	// ReadOnly 12.5× and 15× None, the lower.
	assert.Contains(t, out, "| rados-none | rand-read-4k-qd1 | 600 | 600–800 | 1300 | 40.0 | 0.60 | 1.00 |\n")
	assert.Contains(t, out, "| rados-readonly | rand-read-4k-qd1 | 9.0k | 9.0k–10.0k | 160 | 30.0 | 9.00 | 12.50 |\n")
	assert.Contains(t, out, "| rados-none | rand-write-4k | 5.0k | 5.0k–5.0k | 9000 | 50.0 | 0.78 | 1.00 |\n")
	assert.Contains(t, out, "`-qd1`: at queue depth 1")
}
