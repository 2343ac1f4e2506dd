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
// benchRegion written, and returns one chunk of it. The region is written
// through the cache, so its pages are cached, unless cold is set.
func benchChunk(b *testing.B, mode cache.Mode, cold ...bool) (*cache.Cache, storage.Chunk) {
	const key = "disk/chunks/00000000"
	root := b.TempDir()
	l, err := local.Open(filepath.Join(root, "store"))
	require.NoError(b, err)
	if len(cold) > 0 && cold[0] {
		lc, err := l.OpenChunk(context.Background(), key, true)
		require.NoError(b, err)
		_, err = lc.WriteAt(random(b, benchRegion), 0)
		require.NoError(b, err)
		require.NoError(b, lc.Close())
	}
	c, err := cache.New(context.Background(), latency.New(l, time.Millisecond), cache.Options{
		Mode: mode, Dir: filepath.Join(root, "cache"), MaxBytes: 64 * mib,
		// The region is written in one sequential pass; the store's
		// latency decides the rest.
		SequentialCutoff: -1,
	})
	require.NoError(b, err)
	b.Cleanup(func() { c.Close() })
	ch, err := c.OpenChunk(context.Background(), key, true)
	require.NoError(b, err)
	b.Cleanup(func() { ch.Close() })
	if len(cold) == 0 || !cold[0] {
		_, err = ch.WriteAt(random(b, benchRegion), 0)
		require.NoError(b, err)
		require.NoError(b, c.Flush(context.Background()))
	}
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
				before := c.Stats()
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
				hits, misses := s.Hits-before.Hits, s.Misses-before.Misses
				if mode != cache.None && hits+misses > 0 {
					b.ReportMetric(float64(hits)/float64(hits+misses), "hit-ratio")
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

// BenchmarkRandomSlotWrite writes sealed-block-sized records (4136 bytes)
// at the engine's slot offsets, so most writes cover pages in part; in the
// cold runs those pages are not cached and are filled from the remote.
func BenchmarkRandomSlotWrite(b *testing.B) {
	const slot, base, slots = 4136, 8192, benchRegion / 4136
	for _, tc := range []struct {
		mode cache.Mode
		cold bool
	}{{cache.None, false}, {cache.ReadWrite, false}, {cache.ReadWrite, true}} {
		name := string(tc.mode)
		if tc.cold {
			name += "/cold"
		}
		b.Run(name, func(b *testing.B) {
			_, ch := benchChunk(b, tc.mode, tc.cold)
			data := random(b, slot)
			b.SetBytes(slot)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					off := int64(base + mrand.IntN(slots-2)*slot)
					if _, err := ch.WriteAt(data, off); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkFlush1000RandomPages writes back 1000 dirty pages scattered over
// four chunks of a remote 1 ms away.
func BenchmarkFlush1000RandomPages(b *testing.B) {
	c, _ := benchChunk(b, cache.ReadWrite)
	var chs []storage.Chunk
	for i := range 4 {
		ch, err := c.OpenChunk(context.Background(), "disk/chunks/0000000"+string(rune('1'+i)), true)
		require.NoError(b, err)
		chs = append(chs, ch)
	}
	data := random(b, 4096)
	for b.Loop() {
		b.StopTimer()
		for range 1000 {
			_, err := chs[mrand.IntN(len(chs))].WriteAt(data, mrand.Int64N(benchRegion/4096)*4096)
			require.NoError(b, err)
		}
		b.StartTimer()
		require.NoError(b, c.Flush(context.Background()))
	}
}
