package hostd

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"hostcrypt/console"
	"hostcrypt/control"
	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/disk"
	"hostcrypt/internal/version"
	"hostcrypt/metrics"
)

// WebConfig is the web console's part of hostcryptd's command line; the
// console is off unless Addr is set.
type WebConfig struct {
	// Addr is --web: HOST:PORT to serve the console on.
	Addr string
	// Hosts are --web-host: more names the browser may use for it.
	Hosts []string
	// AllowRemote is --web-allow-remote: a non-loopback address without
	// TLS.
	AllowRemote bool
	// TLSCert and TLSKey are --web-tls-cert and --web-tls-key.
	TLSCert, TLSKey string
	// DemoPlaintext is --web-demo-plaintext: the block view shows what the
	// guest reads too.
	DemoPlaintext bool
}

func (w *WebConfig) check() error {
	if w.Addr == "" {
		if w.DemoPlaintext || w.AllowRemote || len(w.Hosts) > 0 || w.TLSCert != "" || w.TLSKey != "" {
			return errors.New("--web-* options need --web ADDR")
		}
		return nil
	}
	if (w.TLSCert == "") != (w.TLSKey == "") {
		return errors.New("--web-tls-cert and --web-tls-key go together")
	}
	return console.CheckAddr("--web", w.Addr, w.TLSCert != "", w.AllowRemote)
}

// webConsole is the console's listener, credential and key store client,
// made before anything is started so that a --web that cannot be served
// stops the start-up, not a running host.
type webConsole struct {
	l         net.Listener
	tc        *tls.Config
	ks        *console.KeyStoreClient
	token     string
	tokenPath string
	// started: serve took over the listener and the client.
	started bool
}

// listenConsole binds the console's address, writes a new login token to
// STATE/console.token and connects to the key store as the platform.
func listenConsole(cfg Config) (*webConsole, error) {
	w := cfg.Web
	wc := &webConsole{}
	if w.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(w.TLSCert, w.TLSKey)
		if err != nil {
			return nil, err
		}
		wc.tc = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	var err error
	if wc.token, wc.tokenPath, err = console.WriteToken(cfg.StateDir); err != nil {
		return nil, err
	}
	timeout := cfg.KeystoreTimeout
	if timeout == 0 {
		timeout = keys.DefaultTimeout
	}
	if wc.ks, err = console.NewKeyStoreClient(cfg.KeystoreURL, cfg.KeystoreCA, cfg.TokenFile, timeout); err != nil {
		return nil, err
	}
	if wc.l, err = net.Listen("tcp", w.Addr); err != nil {
		wc.ks.Close()
		return nil, err
	}
	return wc, nil
}

// close releases what listenConsole made; the console's stop does once it
// started.
func (wc *webConsole) close() {
	wc.l.Close()
	wc.ks.Close()
}

// serve starts the console: its readings of the control plane (over the
// control socket, as the CLI) and of the key store (as the platform), and
// its server. The returned stop closes it.
func (wc *webConsole) serve(ctx context.Context, cfg Config, host *control.Host, m *metrics.Host, log *slog.Logger) (stop func(), err error) {
	wc.started = true
	name, _ := os.Hostname()
	ctl := api.NewClient(cfg.Socket)
	keyCheck := cfg.KeyCheck
	if keyCheck == 0 {
		keyCheck = control.DefaultKeyCheckInterval
	}
	c, err := console.New(console.Config{
		Control: ctl, Keys: wc.ks, Blocks: hostBlocks{host},
		Host: console.HostInfo{Name: name, Version: version.String("hostcryptd"), Mount: cfg.MountDir, KeyStore: cfg.KeystoreURL,
			KeyCheckInterval: keyCheck, Started: time.Now().UTC()},
		Token: wc.token, AllowedHosts: cfg.Web.Hosts, Addr: wc.l.Addr().String(), TLS: wc.tc != nil,
		DemoPlaintext: cfg.Web.DemoPlaintext, Log: log, Rates: hostRates{m},
	})
	if err != nil {
		wc.close()
		return nil, err
	}
	cctx, cancel := context.WithCancel(ctx)
	loops := make(chan struct{})
	go func() {
		defer close(loops)
		c.Run(cctx)
	}()
	// No WriteTimeout: the event stream stays open.
	srv := &http.Server{Handler: c.Handler(), ReadHeaderTimeout: 10 * time.Second, TLSConfig: wc.tc,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() {
		var err error
		if wc.tc != nil {
			err = srv.ServeTLS(wc.l, "", "")
		} else {
			err = srv.Serve(wc.l)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("web console stopped", "err", err)
		}
	}()
	scheme := "http"
	if wc.tc != nil {
		scheme = "https"
	}
	base := scheme + "://" + wc.l.Addr().String()
	log.Info("web console listening", "url", base+"/", "token_file", wc.tokenPath,
		"login", base+"/login?token=$(cat "+wc.tokenPath+")", "demo_plaintext", cfg.Web.DemoPlaintext)
	return func() {
		srv.Close()
		cancel()
		<-loops
		ctl.Close()
		wc.ks.Close()
	}, nil
}

// hostBlocks gives the console the blocks of the running VMs' disks.
type hostBlocks struct{ h *control.Host }

func (b hostBlocks) InspectBlock(ctx context.Context, vm, name string, off int64) (*console.BlockView, error) {
	v, err := b.h.InspectBlock(ctx, vm, name, off)
	if errors.Is(err, disk.ErrRange) {
		return nil, api.Errorf(http.StatusBadRequest, api.CodeInvalidParameter, "offset %d is beyond the end of disk %s", off, name)
	}
	if err != nil {
		return nil, err
	}
	out := &console.BlockView{Block: v.Block, Chunk: v.Chunk, Object: v.Object, Format: v.Format, Written: v.Written,
		Slot: v.Slot, Offset: v.Offset, EntryOffset: v.EntryOffset, Persisted: v.Persisted}
	for _, l := range v.Layers {
		out.Layers = append(out.Layers, console.LayerView{Layer: l.Layer, Algorithm: l.Algorithm, Nonce: l.Nonce, Ciphertext: l.Ciphertext, Tag: l.Tag})
	}
	return out, nil
}

func (b hostBlocks) ReadGuest(ctx context.Context, vm, name string, p []byte, off int64) (int, error) {
	return b.h.ReadGuest(ctx, vm, name, p, off)
}

// hostRates gives the console each disk's rates from the metrics' counters.
type hostRates struct{ m *metrics.Host }

func (r hostRates) Recent(vm, disk string) []console.RatePoint {
	ps := r.m.Recent(vm, disk)
	out := make([]console.RatePoint, len(ps))
	for i, p := range ps {
		out[i] = console.RatePoint{T: p.T, ReadOps: p.ReadOps, WriteOps: p.WriteOps, ReadLatency: p.ReadLatency, WriteLatency: p.WriteLatency}
	}
	return out
}
