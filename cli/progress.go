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
// that logs stay readable (and short operations print nothing).
type progressBar struct {
	w     io.Writer
	label string
	tty   bool
	every time.Duration
	start time.Time
	last  time.Time
	drawn bool
}

func newProgressBar(w io.Writer, label string) *progressBar {
	p := &progressBar{w: w, label: label, tty: isTerminal(w), start: time.Now()}
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
	now := time.Now()
	if now.Sub(p.last) < p.every && done < total {
		return
	}
	if !p.tty && now.Sub(p.start) < p.every {
		return
	}
	p.last = now
	pct := int64(100)
	if total > 0 {
		pct = 100 * done / total
	}
	rate := ""
	if secs := now.Sub(p.start).Seconds(); secs > 0.5 {
		rate = fmt.Sprintf(" %s/s", formatSize(int64(float64(done)/secs)))
	}
	if p.tty {
		bar := strings.Repeat("#", int(pct/5)) + strings.Repeat(".", 20-int(pct/5))
		fmt.Fprintf(p.w, "\r%s [%s] %3d%% %s/%s%s\033[K", p.label, bar, pct, formatSize(done), formatSize(total), rate)
		p.drawn = true
		return
	}
	fmt.Fprintf(p.w, "%s: %d%% (%s of %s)%s\n", p.label, pct, formatSize(done), formatSize(total), rate)
}

// finish ends the bar's line, if one was drawn.
func (p *progressBar) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
