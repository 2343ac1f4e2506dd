package hostd

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"
)

// The sampling of the mutex and block profiles with --pprof: one contention
// event in mutexProfileFraction, and every wait of at least blockProfileRate
// nanoseconds (shorter ones in proportion).
const (
	mutexProfileFraction = 10
	blockProfileRate     = 10_000
)

// servePprof serves the Go profiler on a loopback address until ctx ends.
// It refuses other addresses: profiles show memory, and memory holds keys.
func servePprof(ctx context.Context, addr string, log *slog.Logger) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--pprof %q: want HOST:PORT: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--pprof %q: only a loopback address is allowed (profiles expose process memory)", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	// Lock contention and blocking show in /debug/pprof/mutex and
	// /debug/pprof/block only when sampled; the sampling costs little and
	// is paid only by a daemon started with --pprof.
	runtime.SetMutexProfileFraction(mutexProfileFraction)
	runtime.SetBlockProfileRate(blockProfileRate)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("profiler listening", "addr", l.Addr().String())
	return nil
}
