// Command hostcryptd is the host: it serves each running VM's encrypted disks
// as image files in a FUSE mount and runs the compute control plane.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/pflag"

	"hostcrypt/control"
	"hostcrypt/control/keys"
	"hostcrypt/hostd"
	"hostcrypt/internal/nodump"
	"hostcrypt/internal/units"
	"hostcrypt/internal/version"
	"hostcrypt/storage/location"
)

// minProcs is the fewest Go processors (GOMAXPROCS) hostcryptd runs with when
// the GOMAXPROCS environment variable is unset, on a machine with fewer CPUs.
//
// go-fuse starts one request reader per processor (at least 2), and between
// requests each reader waits in read(2) on /dev/fuse holding its processor.
// With as many processors as CPUs, all of them are often held that way: the
// runtime's monitor (sysmon) then wakes every 20 µs to take them back and
// hand them to other threads, and a goroutine woken for a request waits for
// that hand-off. With processors to spare it leaves the readers alone. On 2
// CPUs, 4 processors against 2, alternating, on a local disk (10 pairs): 4 KiB
// random reads at depth 32 1.76 times the IOPS at 0.77 times the daemon's CPU
// per read, random writes 1.43 times at 0.96, mixed 1.22 times at 0.92; on
// RADOS, writes 1.37 times at 0.85 and reads at 0.84 times the CPU. The price:
// 1 MiB sequential writes take 1.12 times the CPU per write (idle processors
// send threads spinning for work; 1.08 with the engine's parts of a long run
// no more than the CPUs, disk.parallel), at throughput within the runs' noise.
// docs/PERFORMANCE.md, "Go's processors", has the runs.
const minProcs = 4

// procs returns the processors to set, or 0 to keep the runtime's choice:
// env is the GOMAXPROCS environment variable, current the runtime's setting.
// Only an unset variable and fewer than minProcs are raised; the runtime's
// own choice (the CPUs, or a container's CPU limit) is kept otherwise, and
// with it its updates when that limit changes.
func procs(env string, current int) int {
	if env != "" || current >= minProcs {
		return 0
	}
	return minProcs
}

