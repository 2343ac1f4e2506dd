// Command keystored is the key store daemon: a Key Vault-like TLS server
// holding the customer-managed and platform keys (see keystore/server).
package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"hostcrypt/internal/nodump"
	"hostcrypt/internal/version"
	"hostcrypt/keystore/server"
	mlisten "hostcrypt/metrics/listen"
)

// parseSize reads a byte count with an optional binary suffix; 0 means no
// cap (-1 to the server).
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a size such as 512MiB or 1GiB (binary units; 0 for no cap)", s)
	}
	switch {
	case n == 0:
		return -1, nil
	case n*mult < 1<<20:
		return 0, fmt.Errorf("%q is below the minimum of 1MiB (0 for no cap)", s)
	}
	return n * mult, nil
}

// parseAge reads a duration, also in days (90d); 0 means no cap (-1 to
// the server).
func parseAge(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return -1, nil
	}
	var d time.Duration
	var err error
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int64
		days, err = strconv.ParseInt(n, 10, 64)
		if err == nil && (days <= 0 || days > 100*365) {
			err = errors.New("out of range")
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not an age such as 90d or 720h (0 for no cap)", s)
	}
	if d < time.Hour {
		return 0, fmt.Errorf("%q is below the minimum of 1h (0 for no cap)", s)
	}
	return d, nil
}

func main() {
	err := nodump.Protect() // before any key is in memory
	if err == nil {
		err = run(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keystored:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := pflag.NewFlagSet("keystored", pflag.ContinueOnError)
	fs.SetOutput(os.Stdout) // only --help writes here
	dir := fs.String("dir", "", "state directory (created on first start)")
	listen := fs.String("listen", "127.0.0.1:8443", "address to serve TLS on; port 0 picks a free port")
	passFile := fs.String("passphrase-file", "", "file holding a passphrase that seals the master key")
	webhookAllow := fs.StringSlice("webhook-allow", nil, "webhook destinations administrators may register: host[:port] (https), or a URL prefix https://host[:port]/path/ or http://host[:port]/path/; repeat or separate with commas (none: no webhooks)")
	auditMaxSize := fs.String("audit-max-size", "1GiB", "cap on all audit files together; the oldest rotated files are removed beyond it (KiB, MiB, GiB, TiB; 0: no cap)")
	auditMaxAge := fs.String("audit-max-age", "365d", "rotated audit files whose newest line is older are removed (e.g. 90d, 720h; 0: no cap)")
	webhookCA := fs.String("webhook-ca", "", "PEM file of CA certificates that https webhook destinations are verified with (default: the system's)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at HOST:PORT/metrics (off by default): plain HTTP on a loopback address, HTTPS with the key store's certificate on any other")
	showVersion := fs.Bool("version", false, "print the version, commit, Go and go-fuse versions, and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil // asked for help, got it
		}
		return fmt.Errorf("%w (see keystored --help)", err)
	}
	if *showVersion {
		fmt.Println(version.String("keystored"))
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *dir == "" {
		return fmt.Errorf("--dir is required")
	}
	cfg := server.Config{Dir: *dir, Listen: *listen, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)), WebhookAllow: *webhookAllow}
	var err error
	if cfg.AuditMaxTotalBytes, err = parseSize(*auditMaxSize); err != nil {
		return fmt.Errorf("--audit-max-size: %w", err)
	}
	if cfg.AuditMaxAge, err = parseAge(*auditMaxAge); err != nil {
		return fmt.Errorf("--audit-max-age: %w", err)
	}
	if *webhookCA != "" {
		pemData, err := os.ReadFile(*webhookCA)
		if err != nil {
			return fmt.Errorf("--webhook-ca: %w", err)
		}
		cfg.WebhookRootCAs = x509.NewCertPool()
		if !cfg.WebhookRootCAs.AppendCertsFromPEM(pemData) {
			return fmt.Errorf("--webhook-ca %s holds no PEM certificate", *webhookCA)
		}
	}
	if *passFile != "" {
		p, err := os.ReadFile(*passFile)
		if err != nil {
			return err
		}
		p = bytes.TrimRight(p, "\r\n")
		if len(p) == 0 {
			return fmt.Errorf("passphrase file %s is empty", *passFile)
		}
		cfg.Passphrase = p
	}
	s, err := server.Open(cfg)
	if err != nil {
		return err
	}
	// Before the lines that say the key store is ready: whoever waits for
	// them finds the metrics' address printed already.
	mctx, stopMetrics := context.WithCancel(context.Background())
	defer stopMetrics()
	if *metricsAddr != "" {
		o := mlisten.Options{Flag: "--metrics", Log: cfg.Logger}
		if loop, err := mlisten.IsLoopback(*metricsAddr); err == nil && !loop {
			o.TLS = s.MetricsTLS()
		}
		addr, err := mlisten.Serve(mctx, *metricsAddr, s.MetricsHandler(), o)
		if err != nil {
			s.Shutdown(context.Background())
			return err
		}
		scheme := "http"
		if o.TLS != nil {
			scheme = "https"
		}
		fmt.Printf("keystored: metrics %s://%s/metrics\n", scheme, addr)
	}
	abs, _ := filepath.Abs(*dir)
	if s.Created() {
		fmt.Printf("keystored: initialised a new key store in %s\n", abs)
	} else {
		fmt.Printf("keystored: loaded the key store in %s\n", abs)
	}
	fmt.Printf("keystored: listening on %s\n", s.BaseURL())
	fmt.Printf("keystored: CA certificate %s\n", filepath.Join(abs, "ca.pem"))
	fmt.Printf("keystored: admin token %s\n", filepath.Join(abs, "admin.token"))
	fmt.Printf("keystored: platform token %s\n", filepath.Join(abs, "platform.token"))
	fmt.Printf("keystored: address file %s\n", filepath.Join(abs, "address"))

	errc := make(chan error, 1)
	go func() { errc <- s.Serve() }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-errc:
		return err
	case <-sig:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		return err
	}
	fmt.Println("keystored: stopped")
	return nil
}
