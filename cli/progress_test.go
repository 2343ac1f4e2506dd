package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// clock is a fake time source the test moves by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestProgressBarEndsAt100(t *testing.T) {
	for _, tty := range []bool{true, false} {
		var buf bytes.Buffer
		ck := &clock{t: time.Unix(1000, 0)}
		p := newProgressBarAt(&buf, "creating image img1", tty, ck.now)
		const total = 1 << 30
		ck.t = ck.t.Add(6 * time.Second)
		p.update(total/4, total) // 256 MiB in 6 s
		// The operation finished before the next poll saw more.
		ck.t = ck.t.Add(4 * time.Second)
		p.done()
		out := buf.String()
		require.Contains(t, out, "25", "the state when it was polled")
		require.Contains(t, out, "256.0 MiB of 1.0 GiB, 42.7 MiB/s", "a human rate")
		require.Contains(t, out, "18s left", "an ETA")
		require.Contains(t, out, "creating image img1: done, 1.0 GiB in 10s, 102.4 MiB/s\n", "a final line")
		if tty {
			require.Contains(t, out, "[####################] 100% 1.0 GiB of 1.0 GiB", "the bar ends full")
		}
		require.NotRegexp(t, `\d{6,}/s`, out, "no raw byte counts")
	}
}

func TestProgressBarQuietWhenShort(t *testing.T) {
	var buf bytes.Buffer
	ck := &clock{t: time.Unix(1000, 0)}
	p := newProgressBarAt(&buf, "copy", false, ck.now)
	ck.t = ck.t.Add(time.Second)
	p.update(10, 100)
	p.done()
	require.Empty(t, buf.String(), "a short operation prints nothing when stderr is not a terminal")
}

func TestProgressBarFailureKeepsLastState(t *testing.T) {
	var buf bytes.Buffer
	ck := &clock{t: time.Unix(1000, 0)}
	p := newProgressBarAt(&buf, "copy", true, ck.now)
	ck.t = ck.t.Add(time.Second)
	p.update(30, 100)
	p.finish()
	out := buf.String()
	require.Contains(t, out, " 30% ")
	require.NotContains(t, out, "100%")
	require.True(t, strings.HasSuffix(out, "\n"))
}

func TestHumanUnits(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 396446056: "378.1 MiB", 2 << 30: "2.0 GiB", 3 << 40: "3.0 TiB"} {
		require.Equal(t, want, humanBytes(n))
	}
	for d, want := range map[time.Duration]string{45 * time.Second: "45s", 185 * time.Second: "3m05s", 3720 * time.Second: "1h02m"} {
		require.Equal(t, want, formatETA(d))
	}
}
