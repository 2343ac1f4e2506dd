// Package hostd is the hostcryptd process: it wires the storage backend, the
// key store, the FUSE tree and the control plane together, serves the control
// API on a unix socket, and shuts everything down cleanly on a signal.
package hostd

import (
	"context"
	"errors"
	"fmt"
	"hostcrypt/cache"
	"hostcrypt/disk"
	"hostcrypt/internal/dirfd"
	"hostcrypt/storage"
	"hostcrypt/storage/latency"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"hostcrypt/cluster"
	"hostcrypt/control"
	hfs "hostcrypt/fs"
	"hostcrypt/keystore/hostkeys"
	"hostcrypt/metrics"
	"hostcrypt/metrics/listen"
	"hostcrypt/storage/local"
	"hostcrypt/storage/location"
)

// DefaultFlushInterval is how often VM disks sync by themselves unless
// --flush-interval says otherwise: the engine's own default.
const DefaultFlushInterval = disk.DefaultFlushInterval

// DefaultWriterLease is the lease of a running VM's writer lock on each
// disk, on a RADOS pool: the time after which a host that stopped renewing
// (dead, frozen, cut off) lets go of its disks.
const DefaultWriterLease = 30 * time.Second

// Config is hostcryptd's command line.
type Config struct {
	StateDir   string
	StorageDir string
	// HostName names this host among those sharing a RADOS pool (default:
	// the system's host name). On a directory it only names the host in
	// hostcrypt host list.
	HostName string
	// WriterLease is the lease of a running VM's writer lock on each of
	// its disks, and of the host's registration, on a RADOS pool
	// (DefaultWriterLease if zero).
	WriterLease time.Duration
	// NoHeal keeps this host from taking over the VMs of lost hosts on a
	// RADOS pool (--heal=false).
	NoHeal      bool
	HostDir     string
	MountDir    string
	KeystoreURL string
	KeystoreCA  string
	TokenFile   string
	// HostTokenFile holds the token of the host's own key store identity
	// (--host-token-file), on a RADOS pool: the host acts for the disk
	// encryption sets' identities with it, and seals the shared records
	// with its group's record key.
	HostTokenFile string
	// AdoptUnsealedRecords seals the shared records an older version left
	// unsealed (--adopt-unsealed-records), once, after they were checked.
	AdoptUnsealedRecords bool
	Socket               string // default STATE/hostcryptd.sock
	Debug                bool
	// Pprof, when set, serves net/http/pprof on this loopback address, for
	// profiling the data path.
	Pprof string
	// Metrics, when set, serves Prometheus metrics on this address
	// (package metrics): a loopback one unless MetricsAllowRemote.
	Metrics            string
	MetricsAllowRemote bool
	// MetricsReady, if set, is called with the address the metrics are
	// served on (a test hook, for port 0).
	MetricsReady func(addr string)
	// CacheSize bounds each attached disk's host cache, in bytes.
	CacheSize int64
	// StorageLatency is added to every storage call, as a network between
	// host and storage would (0: none).
	StorageLatency time.Duration
	// FlushInterval is how often VM disks sync by themselves when the
	// guest does not flush (default 5 s).
	FlushInterval time.Duration
	KeyCheck      time.Duration
	DEKLease      time.Duration
	Rotation      time.Duration
	OnKeyExpiry   string
	// KeystoreTimeout bounds every call to the key store (default
	// keys.DefaultTimeout).
	KeystoreTimeout time.Duration
	Log             *slog.Logger
	// WrapStorage, if set, wraps the storage backend before anything uses
	// it. A test hook, as control.Config.DESLimit is: no flag sets it, so
	// only a test running the daemon in-process can, to put a
	// fault-injecting decorator (storage/fault) under a real mount.
	WrapStorage func(storage.Backend) storage.Backend

	// Web is the web console's configuration (--web and its options).
	Web WebConfig
}

