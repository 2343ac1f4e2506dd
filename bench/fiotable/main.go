// Command fiotable turns the result lines of bench/fio-suite.sh into the
// Markdown table of docs/PERFORMANCE.md.
//
//	fiotable --dir RESULTS [--update docs/PERFORMANCE.md]
//
// RESULTS holds three files written by bench/run.sh:
//
//	meta.txt     "key: value" lines describing the run (date, machine, versions)
//	targets.txt  one line per target in run order: "LABEL ok|skipped|failed [why]"
//	lines.txt    the suite's output: "LABEL JOB MiB/s IOPS p99_us key=value..."
//
// The table goes to stdout. With --update it also replaces the part of the
// given file between the fio-table markers (creating the file, with a short
// how-to-reproduce section, when it does not exist, and adding the markers at
// its end when it has none).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Jobs in table order; the 1 MiB jobs are reported in MiB/s, the rest in IOPS.
var jobs = []string{"seq-write-1M", "seq-read-1M", "rand-write-4k", "rand-read-4k", "rand-rw-4k"}

// The targets every other one is compared with.
const (
	refPassthrough = "passthrough"
	refGocryptfs   = "gocryptfs"
	// refSameOptions is the passthrough with hostcryptd's mount options;
	// its column appears when the run has it.
	refSameOptions = "passthrough-hc"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("fiotable: ")
	dir := flag.String("dir", "", "directory holding meta.txt, targets.txt and lines.txt")
	update := flag.String("update", "", "Markdown file whose fio-table section to replace")
	flag.Parse()
	if *dir == "" || flag.NArg() != 0 {
		log.Fatal("usage: fiotable --dir RESULTS [--update FILE]")
	}
	r, err := load(*dir)
	if err != nil {
		log.Fatal(err)
	}
	table := render(r)
	fmt.Print(table)
	if *update != "" {
		if err := updateFile(*update, table); err != nil {
			log.Fatal(err)
		}
	}
}

// result is one line of the suite.
type result struct {
	label, job string
	failed     bool
	mibs, iops float64
	p99us      float64
	fields     map[string]string
}

// target is one row group of the table.
type target struct {
	label, status, why string
}

type run struct {
	meta    [][2]string
	targets []target
	results map[string]map[string]result // label -> job -> result
}

