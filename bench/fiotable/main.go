// Command fiotable turns the result lines of bench/fio-suite.sh into the
// Markdown table of docs/PERFORMANCE.md.
//
//	fiotable --dir RESULTS [--section NAME] [--update docs/PERFORMANCE.md]
//
// RESULTS holds three files written by bench/run.sh:
//
//	meta.txt     "key: value" lines describing the run (date, machine, versions)
//	targets.txt  one line per target in run order: "LABEL ok|skipped|failed [why]"
//	lines.txt    the suite's output: "LABEL JOB MiB/s IOPS p99_us key=value..."
//
// A run of several rounds (bench/run.sh ROUNDS) lists each target once per
// round in targets.txt and marks each line with round=N. The table then
// gives, for each job of each target, the round with the median throughput
// and the range over the rounds, and each ratio is the median of the ratios
// measured within a round.
//
// The table goes to stdout. With --update it also replaces the part of the
// given file between the markers <!-- NAME:start --> and <!-- NAME:end -->
// of the section NAME (default fio-table), creating the file, with a short
// how-to-reproduce section, when it does not exist, and adding the markers at
// its end when it has none.
package main

import (
	"bufio"
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Jobs in table order; the 1 MiB jobs are reported in MiB/s, the rest in IOPS.
var baseJobs = []string{"seq-write-1M", "seq-read-1M", "rand-write-4k", "rand-read-4k", "rand-rw-4k"}

// Jobs some targets run besides (4 KiB random reads and writes at queue
// depth 1, on a shared store): a column of their own when a run has them.
var extraJobs = []string{"rand-read-4k-qd1", "rand-write-4k-qd1"}

// The targets every other one is compared with, in column order, each
// with its column's header; a column appears when the run has its target.
// A target run on a fresh disk ("LABEL@fresh") is compared with the
// reference run fresh too.
var refs = []struct{ label, header string }{
	{"passthrough", "× passthrough"},
	// The passthrough with hostcryptd's mount options.
	{"passthrough-hc", "× same options"},
	// The same, fdatasyncing its files every flush interval.
	{"passthrough-sync", "× same durability"},
	// The same, also doing the cipher work of one layer (AES-256-GCM) or
	// of both (and XChaCha20-Poly1305) per 4 KiB block: what an encrypting
	// daemon cannot avoid, apart from everything else it does.
	{"passthrough-aes", "× same durability + AES"},
	{"passthrough-double", "× same durability + both ciphers"},
	{"gocryptfs", "× gocryptfs"},
	{"qemu-luks", "× QEMU LUKS"},
	// The customer-key disk with cache None: what the cached and the
	// double-encrypted rows are compared with.
	{"cmk", "× cmk"},
	// On a shared store: an unencrypted RBD image in the same pool through
	// librbd (what QEMU gets), and the hostcrypt disk there without a host
	// cache, what the cached ones are compared with.
	{"rbd", "× RBD image"},
	{"rados-none", "× RADOS None"},
}

// freshSuffix marks a target run on a fresh disk.
const freshSuffix = "@fresh"

// display is how the tables name a target.
func display(label string) string {
	if base, ok := strings.CutSuffix(label, freshSuffix); ok {
		return base + ", fresh"
	}
	return label
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("fiotable: ")
	dir := flag.String("dir", "", "directory holding meta.txt, targets.txt and lines.txt")
	update := flag.String("update", "", "Markdown file whose section to replace")
	section := flag.String("section", "fio-table", "the section of --update's file: between <!-- NAME:start --> and <!-- NAME:end -->")
	flag.Parse()
	if *dir == "" || flag.NArg() != 0 || !validSection(*section) {
		log.Fatal("usage: fiotable --dir RESULTS [--section NAME (letters, digits, '-')] [--update FILE]")
	}
	r, err := load(*dir)
	if err != nil {
		log.Fatal(err)
	}
	table := render(r)
	fmt.Print(table)
	if *update != "" {
		if err := updateFile(*update, *section, table); err != nil {
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
	failures           []string // of rounds that failed while others ran
}

type run struct {
	meta    [][2]string
	targets []target
	results map[string]map[string]result // label -> job -> the median round
	// rounds holds every round's result, in round order, when the run
	// had more than one; ratios then pair results of the same round.
	rounds map[string]map[string][]result
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
	seen := map[string]int{} // label -> index in r.targets
	err = eachLine(filepath.Join(dir, "targets.txt"), func(line string) error {
		f := strings.SplitN(line, " ", 3)
		if len(f) < 2 {
			return fmt.Errorf("target line %q: want LABEL STATUS [why]", line)
		}
		t := target{label: f[0], status: f[1]}
		if len(f) == 3 {
			t.why = f[2]
		}
		i, again := seen[t.label]
		if !again {
			seen[t.label] = len(r.targets)
			r.targets = append(r.targets, t)
			return nil
		}
		// A later round of a target: it counts as run if any round ran,
		// and the reasons of the rounds that did not are kept.
		prev := &r.targets[i]
		switch {
		case prev.status == t.status:
		case t.status == "ok":
			prev.failures = append(prev.failures, prev.status+": "+prev.why)
			prev.status, prev.why = t.status, t.why
		default:
			prev.failures = append(prev.failures, t.status+": "+t.why)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	rounds := map[string]map[string][]result{}
	several := false
	err = eachLine(filepath.Join(dir, "lines.txt"), func(line string) error {
		res, err := parseLine(line)
		if err != nil {
			return err
		}
		if rounds[res.label] == nil {
			rounds[res.label] = map[string][]result{}
		}
		rounds[res.label][res.job] = append(rounds[res.label][res.job], res)
		several = several || len(rounds[res.label][res.job]) > 1
		return nil
	})
	for label, byJob := range rounds {
		r.results[label] = map[string]result{}
		for job, rs := range byJob {
			r.results[label][job] = median(rs)
		}
	}
	if several {
		r.rounds = rounds
	}
	return r, err
}

// median returns the result with the median throughput among those that
// did not fail (of an even number, the lower of the middle two), or a
// failed one when all failed.
func median(rs []result) result {
	ok := completed(rs)
	if len(ok) == 0 {
		return rs[0]
	}
	return ok[(len(ok)-1)/2]
}

// completed returns the results that did not fail, by throughput.
func completed(rs []result) []result {
	var ok []result
	for _, res := range rs {
		if !res.failed {
			ok = append(ok, res)
		}
	}
	slices.SortStableFunc(ok, func(a, b result) int { return cmp.Compare(throughput(a), throughput(b)) })
	return ok
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

// columns returns the jobs of the table: the five, and those of extraJobs
// that some target ran.
func (r *run) columns() []string {
	cols := slices.Clone(baseJobs)
	for _, job := range extraJobs {
		for _, byJob := range r.results {
			if _, ok := byJob[job]; ok {
				cols = append(cols, job)
				break
			}
		}
	}
	return cols
}

func render(r *run) string {
	var b strings.Builder
	for _, kv := range r.meta {
		fmt.Fprintf(&b, "- %s: %s\n", kv[0], kv[1])
	}
	jobs := r.columns()
	b.WriteString("\nThroughput: MiB/s for the 1 MiB jobs, IOPS for the 4 KiB jobs")
	if len(jobs) > len(baseJobs) {
		b.WriteString(" (`-qd1`: at queue depth 1; the others at 16 or 32)")
	}
	b.WriteString(".\n\n")
	b.WriteString("| target | " + strings.Join(jobs, " | ") + " |\n")
	b.WriteString("| --- |" + strings.Repeat(" ---: |", len(jobs)) + "\n")
	for _, t := range r.targets {
		if t.status != "ok" {
			continue
		}
		cells := []string{display(t.label)}
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
	var present []int // indexes in refs of the references this run has
	for i, ref := range refs {
		if len(r.results[ref.label]) > 0 || len(r.results[ref.label+freshSuffix]) > 0 {
			present = append(present, i)
		}
	}
	b.WriteString("\nPer job: p99 completion latency, the daemon's CPU time per I/O, " +
		"and throughput as a multiple of each reference's in this run (a fresh disk's, of the reference's on a fresh disk)")
	if busy {
		b.WriteString("; \"busy before\" is how busy the machine was with other work just before the job")
	}
	for _, i := range present {
		switch refs[i].label {
		case "passthrough-hc":
			b.WriteString("; \"× same options\" compares with the passthrough mounted with hostcryptd's options (`passthrough-hc`)")
		case "passthrough-sync":
			b.WriteString("; \"× same durability\" with that passthrough fdatasyncing its files as often as hostcryptd flushes a disk (`passthrough-sync`)")
		case "rbd":
			b.WriteString("; \"× RBD image\" compares with an unencrypted RBD image in the same pool through librbd (`rbd`)")
		case "rados-none":
			b.WriteString("; \"× RADOS None\" with the hostcrypt disk on RADOS without a host cache (`rados-none`)")
		}
	}
	several := r.rounds != nil
	if several {
		b.WriteString("; the figures are those of the round with the median throughput, \"range\" is the lowest and highest throughput of the rounds, and a ratio is the median of the ratios within each round")
	}
	b.WriteString(".\n\n")
	cols := []string{"target", "job", "throughput"}
	if several {
		cols = append(cols, "range")
	}
	cols = append(cols, "p99 µs", "daemon CPU µs/I/O")
	for _, i := range present {
		cols = append(cols, refs[i].header)
	}
	if busy {
		cols = append(cols, "busy before")
	}
	writeRow(&b, cols)
	align := []string{"---", "---"}
	for len(align) < len(cols) {
		align = append(align, "---:")
	}
	writeRow(&b, align)
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
				cells := make([]string, len(cols))
				copy(cells, []string{display(t.label), job, "failed"})
				writeRow(&b, cells)
				continue
			}
			tp := formatThroughput(job, throughput(res))
			if m := res.fields["mode"]; m != "" && m != "direct" {
				tp += " (" + m + ")"
			}
			cells := []string{display(t.label), job, tp}
			if several {
				cells = append(cells, r.spread(t.label, job))
			}
			cells = append(cells, strconv.FormatFloat(res.p99us, 'f', 0, 64), res.fields["daemon_us_per_io"])
			for _, i := range present {
				cells = append(cells, r.ratio(res, refs[i].label))
			}
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
			notes = append(notes, fmt.Sprintf("- `%s` %s: %s", display(t.label), t.status, t.why))
		case t.why != "":
			notes = append(notes, fmt.Sprintf("- `%s`: %s", display(t.label), t.why))
		}
		for _, f := range t.failures {
			notes = append(notes, fmt.Sprintf("- `%s`, one round %s", display(t.label), f))
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
// Over several rounds it is the median of the ratios within each round
// that both targets completed: a slow stretch of the machine then weighs
// on both sides of a ratio, not on one.
func (r *run) ratio(res result, ref string) string {
	if strings.HasSuffix(res.label, freshSuffix) {
		ref += freshSuffix
	}
	if res.label == ref {
		return "1.00"
	}
	if r.rounds != nil {
		base := map[string]float64{} // round -> the reference's throughput
		for _, b := range r.rounds[ref][res.job] {
			if !b.failed && throughput(b) > 0 {
				base[b.fields["round"]] = throughput(b)
			}
		}
		var ratios []float64
		for _, x := range r.rounds[res.label][res.job] {
			if v, ok := base[x.fields["round"]]; ok && !x.failed {
				ratios = append(ratios, throughput(x)/v)
			}
		}
		if len(ratios) == 0 {
			return "–"
		}
		slices.Sort(ratios)
		return fmt.Sprintf("%.2f", ratios[(len(ratios)-1)/2])
	}
	base, ok := r.results[ref][res.job]
	if !ok || base.failed || throughput(base) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", throughput(res)/throughput(base))
}

// spread is the range of a job's throughput over the rounds that
// completed it, "low–high".
func (r *run) spread(label, job string) string {
	ok := completed(r.rounds[label][job])
	if len(ok) == 0 {
		return "–"
	}
	return formatThroughput(job, throughput(ok[0])) + "–" + formatThroughput(job, throughput(ok[len(ok)-1]))
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

// validSection reports whether name can name a section's markers.
func validSection(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range name {
		if !(c == '-' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// markers returns the start and end markers of a section.
func markers(section string) (start, end string) {
	return "<!-- " + section + ":start -->", "<!-- " + section + ":end -->"
}

// skeleton is docs/PERFORMANCE.md before anything else was written into it.
const skeleton = `# Performance

## fio: hostcrypt next to an unencrypted FUSE passthrough and gocryptfs

<!-- fio-table:start -->
<!-- fio-table:end -->

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

// splice returns doc with the text between the section's markers replaced
// by table.
func splice(doc, section, table string) (string, error) {
	startMarker, endMarker := markers(section)
	start := strings.Index(doc, startMarker)
	end := strings.Index(doc, endMarker)
	if start < 0 || end < 0 || end < start {
		return "", fmt.Errorf("want %s followed by %s", startMarker, endMarker)
	}
	return doc[:start+len(startMarker)] + "\n" + table + doc[end:], nil
}

func updateFile(path, section, table string) error {
	doc, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		doc = []byte(skeleton)
	} else if err != nil {
		return err
	}
	startMarker, endMarker := markers(section)
	if !strings.Contains(string(doc), startMarker) && !strings.Contains(string(doc), endMarker) {
		// Someone wrote the file first: add the section at its end.
		doc = append(doc, []byte("\n## fio comparison ("+section+")\n\n"+startMarker+"\n"+endMarker+"\n")...)
	}
	out, err := splice(string(doc), section, table)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, []byte(out), 0o644)
}
