package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"hostcrypt/control/api"
	ksapi "hostcrypt/keystore/api"
)

// Control is what the console needs of the control plane: the control API's
// calls, as *api.Client makes them.
type Control interface {
	ListVMs(ctx context.Context) ([]api.VM, error)
	ListDisks(ctx context.Context) ([]api.Disk, error)
	ListSnapshots(ctx context.Context) ([]api.Snapshot, error)
	ListDES(ctx context.Context) ([]api.DiskEncryptionSet, error)
	EncryptionReport(ctx context.Context, vm string) (*api.EncryptionReport, error)
	StartVM(ctx context.Context, name string) (*api.VM, error)
	StopVM(ctx context.Context, name string) (*api.VM, error)
	DeallocateVM(ctx context.Context, name string) (*api.VM, error)
	CreateSnapshot(ctx context.Context, r api.CreateSnapshotRequest) (*api.Snapshot, error)
}

var _ Control = (*api.Client)(nil)

// KeyStore is what the console needs of the key store: the event stream and
// vault metadata, read as the platform, and the operator's key actions, each
// made with the token the operator gave for it.
type KeyStore interface {
	// Events returns the events after sequence number after, waiting up to
	// wait for the first one.
	Events(ctx context.Context, after uint64, wait time.Duration) ([]ksapi.Event, error)
	// Vault returns a vault's metadata.
	Vault(ctx context.Context, name string) (*ksapi.Vault, error)
	// SetKeyEnabled enables or disables one key version as the holder of
	// token.
	SetKeyEnabled(ctx context.Context, token, vault, key, version string, enabled bool) error
	// RotateKey makes a new version of a key as the holder of token and
	// returns its id.
	RotateKey(ctx context.Context, token, vault, key string) (string, error)
}

// Blocks reads single blocks of a running VM's disk: as stored, and as the
// guest reads them.
type Blocks interface {
	// InspectBlock returns the stored block holding byte off of disk, which
	// VM vm runs with, taken apart by layer (ciphertext only).
	InspectBlock(ctx context.Context, vm, disk string, off int64) (*BlockView, error)
	// ReadGuest reads what the guest reads at off.
	ReadGuest(ctx context.Context, vm, disk string, p []byte, off int64) (int, error)
}

// BlockView is one stored block (see disk.BlockView, which the host's
// Blocks converts).
type BlockView struct {
	Block       int64       `json:"block"`
	Chunk       int64       `json:"chunk"`
	Object      string      `json:"object"`
	Format      int         `json:"format"`
	Written     bool        `json:"written"`
	Slot        string      `json:"slot,omitempty"`
	Offset      int64       `json:"offset"`
	EntryOffset int64       `json:"entryOffset"`
	Persisted   bool        `json:"persisted"`
	Layers      []LayerView `json:"layers"`
}

// LayerView is one layer's sealed unit of a block.
type LayerView struct {
	Layer      int    `json:"layer"`
	Algorithm  string `json:"algorithm"`
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ciphertext"`
	Tag        []byte `json:"tag"`
}

// Rates are per-disk I/O rates over the last minutes.
type Rates interface {
	// Recent returns the rates of disk of VM vm, oldest first.
	Recent(vm, disk string) []RatePoint
}

// RatePoint is one sample of a disk's rates.
type RatePoint struct {
	T            time.Time
	ReadOps      float64 // per second
	WriteOps     float64 // per second
	ReadLatency  time.Duration
	WriteLatency time.Duration
}

// HostInfo describes the host the console runs on.
type HostInfo struct {
	Name             string        `json:"name"`
	Version          string        `json:"version"`
	Mount            string        `json:"mount"`
	KeyStore         string        `json:"keyStore"`
	KeyCheckInterval time.Duration `json:"-"`
	KeyCheckSeconds  float64       `json:"keyCheckSeconds"`
	Started          time.Time     `json:"started"`
}