func load(dir string) (*run, error) {
	r := &run{results: map[string]map[string]result{}}
	err := eachLine(filepath.Join(dir, "meta.txt"), func(line string) error {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("meta line %q has no colon", line)
		}
		r.meta = append(r.meta, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = eachLine(filepath.Join(dir, "targets.txt"), func(line string) error {
		f := strings.SplitN(line, " ", 3)
		if len(f) < 2 {
			return fmt.Errorf("target line %q: want LABEL STATUS [why]", line)
		}
		t := target{label: f[0], status: f[1]}
		if len(f) == 3 {
			t.why = f[2]
		}
		r.targets = append(r.targets, t)
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = eachLine(filepath.Join(dir, "lines.txt"), func(line string) error {
		res, err := parseLine(line)
		if err != nil {
			return err
		}
		if r.results[res.label] == nil {
			r.results[res.label] = map[string]result{}
		}
		r.results[res.label][res.job] = res
		return nil
	})
	return r, err
}

// eachLine calls fn for every non-empty, non-comment line of a file; a
// missing file has no lines.
func eachLine(path string, fn func(string) error) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := fn(line); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return sc.Err()
}

// parseLine reads "LABEL JOB MiB/s IOPS p99_us key=value...".
func parseLine(line string) (result, error) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return result{}, fmt.Errorf("result line %q: want at least 5 columns", line)
	}
	res := result{label: f[0], job: f[1], fields: map[string]string{}}
	for _, kv := range f[5:] {
		if k, v, ok := strings.Cut(kv, "="); ok {
			res.fields[k] = v
		}
	}
	if f[2] == "FAILED" {
		res.failed = true
		return res, nil
	}
	var err error
	for i, dst := range []*float64{&res.mibs, &res.iops, &res.p99us} {
		if *dst, err = strconv.ParseFloat(f[2+i], 64); err != nil {
			return result{}, fmt.Errorf("result line %q: column %d: %w", line, 3+i, err)
		}
	}
	return res, nil
}

// throughput is what the table compares: MiB/s for 1 MiB jobs, IOPS otherwise.
func throughput(res result) float64 {
	if strings.HasSuffix(res.job, "-1M") {
		return res.mibs
	}
	return res.iops
}

func render(r *run) string {
	var b strings.Builder
	for _, kv := range r.meta {
		fmt.Fprintf(&b, "- %s: %s\n", kv[0], kv[1])
	}
	b.WriteString("\nThroughput: MiB/s for the 1 MiB jobs, IOPS for the 4 KiB jobs.\n\n")
	b.WriteString("| target | " + strings.Join(jobs, " | ") + " |\n")
	b.WriteString("| --- |" + strings.Repeat(" ---: |", len(jobs)) + "\n")
	for _, t := range r.targets {
		if t.status != "ok" {
			continue
		}
		cells := []string{t.label}
		for _, job := range jobs {
			cells = append(cells, r.cell(t.label, job, func(res result) string {
				return formatThroughput(res.job, throughput(res))
			}))
		}
		writeRow(&b, cells)
	}

	// The machine's load just before each job, when the suite measured it
	// (WAIT_IDLE): on a shared machine it says which numbers to trust.
	busy := r.hasField("pre_busy")
	b.WriteString("\nPer job: p99 completion latency, the daemon's CPU time per I/O, " +
		"and throughput as a multiple of the passthrough's and of gocryptfs's in this run")
	if busy {
		b.WriteString("; \"busy before\" is how busy the machine was with other work just before the job")
	}
	same := len(r.results[refSameOptions]) > 0
	if same {
		b.WriteString("; \"× same options\" compares with the passthrough mounted with hostcryptd's options (`" + refSameOptions + "`)")
	}
	b.WriteString(".\n\n| target | job | throughput | p99 µs | daemon CPU µs/I/O | × passthrough |")
	if same {
		b.WriteString(" × same options |")
	}
	b.WriteString(" × gocryptfs |")
	if busy {
		b.WriteString(" busy before |")
	}
	b.WriteString("\n| --- | --- | ---: | ---: | ---: | ---: |")
	if same {
		b.WriteString(" ---: |")
	}
	b.WriteString(" ---: |")
	if busy {
		b.WriteString(" ---: |")
	}
	b.WriteString("\n")
	for _, t := range r.targets {
		if t.status != "ok" {
			continue
		}
		for _, job := range jobs {
			res, ok := r.results[t.label][job]
			if !ok {
				continue
			}
			if res.failed {
				cells := []string{t.label, job, "failed", "", "", "", ""}
				if same {
					cells = append(cells, "")
				}
				if busy {
					cells = append(cells, "")
				}
				writeRow(&b, cells)
				continue
			}
			tp := formatThroughput(job, throughput(res))
			if m := res.fields["mode"]; m != "" && m != "direct" {
				tp += " (" + m + ")"
			}
			cells := []string{t.label, job, tp,
				strconv.FormatFloat(res.p99us, 'f', 0, 64),
				res.fields["daemon_us_per_io"], r.ratio(res, refPassthrough)}
			if same {
				cells = append(cells, r.ratio(res, refSameOptions))
			}
			cells = append(cells, r.ratio(res, refGocryptfs))
			if busy {
				cells = append(cells, res.fields["pre_busy"])
			}
			writeRow(&b, cells)
		}
	}

	var notes []string
	for _, t := range r.targets {
		switch {
		case t.status != "ok":
			notes = append(notes, fmt.Sprintf("- `%s` %s: %s", t.label, t.status, t.why))
		case t.why != "":
			notes = append(notes, fmt.Sprintf("- `%s`: %s", t.label, t.why))
		}
	}
	if len(notes) > 0 {
		b.WriteString("\n" + strings.Join(notes, "\n") + "\n")
	}
	return b.String()
}

// hasField reports whether any result carries a measured (not "-") value
// for the key.
func (r *run) hasField(key string) bool {
	for _, byJob := range r.results {
		for _, res := range byJob {
			if v := res.fields[key]; v != "" && v != "-" {
				return true
			}
		}
	}
	return false
}

// cell formats one job of one target, or says why there is no number.
func (r *run) cell(label, job string, format func(result) string) string {
	res, ok := r.results[label][job]
	switch {
	case !ok:
		return "–"
	case res.failed:
		return "failed"
	}
	s := format(res)
	if m := res.fields["mode"]; m != "" && m != "direct" {
		s += " (" + m + ")"
	}
	return s
}

// ratio is res's throughput over the reference target's on the same job.
func (r *run) ratio(res result, ref string) string {
	if res.label == ref {
		return "1.00"
	}
	base, ok := r.results[ref][res.job]
	if !ok || base.failed || throughput(base) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", throughput(res)/throughput(base))
}

func formatThroughput(job string, v float64) string {
	if strings.HasSuffix(job, "-1M") {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	if v >= 1000 {
		return strconv.FormatFloat(v/1000, 'f', 1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func writeRow(w io.Writer, cells []string) {
	fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
}

const (
	startMarker = "<!-- fio-table:start -->"
	endMarker   = "<!-- fio-table:end -->"
)

// skeleton is docs/PERFORMANCE.md before anything else was written into it.
const skeleton = `# Performance

## fio: hostcrypt next to an unencrypted FUSE passthrough and gocryptfs

` + startMarker + "\n" + endMarker + `

### How to reproduce

As root on a Debian machine with Go installed:

` + "```sh" + `
make bench-fio                                # every target, 8 s per job
RUNTIME=12 make bench-fio                     # longer jobs
TARGETS="passthrough gocryptfs" make bench-fio
UPDATE_DOCS=1 make bench-fio                  # also rewrite the table above
` + "```" + `

The harness (` + "`bench/run.sh`" + `) installs fio, fuse3 and gocryptfs when they are
missing, builds the passthrough and the daemons, starts every target on fresh
directories, writes a 1 GiB file (or the 1 GiB disk image) in full, and runs
the five jobs of ` + "`bench/fio-suite.sh`" + ` with O_DIRECT against it. The table is
written to ` + "`bench/results/latest.md`" + `; fio's own output stays in
` + "`bench/results/`" + ` next to it.
`

// splice returns doc with the text between the markers replaced by table.
func splice(doc, table string) (string, error) {
	start := strings.Index(doc, startMarker)
	end := strings.Index(doc, endMarker)
	if start < 0 || end < 0 || end < start {
		return "", fmt.Errorf("want %s followed by %s", startMarker, endMarker)
	}
	return doc[:start+len(startMarker)] + "\n" + table + doc[end:], nil
}

func updateFile(path, table string) error {
	doc, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		doc = []byte(skeleton)
	} else if err != nil {
		return err
	}
	if !strings.Contains(string(doc), startMarker) && !strings.Contains(string(doc), endMarker) {
		// Someone wrote the file first: add the section at its end.
		doc = append(doc, []byte("\n## fio comparison\n\n"+startMarker+"\n"+endMarker+"\n")...)
	}
	out, err := splice(string(doc), table)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, []byte(out), 0o644)
}
