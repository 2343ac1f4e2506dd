package server

import (
	"hostcrypt/keystore/api"

	"io"
	"log/slog"
	"testing"
	"time"
)

// BenchmarkAuditAppend measures durable audit appends from parallel callers
// (group commit shares one fsync among them).
func BenchmarkAuditAppend(b *testing.B) {
	a, err := openAuditLog(b.TempDir(), auditOptions{rotateSize: 16 << 20, now: time.Now, log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := a.Append(&api.AuditRecord{OperationName: "KeyUnwrap", Vault: "v", Kid: "https://127.0.0.1:8443/vaults/v/keys/k/0123456789abcdef0123456789abcdef", RequestID: "r"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}
