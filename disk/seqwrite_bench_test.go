package disk

import "testing"

// BenchmarkSeqWriteState writes 1 MiB pieces in order over a disk written
// once in 1 MiB pieces (filled) and over one rewritten at random since
// (rewritten), syncing every 64 MiB as a flush interval would. A block's
// new version goes to the slot its persisted selector does not name, so
// after random rewrites a piece's blocks go to slots A and B by the parity
// of their rewrites, and its pages reach the backend in many short writes
// instead of one: the CPU per piece (cpu-ns/op) shows what that costs.
//
//	go test ./disk -run '^$' -bench SeqWriteState -benchtime 2s
func BenchmarkSeqWriteState(b *testing.B) {
	for _, state := range []string{"filled", "rewritten"} {
		b.Run(state, func(b *testing.B) {
			td := benchDisk(b, 1, true)
			if state == "rewritten" {
				if err := td.Sync(); err != nil {
					b.Fatal(err)
				}
				rewrite(b, td, 3*benchSize/4096)
			}
			if err := td.Sync(); err != nil {
				b.Fatal(err)
			}
			p := randBytes(1 << 20)
			b.SetBytes(int64(len(p)))
			b.ResetTimer()
			cpu := cpuTime(b)
			for i := 0; i < b.N; i++ {
				if _, err := td.WriteAt(p, int64(i%(benchSize>>20))<<20); err != nil {
					b.Fatal(err)
				}
				if i%64 == 63 {
					if err := td.Sync(); err != nil {
						b.Fatal(err)
					}
				}
			}
			reportCPU(b, cpu)
		})
	}
}
