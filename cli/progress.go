package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// progressBar draws how far a long operation is on stderr: a bar redrawn in
// place when stderr is a terminal, otherwise a plain line now and then so
// that logs stay readable (and short operations print nothing). It shows the
// average rate in binary units and the time left at that rate; done ends it
// at 100 % with a line that says how much was copied and how fast.
//
// Hand-written rather than a progress library: it is one bar, redrawn from
// polled totals, and the CLI keeps its dependencies few.
type progressBar struct {
	w     io.Writer
	label string
	tty   bool
	every time.Duration
	now   func() time.Time
	start time.Time
	last  time.Time
	total int64
	drawn bool // a bar is on the current line
	shown bool // anything was printed
}

func newProgressBar(w io.Writer, label string) *progressBar {
	return newProgressBarAt(w, label, isTerminal(w), time.Now)
}

func newProgressBarAt(w io.Writer, label string, tty bool, now func() time.Time) *progressBar {
	p := &progressBar{w: w, label: label, tty: tty, now: now, start: now()}
	p.every = 5 * time.Second
	if p.tty {
		p.every = 100 * time.Millisecond
	}
	return p
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// update shows done of total bytes.
func (p *progressBar) update(done, total int64) {
	p.total = total
	now := p.now()
	if now.Sub(p.last) < p.every && done < total {
		return
	}
	if !p.tty && now.Sub(p.start) < p.every {
		return
	}
	p.last = now
	p.draw(done, total, now)
}

func (p *progressBar) draw(done, total int64, now time.Time) {
	pct := int64(100)
	if total > 0 {
		pct = min(100, 100*done/total)
	}
	elapsed := now.Sub(p.start)
	rate, eta := "", ""
	if secs := elapsed.Seconds(); secs > 0.5 && done > 0 {
		bps := float64(done) / secs
		rate = ", " + humanBytes(int64(bps)) + "/s"
		if done < total {
			eta = ", " + formatETA(time.Duration(float64(total-done)/bps*float64(time.Second))) + " left"
		}
	}
	p.shown = true
	if p.tty {
		bar := strings.Repeat("#", int(pct/5)) + strings.Repeat(".", 20-int(pct/5))
		fmt.Fprintf(p.w, "\r%s [%s] %3d%% %s of %s%s%s\033[K", p.label, bar, pct, humanBytes(done), humanBytes(total), rate, eta)
		p.drawn = true
		return
	}
	fmt.Fprintf(p.w, "%s: %d%% (%s of %s%s%s)\n", p.label, pct, humanBytes(done), humanBytes(total), rate, eta)
}

// done ends the bar of an operation that finished: at 100 %, then a line
// with what was copied, in how long and how fast. Nothing is printed for an
// operation too short to have shown any progress.
func (p *progressBar) done() {
	if !p.shown {
		return
	}
	now := p.now()
	if p.tty {
		p.draw(p.total, p.total, now)
		fmt.Fprintln(p.w)
		p.drawn = false
	}
	elapsed := now.Sub(p.start)
	rate := ""
	if secs := elapsed.Seconds(); secs > 0 {
		rate = ", " + humanBytes(int64(float64(p.total)/secs)) + "/s"
	}
	fmt.Fprintf(p.w, "%s: done, %s in %s%s\n", p.label, humanBytes(p.total), elapsed.Round(100*time.Millisecond), rate)
}

// finish ends the bar's line of an operation that failed or was
// interrupted, leaving the last state shown.
func (p *progressBar) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// humanBytes writes n bytes in binary units with one decimal: 512 B,
// 1.5 KiB, 378.1 MiB, 2.0 GiB.
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= 1024
		if v < 1024 || u == "TiB" {
			return fmt.Sprintf("%.1f %s", v, u)
		}
	}
	return "" // not reached
}

// formatETA writes a time left: 45s, 3m05s, 1h02m.
func formatETA(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	default:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
}
