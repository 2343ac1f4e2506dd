package cache

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The estimate is the fastest call of the last windows: calls that queue
// behind others do not make a near store look far, and a far store is
// never fast. It switches with hysteresis.
func TestLatencyEstimate(t *testing.T) {
	var logs bytes.Buffer
	p := newPolicy(Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	require.False(t, p.isSlow.Load(), "unmeasured: as fast as the cache")
	feed := func(d ...time.Duration) {
		for i := 0; i < latencyWindow; i++ {
			p.observe(d[i%len(d)], 4096)
		}
	}
	// A local disk under a queue of 32: most calls wait, a few do not.
	feed(900*time.Microsecond, 800*time.Microsecond, 40*time.Microsecond)
	require.Equal(t, 40*time.Microsecond, p.latency())
	require.False(t, p.isSlow.Load())
	// Large calls are not latency samples.
	for range 2 * latencyWindow {
		p.observe(time.Second, 1<<20)
	}
	require.Equal(t, 40*time.Microsecond, p.latency())
	// A store 1 ms away: slow once a whole window was.
	feed(time.Millisecond)
	require.False(t, p.isSlow.Load(), "the previous window still had a fast call")
	feed(time.Millisecond, 3*time.Millisecond)
	require.True(t, p.isSlow.Load())
	require.Equal(t, time.Millisecond, p.latency())
	// Between half the threshold and the threshold: no change either way.
	feed(200 * time.Microsecond)
	feed(200 * time.Microsecond)
	require.True(t, p.isSlow.Load())
	feed(100 * time.Microsecond)
	require.False(t, p.isSlow.Load())
	feed(200 * time.Microsecond)
	feed(200 * time.Microsecond)
	require.False(t, p.isSlow.Load())
	// Each change, and only a change, is logged at debug level.
	require.Equal(t, 1, strings.Count(logs.String(), `msg="host cache: random I/O cached" storage_latency=1ms`), logs.String())
	require.Equal(t, 1, strings.Count(logs.String(), `msg="host cache: random I/O goes around" storage_latency=100µs`), logs.String())
	require.Equal(t, 2, strings.Count(logs.String(), "\n"), logs.String())

	always := newPolicy(Options{SlowStorage: -1})
	require.True(t, always.isSlow.Load())
	for range latencyWindow {
		always.observe(time.Microsecond, 4096)
	}
	require.True(t, always.isSlow.Load(), "negative: random I/O is always cached")
}

func TestStreams(t *testing.T) {
	var s streams
	const cutoff = 256 << 10
	require.False(t, s.add(0, 64<<10, cutoff))
	require.False(t, s.add(64<<10, 64<<10, cutoff))
	require.False(t, s.add(128<<10, 64<<10, cutoff))
	require.True(t, s.add(192<<10, 64<<10, cutoff), "the stream reached the cut-off")
	require.True(t, s.add(256<<10, 4096, cutoff), "and goes on")
	require.False(t, s.add(10<<20, 4096, cutoff), "random")
	require.True(t, s.add(20<<20, cutoff, cutoff), "large by itself")
	// Four streams at once, interleaved, are each followed.
	var m streams
	for i := range int64(4) {
		for k := range int64(4) {
			got := m.add(k<<30+i*(64<<10), 64<<10, cutoff)
			require.Equal(t, i == 3, got, "stream %d piece %d", k, i)
		}
	}
	require.False(t, new(streams).add(0, 1<<30, 0), "no cut-off")
}

// Samples from many goroutines at once are each counted once: the windows
// close after every latencyWindow of them, and the estimate is one of the
// samples.
func TestLatencyConcurrent(t *testing.T) {
	p := newPolicy(Options{})
	const goroutines, each = 8, 2000*latencyWindow + 3
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				p.observe(time.Duration(300+g+i%7)*time.Microsecond, 4096)
			}
		})
	}
	wg.Wait()
	require.Equal(t, uint64(goroutines*each%latencyWindow), p.win.Load()>>winShift, "samples in the open window")
	// The fastest of the last windows, whichever samples they took.
	require.GreaterOrEqual(t, p.latency(), 300*time.Microsecond)
	require.LessOrEqual(t, p.latency(), (300+goroutines+6)*time.Microsecond)
	require.True(t, p.isSlow.Load())
}
