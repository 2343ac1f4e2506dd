//go:build ceph

package rados_test

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
)

// BenchmarkEpochGuard measures what the ownership epoch guard costs: 4 KiB
// writes at random page offsets of a chunk object, one guarded and one
// not, interleaved so that both see the same load of a shared machine,
// with depth writes in flight (each writer goroutine alternates). It
// reports each kind's mean latency and their ratio; and the same for the
// first write of a chunk, which stamps the object when guarded, and for
// opening and creating a chunk under a floor.
func BenchmarkEpochGuard(b *testing.B) {
	cfg := cluster(b)
	be := open(b, cfg)
	defer be.Close()
	ctx := b.Context()
	kinds := []storage.Backend{be, be.WithEpoch(1, 0)}
	names := []string{"unguarded", "guarded"}
	page := random(b, 4*kib)
	for _, depth := range []int{1, 16} {
		b.Run("write4K/depth"+strconv.Itoa(depth), func(b *testing.B) {
			chunks := make([][]storage.Chunk, depth)
			for w := range chunks {
				for k, s := range kinds {
					c, err := s.OpenChunk(ctx, "bench/"+names[k]+"/"+strconv.Itoa(w), true)
					require.NoError(b, err)
					defer c.Close()
					_, err = c.WriteAt(make([]byte, 4*mib), 0) // allocated, as a disk's chunk is
					require.NoError(b, err)
					chunks[w] = append(chunks[w], c)
				}
			}
			var spent [2]time.Duration
			var mu sync.Mutex
			b.SetBytes(2 * 4 * kib)
			b.ResetTimer()
			n := b.N
			var wg sync.WaitGroup
			for w := range depth {
				wg.Go(func() {
					var mine [2]time.Duration
					for i := w; i < n; i += depth {
						off := int64((i*7919)%1024) * 4 * kib
						for k := range kinds {
							k = (k + i) % 2 // which kind goes first alternates too
							start := time.Now()
							if _, err := chunks[w][k].WriteAt(page, off); err != nil {
								b.Error(err)
								return
							}
							mine[k] += time.Since(start)
						}
					}
					mu.Lock()
					spent[0] += mine[0]
					spent[1] += mine[1]
					mu.Unlock()
				})
			}
			wg.Wait()
			report(b, spent)
		})
	}
	// The first write of each chunk also stamps it: a fresh handle on the
	// object each time (its opening untimed).
	b.Run("firstWrite4K", func(b *testing.B) {
		for k, s := range kinds {
			c, err := s.OpenChunk(ctx, "bench/first/"+names[k], true)
			require.NoError(b, err)
			c.Close()
		}
		var spent [2]time.Duration
		for i := 0; b.Loop(); i++ {
			for k := range kinds {
				k = (k + i) % 2
				c, err := kinds[k].OpenChunk(ctx, "bench/first/"+names[k], false)
				if err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				if _, err := c.WriteAt(page, int64(i%1024)*4*kib); err != nil {
					b.Fatal(err)
				}
				spent[k] += time.Since(start)
				c.Close()
			}
		}
		report(b, spent)
	})
	// Opening a chunk: with a floor, a guarded writer reads the object's
	// epoch where an unguarded one stats it; creating one, it creates and
	// stamps it in one operation. Guarded here with a floor, and the
	// objects carry its epoch, as after a takeover.
	floored := []storage.Backend{be, be.WithEpoch(1, 1)}
	for k, s := range floored {
		c, err := s.OpenChunk(ctx, "bench/open/"+names[k], true)
		require.NoError(b, err)
		c.Close()
	}
	b.Run("open", func(b *testing.B) {
		var spent [2]time.Duration
		for i := 0; b.Loop(); i++ {
			for k := range floored {
				k = (k + i) % 2
				start := time.Now()
				c, err := floored[k].OpenChunk(ctx, "bench/open/"+names[k], false)
				if err != nil {
					b.Fatal(err)
				}
				spent[k] += time.Since(start)
				c.Close()
			}
		}
		report(b, spent)
	})
	b.Run("create", func(b *testing.B) {
		var spent [2]time.Duration
		for i := 0; b.Loop(); i++ {
			for k := range floored {
				k = (k + i) % 2
				key := "bench/create/" + names[k]
				start := time.Now()
				c, err := floored[k].OpenChunk(ctx, key, true)
				if err != nil {
					b.Fatal(err)
				}
				spent[k] += time.Since(start)
				c.Close()
				if err := be.Delete(ctx, key); err != nil {
					b.Fatal(err)
				}
			}
		}
		report(b, spent)
	})
}

func report(b *testing.B, spent [2]time.Duration) {
	if b.N == 0 {
		return
	}
	u, g := float64(spent[0])/float64(b.N), float64(spent[1])/float64(b.N)
	b.ReportMetric(u/1e3, "unguarded-µs")
	b.ReportMetric(g/1e3, "guarded-µs")
	b.ReportMetric(g/u, "guarded/unguarded")
}
