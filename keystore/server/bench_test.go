package server

import (
	"crypto/rand"
	"fmt"
	"hostcrypt/keystore/api"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkUnwrap measures unwrap requests per second over TLS with kept-alive
// connections, for each RSA size, from parallel callers. Client and server
// share the machine, and every request is durably audited before it is
// answered, so the figure is end to end.
func BenchmarkUnwrap(b *testing.B) {
	for _, size := range []int{2048, 3072, 4096} {
		b.Run(fmt.Sprintf("RSA-%d", size), func(b *testing.B) {
			e := startEnv(b)
			e.vault("benchvault", "standard")
			kb, err := e.admin.CreateKey(bg, "benchvault", "k", api.KeyCreate{Kty: "RSA", KeySize: &size})
			require.NoError(b, err)
			dek := make([]byte, 32)
			rand.Read(dek)
			kid, wrapped, err := e.admin.WrapKey(bg, kb.Key.Kid, api.RSAOAEP256, dek)
			require.NoError(b, err)
			b.SetParallelism(16) // many callers in flight, as a host starting many disks
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, _, err := e.admin.UnwrapKey(bg, kid, api.RSAOAEP256, wrapped); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "unwraps/s")
		})
	}
}
