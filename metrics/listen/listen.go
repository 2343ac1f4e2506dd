// Package listen serves Prometheus metrics on an address, refusing one
// the network reaches unless the metrics go over TLS or a flag allows it.
package listen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Options say how a metrics listener may be reached.
type Options struct {
	// Flag is the command-line flag that gave the address, for errors
	// ("--metrics").
	Flag string
	// TLS, if set, serves HTTPS with it; then any address is allowed.
	TLS *tls.Config
	// AllowRemote allows a non-loopback address without TLS: anyone who
	// reaches it reads the metrics (names of VMs and disks, load), so it
	// takes an explicit flag.
	AllowRemote bool
	// RemoteFlag names the flag that sets AllowRemote, for the refusal.
	RemoteFlag string
	Log        *slog.Logger
}

// IsLoopback tells whether HOST:PORT addr names a loopback address only
// ("localhost", 127.0.0.0/8, ::1); an empty host (every interface) is not.
func IsLoopback(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("want HOST:PORT, such as 127.0.0.1:9464: %w", err)
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}

// Serve serves handler at /metrics on addr until ctx ends, and returns the
// address it listens on (port 0 picks one). It refuses a non-loopback
// address unless o.TLS is set or o.AllowRemote says so.
func Serve(ctx context.Context, addr string, handler http.Handler, o Options) (string, error) {
	if o.Flag == "" {
		o.Flag = "--metrics"
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	loop, err := IsLoopback(addr)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", o.Flag, addr, err)
	}
	if !loop && o.TLS == nil && !o.AllowRemote {
		hint := "use a loopback address such as 127.0.0.1:9464"
		if o.RemoteFlag != "" {
			hint += ", or give " + o.RemoteFlag + " to serve it in the clear to the network"
		}
		return "", fmt.Errorf("%s %q: not a loopback address, and the metrics are not served over TLS here: %s", o.Flag, addr, hint)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%s: %w", o.Flag, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", handler)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "only GET /metrics is served here", http.StatusNotFound)
	})
	srv := &http.Server{
		Handler: mux, TLSConfig: o.TLS,
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(o.Log.Handler(), slog.LevelDebug),
	}
	scheme := "http"
	if o.TLS != nil {
		scheme = "https"
	}
	go func() {
		var err error
		if o.TLS != nil {
			err = srv.ServeTLS(l, "", "")
		} else {
			err = srv.Serve(l)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.Log.Error("metrics listener stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	bound := l.Addr().String()
	o.Log.Info("metrics listening", "url", scheme+"://"+bound+"/metrics")
	return bound, nil
}
