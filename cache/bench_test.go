package cache_test

import (
	"context"
	mrand "math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/storage"
	"hostcrypt/storage/latency"
	"hostcrypt/storage/local"
)

// benchRegion is the byte range of one chunk object that the benchmarks
// read and write at random: a 4 MiB chunk, as the engine uses by default.
const benchRegion = 4 * mib

// benchChunk opens a cache in mode over a local store 1 ms away, with
// benchRegion written, and returns one chunk of it.
func benchChunk(b *testing.B, mode cache.Mode) (*cache.Cache, storage.Chunk) {
	root := b.TempDir()
	l, err := local.Open(filepath.Join(root, "store"))
	require.NoError(b, err)
	c, err := cache.New(context.Background(), latency.New(l, time.Millisecond), cache.Options{
		Mode: mode, Dir: filepath.Join(root, "cache"), MaxBytes: 64 * mib,
	})
	require.NoError(b, err)
	b.Cleanup(func() { c.Close() })
	ch, err := c.OpenChunk(context.Background(), "disk/chunks/00000000", true)
	require.NoError(b, err)
	b.Cleanup(func() { ch.Close() })
	_, err = ch.WriteAt(random(b, benchRegion), 0)
	require.NoError(b, err)
	require.NoError(b, c.Flush(context.Background()))
	return c, ch
}

// BenchmarkRandomRead4K reads 4 KiB at random page-aligned offsets. The
// ReadOnly cache is warmed first by reading the whole region once.
func BenchmarkRandomRead4K(b *testing.B) {
	for _, mode := range []cache.Mode{cache.None, cache.ReadOnly} {
		for _, par := range []bool{false, true} {
			name := string(mode)
			if par {
				name += "/parallel"
			}
			b.Run(name, func(b *testing.B) {
				c, ch := benchChunk(b, mode)
				if mode != cache.None {
					warm := make([]byte, benchRegion)
					_, err := ch.ReadAt(warm, 0)
					require.NoError(b, err)
				}
				b.SetBytes(4096)
				b.ResetTimer()
				if par {
					b.RunParallel(func(pb *testing.PB) {
						p := make([]byte, 4096)
						for pb.Next() {
							if _, err := ch.ReadAt(p, mrand.Int64N(benchRegion/4096)*4096); err != nil {
								b.Error(err)
								return
							}
						}
					})
				} else {
					p := make([]byte, 4096)
					for b.Loop() {
						if _, err := ch.ReadAt(p, mrand.Int64N(benchRegion/4096)*4096); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.StopTimer()
				s := c.Stats()
				if mode != cache.None && s.Hits+s.Misses > 0 {
					b.ReportMetric(float64(s.Hits)/float64(s.Hits+s.Misses), "hit-ratio")
				}
			})
		}
	}
}

// BenchmarkRandomWrite4K writes 4 KiB at random page-aligned offsets; the
// ReadWrite cache absorbs them between background flushes.
func BenchmarkRandomWrite4K(b *testing.B) {
	for _, mode := range []cache.Mode{cache.None, cache.ReadWrite} {
		for _, par := range []bool{false, true} {
			name := string(mode)
			if par {
				name += "/parallel"
			}
			b.Run(name, func(b *testing.B) {
				_, ch := benchChunk(b, mode)
				data := random(b, 4096)
				b.SetBytes(4096)
				b.ResetTimer()
				if par {
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if _, err := ch.WriteAt(data, mrand.Int64N(benchRegion/4096)*4096); err != nil {
								b.Error(err)
								return
							}
						}
					})
				} else {
					for b.Loop() {
						if _, err := ch.WriteAt(data, mrand.Int64N(benchRegion/4096)*4096); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}