func (c *Config) check() error {
	for _, f := range []struct{ flag, v string }{
		{"--state", c.StateDir}, {"--storage", c.StorageDir}, {"--host-dir", c.HostDir}, {"--mount", c.MountDir},
		{"--keystore", c.KeystoreURL}, {"--keystore-ca", c.KeystoreCA}, {"--token-file", c.TokenFile},
	} {
		if f.v == "" {
			return fmt.Errorf("%s is required (see hostcryptd --help)", f.flag)
		}
	}
	if c.CacheSize == 0 {
		c.CacheSize = control.DefaultCacheBytes
	}
	if c.CacheSize < cache.MinBytes {
		return fmt.Errorf("--cache-size %d bytes is too small: a disk's host cache needs at least %d bytes (1M)", c.CacheSize, cache.MinBytes)
	}
	if c.OnKeyExpiry != "" && c.OnKeyExpiry != control.ExpiryShutdown && c.OnKeyExpiry != control.ExpiryNextStart {
		return fmt.Errorf("--on-key-expiry %q: use %s or %s", c.OnKeyExpiry, control.ExpiryShutdown, control.ExpiryNextStart)
	}
	if c.Socket == "" {
		c.Socket = filepath.Join(c.StateDir, "hostcryptd.sock")
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.FlushInterval < time.Second || c.FlushInterval > 10*time.Minute {
		return fmt.Errorf("--flush-interval %v: use 1s to 10m (a guest's own flush always syncs at once)", c.FlushInterval)
	}
	if c.KeystoreTimeout != 0 && (c.KeystoreTimeout < time.Second || c.KeystoreTimeout > 10*time.Minute) {
		return fmt.Errorf("--keystore-timeout %v: use 1s to 10m", c.KeystoreTimeout)
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	// The web console.
	if err := c.Web.check(); err != nil {
		return err
	}
	if c.WriterLease == 0 {
		c.WriterLease = DefaultWriterLease
	}
	if c.WriterLease < 4*time.Second || c.WriterLease > 10*time.Minute {
		return fmt.Errorf("--writer-lease %v: use 4s to 10m (RADOS calls are bounded to at least 1s, and a renewal must fail well within a third of the lease)", c.WriterLease)
	}
	if c.HostTokenFile != "" || c.AdoptUnsealedRecords {
		if loc, err := location.Parse(c.StorageDir); err == nil && loc.RADOS == nil {
			return fmt.Errorf("--host-token-file and --adopt-unsealed-records are for a rados:// pool that several hosts share; on a directory each set's credential stays in STATE/secrets.json")
		}
	}
	if c.HostName == "" {
		name, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--host-name is required: the system's host name is unknown (%v)", err)
		}
		c.HostName = name
	}
	if err := cluster.CheckName(c.HostName); err != nil {
		return fmt.Errorf("--host-name: %w", err)
	}
	return nil
}

// Run starts the daemon and serves until ctx is cancelled, then flushes every
// disk, unmounts and returns. ready, if not nil, is called once the tree is
// mounted and the API is served.
func Run(ctx context.Context, cfg Config, ready func()) (err error) {
	if err := cfg.check(); err != nil {
		return err
	}
	log := cfg.Log
	// The log may go to a pipe whose reader is gone (a terminal closed, a
	// tee interrupted). By default a write there ends the process with
	// SIGPIPE, before the disks are flushed; ignored, the write fails and
	// the daemon carries on.
	signal.Ignore(syscall.SIGPIPE)
	// The last line, whatever the way out, as keystored's "stopped".
	defer func() {
		if err != nil {
			log.Error("hostcryptd stopped", "err", err)
		} else {
			log.Info("hostcryptd stopped")
		}
	}()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("FUSE is not available (/dev/fuse: %v); load the fuse module or install fuse3", err)
	}
	// --storage may be a rados:// location, which has no directory.
	dirs := []string{cfg.StateDir, cfg.HostDir}
	if loc, err := location.Parse(cfg.StorageDir); err == nil && loc.Dir != "" {
		dirs = append(dirs, loc.Dir)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	// Before anything else touches them: a second daemon on one of these
	// would take the first one's socket, mount and state.
	unlock, err := lockDirs(cfg)
	if err != nil {
		return err
	}
	defer unlock()
	// The host caches live under HOST/cache, which each cache takes as
	// given: it must be a directory of the host directory, not a link
	// planted while the daemon was down.
	cacheDir := filepath.Join(cfg.HostDir, "cache")
	cd, err := dirfd.OpenLeaf(cacheDir, true)
	if err != nil {
		return fmt.Errorf("--host-dir: %w", err)
	}
	cd.Close()
	// A dead mount left by a killed daemon must go first: until then even
	// mkdir on the mount point fails.
	if err := hfs.CleanStaleMount(cfg.MountDir); err != nil {
		return fmt.Errorf("mount point %s: %w", cfg.MountDir, err)
	}
	if err := os.MkdirAll(cfg.MountDir, 0o755); err != nil {
		return err
	}
	if cfg.Pprof != "" {
		if err := servePprof(ctx, cfg.Pprof, log); err != nil {
			return err
		}
	}
	// The metrics count each disk's I/O for the metrics endpoint and for
	// the web console's rates; nothing counts when neither is served.
	var m *metrics.Host
	if cfg.Metrics != "" || cfg.Web.Addr != "" {
		m = metrics.NewHost()
		defer m.Close()
	}
	if cfg.Metrics != "" {
		// The listener closes when Run returns, also on a failed start.
		mctx, stopMetrics := context.WithCancel(ctx)
		defer stopMetrics()
		addr, err := m.Serve(mctx, cfg.Metrics, listen.Options{
			Flag: "--metrics", AllowRemote: cfg.MetricsAllowRemote, RemoteFlag: "--metrics-allow-remote", Log: log,
		})
		if err != nil {
			return err
		}
		if cfg.MetricsReady != nil {
			cfg.MetricsReady(addr)
		}
	}
	// The web console's listener, before anything runs that a failure
	// would have to stop.
	var web *webConsole
	if cfg.Web.Addr != "" {
		if web, err = listenConsole(cfg); err != nil {
			return fmt.Errorf("--web: %w", err)
		}
		defer func() {
			if !web.started {
				web.close()
			}
		}()
	}
	keys, err := hostkeys.Connect(ctx, hostkeys.Config{URL: cfg.KeystoreURL, CA: cfg.KeystoreCA, TokenFile: cfg.TokenFile, HostTokenFile: cfg.HostTokenFile, Timeout: cfg.KeystoreTimeout})
	if err != nil {
		return err
	}
	defer keys.Close()
	// A directory, or a rados:// location in a build with the ceph tag.
	lb, err := location.Open(ctx, cfg.StorageDir)
	if err != nil {
		return fmt.Errorf("--storage: %w", err) // the error names the location
	}
	defer lb.Close()
	// latency.New returns lb itself when there is no latency to add.
	sb := latency.New(lb, cfg.StorageLatency)
	if cfg.WrapStorage != nil {
		sb = cfg.WrapStorage(sb)
	}
	hb, err := local.Open(cfg.HostDir)
	if err != nil {
		return fmt.Errorf("host directory %s: %w", cfg.HostDir, err)
	}
	defer hb.Close()

	tree, err := hfs.Mount(cfg.MountDir, hfs.Options{Debug: cfg.Debug})
	if err != nil {
		return fmt.Errorf("mounting %s: %w", cfg.MountDir, err)
	}
	unmounted := false
	defer func() {
		if !unmounted {
			tree.Unmount()
		}
	}()
	ccfg := control.Config{
		StateDir: cfg.StateDir, Storage: sb, HostLocal: hb, Keys: keys, Tree: tree, Log: log,
		CacheDir: cacheDir, CacheSize: cfg.CacheSize, FlushInterval: cfg.FlushInterval,
		DEKLease: cfg.DEKLease, KeyCheckInterval: cfg.KeyCheck, RotationInterval: cfg.Rotation, OnKeyExpiry: cfg.OnKeyExpiry,
		HostName: cfg.HostName,
	}
	if m != nil {
		ccfg.Observer, ccfg.Recorder = m, m
	}
	// On a RADOS pool the records are shared with every host on it.
	if loc, err := location.Parse(cfg.StorageDir); err == nil && loc.RADOS != nil {
		sh, err := joinShared(ctx, lb, cfg.HostName, cfg.WriterLease, cfg.StateDir, log)
		if err != nil {
			return err
		}
		defer sh.close(context.WithoutCancel(ctx))
		if err := sh.configure(ctx, &ccfg, lb, cfg.HostName, keys, cfg.AdoptUnsealedRecords, log); err != nil {
			return err
		}
		ccfg.Writers = writers{loc: loc, lease: cfg.WriterLease, host: cfg.HostName}
		if !cfg.NoHeal {
			ccfg.HealInterval = cfg.WriterLease / 2
		}
	}
	host, err := control.New(ccfg)
	if err != nil {
		return err
	}
	if m != nil {
		m.SetCopies(host.Copies)
	}
	host.Recover(ctx)

	// Key-state enforcement: a periodic check, woken at once by key
	// events, and rotation.
	mctx, stopMonitor := context.WithCancel(ctx)
	enforced := make(chan struct{})
	go func() {
		defer close(enforced)
		host.Run(mctx)
	}()
	defer func() {
		stopMonitor()
		<-enforced
	}()

	l, err := control.Listen(cfg.Socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: control.Handler(host), ReadHeaderTimeout: 10 * time.Second}
	srv.RegisterOnShutdown(host.StopBackground)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	// The web console, once the API it reads answers.
	stopConsole := func() {}
	if web != nil {
		if stopConsole, err = web.serve(ctx, cfg, host, m, log); err != nil {
			log.Error("web console not started", "err", err)
			stopConsole = func() {}
		}
	}
	log.Info("hostcryptd ready", "mount", cfg.MountDir, "socket", cfg.Socket)
	if ready != nil {
		ready()
	}

	select {
	case <-ctx.Done():
	case err := <-served:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("control API stopped", "err", err)
		}
	}
	log.Info("shutting down: flushing every disk")
	stopConsole()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	os.Remove(cfg.Socket)
	serr := host.Shutdown()
	uerr := tree.Unmount()
	unmounted = true
	if err := errors.Join(serr, uerr); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