func main() {
	if err := nodump.Protect(); err != nil { // before any key is in memory
		fmt.Fprintf(os.Stderr, "hostcryptd: %v\n", err)
		os.Exit(1)
	}
	// Before the mount: go-fuse counts its readers when it starts.
	if n := procs(os.Getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0)); n > 0 {
		runtime.GOMAXPROCS(n)
	}
	var c hostd.Config
	fl := pflag.NewFlagSet("hostcryptd", pflag.ContinueOnError)
	fl.StringVar(&c.StateDir, "state", "", "directory for the control plane's state and socket")
	fl.StringVar(&c.StorageDir, "storage", "", "where the encrypted disks live: a directory, or rados://POOL[/NAMESPACE]?conf=FILE&id=USER (hostcryptd-ceph)")
	fl.DurationVar(&c.WriterLease, "writer-lease", hostd.DefaultWriterLease, "on a rados:// pool, the lease of the host's registration and of a running VM's writer lock on each disk: past it without a renewal, the VM's I/O fails (4s to 10m)")
	heal := fl.Bool("heal", true, "on a rados:// pool, take over (restart here) the VMs of hosts that are lost, once their leases ran out")
	fl.StringVar(&c.HostName, "host-name", "", "this host's name among the hosts sharing a rados:// pool (default: the system's host name)")
	fl.StringVar(&c.HostDir, "host-dir", "", "host-local directory (temp disks, host cache)")
	fl.StringVar(&c.MountDir, "mount", "", "where the FUSE tree of VM images is mounted")
	fl.StringVar(&c.KeystoreURL, "keystore", "", "key store URL, e.g. https://127.0.0.1:8443")
	fl.StringVar(&c.KeystoreCA, "keystore-ca", "", "CA certificate that signed the key store's certificate")
	fl.StringVar(&c.TokenFile, "token-file", "", "file holding the platform bearer token")
	fl.StringVar(&c.HostTokenFile, "host-token-file", "", "on a rados:// pool: file holding this host's own key store identity's token (hostcrypt identity create --type Host --host-group GROUP): it acts for the disk encryption sets' identities and seals the shared records")
	fl.BoolVar(&c.AdoptUnsealedRecords, "adopt-unsealed-records", false, "with --host-token-file: seal the shared records an older version left unsealed, as they are (check them first)")
	fl.StringVar(&c.Socket, "socket", "", "control socket (default STATE/hostcryptd.sock)")
	fl.DurationVar(&c.FlushInterval, "flush-interval", hostd.DefaultFlushInterval, "how often VM disks make their writes durable when the guest does not flush (1s to 10m)")
	fl.DurationVar(&c.KeyCheck, "key-check-interval", control.DefaultKeyCheckInterval, "how often key states are checked")
	fl.DurationVar(&c.DEKLease, "dek-lease", control.DefaultDEKLease, "how long a data key is used without a successful re-check")
	fl.DurationVar(&c.Rotation, "rotation-interval", control.DefaultRotationInterval, "how often new key versions are looked for")
	fl.StringVar(&c.OnKeyExpiry, "on-key-expiry", control.DefaultOnKeyExpiry, control.ExpiryShutdown+"|"+control.ExpiryNextStart+": what an expired key does to a running VM")
	fl.DurationVar(&c.KeystoreTimeout, "keystore-timeout", keys.DefaultTimeout, "how long a call to the key store may take before it counts as unanswered")
	cacheSize := fl.String("cache-size", units.FormatSize(control.DefaultCacheBytes), "bound of each attached disk's host cache (ReadOnly/ReadWrite), binary units")
	fl.DurationVar(&c.StorageLatency, "storage-latency", 0, "latency added to every storage call, as a network to remote storage would (e.g. 1ms)")
	fl.BoolVar(&c.Debug, "debug", false, "log every FUSE request")
	logLevel := fl.String("log-level", "info", "least severe messages logged: debug, info, warn or error")
	fl.StringVar(&c.Pprof, "pprof", "", "serve the Go profiler on this loopback HOST:PORT")
	fl.StringVar(&c.Metrics, "metrics", "", "serve Prometheus metrics at http://HOST:PORT/metrics (off by default; loopback unless --metrics-allow-remote)")
	fl.BoolVar(&c.MetricsAllowRemote, "metrics-allow-remote", false, "allow --metrics on a non-loopback address, in the clear (VM and disk names and load, no keys or data)")
	// The web console.
	fl.StringVar(&c.Web.Addr, "web", "", "serve the web console on HOST:PORT (loopback unless TLS or --web-allow-remote); its login token is written to STATE/console.token")
	fl.StringSliceVar(&c.Web.Hosts, "web-host", nil, "another host name the browser reaches the console by (the Host header allowlist), repeatable")
	fl.BoolVar(&c.Web.AllowRemote, "web-allow-remote", false, "serve the console on a non-loopback address without TLS")
	fl.StringVar(&c.Web.TLSCert, "web-tls-cert", "", "certificate (PEM) to serve the console with HTTPS")
	fl.StringVar(&c.Web.TLSKey, "web-tls-key", "", "private key (PEM) of --web-tls-cert")
	fl.BoolVar(&c.Web.DemoPlaintext, "web-demo-plaintext", false, "let the console's block view show what the guest reads beside the stored bytes (every view is logged)")
	showVersion := fl.Bool("version", false, "print the version, commit, Go and go-fuse versions, and exit")
	fl.SetOutput(os.Stdout) // only --help writes here
	if err := fl.Parse(os.Args[1:]); err != nil {
		if err == pflag.ErrHelp {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "hostcryptd: %v (see hostcryptd --help)\n", err)
		os.Exit(2)
	}
	c.NoHeal = !*heal
	if *showVersion {
		fmt.Println(version.String("hostcryptd"))
		return
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "hostcryptd: unexpected argument %q\n", fl.Arg(0))
		os.Exit(2)
	}
	if err := location.Check(c.StorageDir); c.StorageDir != "" && err != nil {
		fmt.Fprintf(os.Stderr, "hostcryptd: --storage: %v\n", err)
		os.Exit(2)
	}
	n, err := units.ParseSize(*cacheSize)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hostcryptd: --cache-size: %v\n", err)
		os.Exit(2)
	}
	c.CacheSize = n
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "hostcryptd: --log-level %q: give debug, info, warn or error\n", *logLevel)
		os.Exit(2)
	}
	c.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// Packages that log without being handed a logger (a disk's read
	// window, at debug level) use the default: the same handler and level.
	slog.SetDefault(c.Log)
	// A hangup (the terminal gone) stops as cleanly as SIGTERM: every disk is
	// flushed first.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if err := hostd.Run(ctx, c, nil); err != nil {
		fmt.Fprintf(os.Stderr, "hostcryptd: %v\n", err)
		os.Exit(1)
	}
}