// Config is a console's configuration.
type Config struct {
	Control Control
	Keys    KeyStore
	// Blocks, when nil, turns the block view off.
	Blocks Blocks
	// Rates, when nil, makes the page say the rates are not available.
	Rates Rates
	Host  HostInfo
	// Token is the login credential (the content of STATE/console.token).
	Token string
	// AllowedHosts are the Host headers accepted besides the listening
	// address and its loopback names.
	AllowedHosts []string
	// Addr is the listening address, HOST:PORT, as bound.
	Addr string
	// TLS says the listener serves HTTPS: the cookie is then Secure.
	TLS bool
	// DemoPlaintext lets the block view show what the guest reads.
	DemoPlaintext bool
	// RefreshInterval is how often the control plane is read while a page
	// follows the events or asks for the state (default 1 s; IdleInterval,
	// 30 s, while none has for IdleInterval); DESInterval how often the disk encryption sets are while a
	// page follows (default 30 s, and at once after a key event or an
	// action): their listing asks the key store about each set, and every
	// question is a line of its audit log.
	RefreshInterval time.Duration
	IdleInterval    time.Duration
	DESInterval     time.Duration
	// ActionTimeout bounds an action (default 10 min: a snapshot of a large
	// disk copies its data before it answers).
	ActionTimeout time.Duration
	Log           *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

//go:embed static
var static embed.FS

// Console serves the console. Make it with New, start its loops with Run.
type Console struct {
	cfg      Config
	log      *slog.Logger
	auth     *auth
	timeline *timeline
	mux      *http.ServeMux

	mu    sync.Mutex
	state *State
	// keys is the key view built from the key store's events.
	keys *keyBook
	// desWake wakes the loop reading the disk encryption sets.
	desWake chan struct{}
	// refreshWake wakes the loop reading the control plane.
	refreshWake chan struct{}
	// viewers counts the pages following the event stream; lastAsked is
	// when a page last asked for the state or the rates (Unix ns).
	viewers   atomic.Int64
	lastAsked atomic.Int64
}

// watched tells whether a page follows the events or asked for the state
// within IdleInterval: the readings are frequent only then.
func (c *Console) watched() bool {
	return c.viewers.Load() > 0 || time.Since(time.Unix(0, c.lastAsked.Load())) < c.cfg.IdleInterval
}

// asked records that a page asked for the state, and has the control plane
// read at once if the last reading is older than two intervals.
func (c *Console) asked() {
	c.lastAsked.Store(time.Now().UnixNano())
	c.mu.Lock()
	read := c.state.Read
	c.mu.Unlock()
	if time.Since(read) > 2*c.cfg.RefreshInterval {
		wake(c.refreshWake)
	}
}

// New makes a console. It serves nothing until its Handler is served, and
// shows nothing new until Run runs.
func New(cfg Config) (*Console, error) {
	if cfg.Control == nil || cfg.Keys == nil {
		return nil, errors.New("console: Control and Keys are required")
	}
	if len(cfg.Token) < 32 {
		return nil, errors.New("console: the login token must be at least 32 characters")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = time.Second
	}
	if cfg.IdleInterval <= 0 {
		cfg.IdleInterval = 30 * time.Second
	}
	if cfg.DESInterval <= 0 {
		cfg.DESInterval = 30 * time.Second
	}
	if cfg.ActionTimeout <= 0 {
		cfg.ActionTimeout = 10 * time.Minute
	}
	a, err := newAuth(cfg.Token, cfg.Addr, cfg.AllowedHosts, cfg.TLS)
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, log: cfg.Log, auth: a, timeline: newTimeline(500, cfg.Now),
		state: &State{Host: cfg.Host}, keys: newKeyBook(),
		desWake: make(chan struct{}, 1), refreshWake: make(chan struct{}, 1)}
	c.state.Host.KeyCheckSeconds = cfg.Host.KeyCheckInterval.Seconds()
	c.state.DemoPlaintext = cfg.DemoPlaintext
	c.state.BlocksAvailable = cfg.Blocks != nil
	c.state.RatesAvailable = cfg.Rates != nil
	c.routes()
	return c, nil
}

// Handler is the console's HTTP handler: every route behind the checks.
func (c *Console) Handler() http.Handler { return c.auth.wrap(c.mux) }

func (c *Console) routes() {
	files, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is part of the build
	}
	c.mux = http.NewServeMux()
	c.mux.Handle("GET /", staticFiles(files))
	c.mux.HandleFunc("GET /api/state", c.serveState)
	c.mux.HandleFunc("GET /api/events", c.serveEvents)
	c.mux.HandleFunc("GET /api/rates", c.serveRates)
	c.mux.HandleFunc("POST /api/vms/{name}/{action}", c.vmAction)
	c.mux.HandleFunc("POST /api/snapshots", c.createSnapshot)
	c.mux.HandleFunc("POST /api/keys/enabled", c.setKeyEnabled)
	c.mux.HandleFunc("POST /api/keys/rotate", c.rotateKey)
	c.mux.HandleFunc("POST /api/block", c.block)
}

// Run reads the control plane and the key store's events until ctx ends.
func (c *Console) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { c.refreshLoop(ctx) })
	wg.Go(func() { c.desLoop(ctx) })
	wg.Go(func() { c.followKeyEvents(ctx) })
	wg.Wait()
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// staticFiles serves the embedded page. Only GET of known files; "/" is the
// page itself.
func staticFiles(files fs.FS) http.Handler {
	fsrv := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			if _, err := fs.Stat(files, r.URL.Path[1:]); err != nil {
				http.NotFound(w, r)
				return
			}
		}
		fsrv.ServeHTTP(w, r)
	})
}

// errorf is a refusal the page shows as is.
func errorf(status int, format string, args ...any) *api.Error {
	return &api.Error{Status: status, Code: http.StatusText(status), Message: fmt.Sprintf(format, args...)}
}
