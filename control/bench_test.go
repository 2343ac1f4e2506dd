package control

import (
	"context"
	"fmt"
	"hostcrypt/control/api"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkSnapshot measures snapshots of a 256 MiB disk written in full
// and attached to a running VM: a full snapshot (every chunk copied) and an
// incremental one after a 4 KiB write (one chunk copied, the rest compared).
func BenchmarkSnapshot(b *testing.B) {
	const size = 256 << 20
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.DiscardHandler))
	for _, inc := range []bool{false, true} {
		b.Run(map[bool]string{false: "full", true: "incremental-after-4k-write"}[inc], func(b *testing.B) {
			f := newFixture(b)
			ctx := context.Background()
			_, err := f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "d1", SizeBytes: size})
			require.NoError(b, err)
			_, err = f.h.CreateVM(ctx, api.CreateVMRequest{Name: "vm1", OsDiskSizeBytes: 4 << 20, DataDisks: []api.AttachedDisk{{Name: "d1"}}})
			require.NoError(b, err)
			img := f.tree.get("vm1/data-0.img")
			_, err = img.WriteAt(fill(size), 0)
			require.NoError(b, err)
			if inc {
				_, err = f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: "base", Source: "d1", Incremental: true})
				require.NoError(b, err)
			}
			b.SetBytes(size)
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				if inc {
					_, err = img.WriteAt(fill(4096), int64(i%64)<<20)
					require.NoError(b, err)
				}
				b.StartTimer()
				s, err := f.h.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: fmt.Sprintf("s%d", i), Source: "d1", Incremental: inc})
				require.NoError(b, err)
				b.ReportMetric(float64(s.UsedBytes)/(1<<20), "MiB-stored")
				b.ReportMetric(float64(s.FreezePauseMicros), "µs-pause")
			}
			b.StopTimer()
			f.h.Shutdown()
		})
	}
}
