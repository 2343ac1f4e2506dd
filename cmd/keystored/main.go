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
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"hostcrypt/internal/nodump"
	"hostcrypt/keystore/server"
)

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
	webhookCA := fs.String("webhook-ca", "", "PEM file of CA certificates that https webhook destinations are verified with (default: the system's)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil // asked for help, got it
		}
		return fmt.Errorf("%w (see keystored --help)", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *dir == "" {
		return fmt.Errorf("--dir is required")
	}
	cfg := server.Config{Dir: *dir, Listen: *listen, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)), WebhookAllow: *webhookAllow}
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
