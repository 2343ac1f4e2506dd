package console

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"hostcrypt/control/api"
	"hostcrypt/internal/testenv"
	ksapi "hostcrypt/keystore/api"

	"log/slog"

	"github.com/stretchr/testify/require"
)

// fakeControl is a control plane in memory: its VMs are what the test sets,
// and it records the actions it was asked for.
type fakeControl struct {
	mu        sync.Mutex
	vms       []api.VM
	disks     []api.Disk
	des       []api.DiskEncryptionSet
	desBlock  chan struct{} // ListDES waits on it when set
	calls     []string
	snapshots []api.Snapshot
	// readsVMs and readsDES count the readings.
	readsVMs, readsDES int
}

func (f *fakeControl) ListVMs(context.Context) ([]api.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readsVMs++
	return append([]api.VM(nil), f.vms...), nil
}

func (f *fakeControl) ListDisks(context.Context) ([]api.Disk, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.Disk(nil), f.disks...), nil
}

func (f *fakeControl) ListSnapshots(context.Context) ([]api.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.Snapshot(nil), f.snapshots...), nil
}

func (f *fakeControl) ListDES(ctx context.Context) ([]api.DiskEncryptionSet, error) {
	f.mu.Lock()
	block := f.desBlock
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readsDES++
	return append([]api.DiskEncryptionSet(nil), f.des...), nil
}

func (f *fakeControl) EncryptionReport(_ context.Context, vm string) (*api.EncryptionReport, error) {
	return &api.EncryptionReport{VM: vm, Entries: []api.ReportEntry{{Disk: "d1", Layer: "storage layer 1", Algorithm: "XAES-256-GCM", Encrypted: true}}}, nil
}

func (f *fakeControl) reads() (vms, des int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readsVMs, f.readsDES
}

func (f *fakeControl) call(what string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, what)
}

func (f *fakeControl) called() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeControl) setPower(name, power, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.vms {
		if f.vms[i].Name == name {
			f.vms[i].PowerState, f.vms[i].PowerStateReason = power, reason
		}
	}
}

func (f *fakeControl) StartVM(_ context.Context, name string) (*api.VM, error) {
	f.call("start " + name)
	f.setPower(name, api.PowerRunning, "")
	return &api.VM{Name: name, PowerState: api.PowerRunning}, nil
}

func (f *fakeControl) StopVM(_ context.Context, name string) (*api.VM, error) {
	f.call("stop " + name)
	f.setPower(name, api.PowerStopped, "")
	return &api.VM{Name: name, PowerState: api.PowerStopped}, nil
}

func (f *fakeControl) DeallocateVM(_ context.Context, name string) (*api.VM, error) {
	f.call("deallocate " + name)
	return nil, api.Errorf(http.StatusConflict, api.CodeConflict, "VM %q is busy", name)
}

func (f *fakeControl) CreateSnapshot(_ context.Context, r api.CreateSnapshotRequest) (*api.Snapshot, error) {
	f.call("snapshot " + r.Name + " of " + r.Source)
	return &api.Snapshot{Name: r.Name, SourceDisk: r.Source}, nil
}

// fakeKeys is a key store in memory: events the test appends, and the
// operator calls it was asked for with the token each came with.
type fakeKeys struct {
	mu      sync.Mutex
	events  []ksapi.Event
	added   chan struct{}
	tokens  []string
	calls   []string
	refuse  bool
	vaultsN int
}

func newFakeKeys() *fakeKeys { return &fakeKeys{added: make(chan struct{}, 100)} }

func (f *fakeKeys) add(e ksapi.Event) {
	f.mu.Lock()
	e.Sequence = uint64(len(f.events) + 1)
	f.events = append(f.events, e)
	f.mu.Unlock()
	f.added <- struct{}{}
}

func (f *fakeKeys) Events(ctx context.Context, after uint64, wait time.Duration) ([]ksapi.Event, error) {
	for {
		f.mu.Lock()
		var out []ksapi.Event
		for _, e := range f.events {
			if e.Sequence > after {
				out = append(out, e)
			}
		}
		f.mu.Unlock()
		if len(out) > 0 {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-f.added:
		case <-time.After(wait):
			return nil, nil
		}
	}
}

func (f *fakeKeys) Vault(_ context.Context, name string) (*ksapi.Vault, error) {
	f.mu.Lock()
	f.vaultsN++
	f.mu.Unlock()
	v := &ksapi.Vault{Name: name, Location: "local"}
	v.Properties.Sku.Name = "premium"
	return v, nil
}

func (f *fakeKeys) operator(token, what string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = append(f.tokens, token)
	f.calls = append(f.calls, what)
	if f.refuse {
		return &api.Error{Status: http.StatusForbidden, Code: "Forbidden", Message: "the key store refused: caller has no key permission 'update'"}
	}
	return nil
}

func (f *fakeKeys) SetKeyEnabled(_ context.Context, token, vault, key, version string, enabled bool) error {
	verb := "disable"
	if enabled {
		verb = "enable"
	}
	return f.operator(token, verb+" "+vault+"/"+key+"/"+version)
}

func (f *fakeKeys) RotateKey(_ context.Context, token, vault, key string) (string, error) {
	if err := f.operator(token, "rotate "+vault+"/"+key); err != nil {
		return "", err
	}
	return "https://ks/vaults/" + vault + "/keys/" + key + "/v2", nil
}

// fakeBlocks is one disk's block, stored and as the guest reads it.
type fakeBlocks struct {
	mu    sync.Mutex
	reads int
}

var guestBytes = []byte(strings.Repeat("guest data! ", 400))[:BlockSize]

func (f *fakeBlocks) InspectBlock(_ context.Context, vm, disk string, off int64) (*BlockView, error) {
	if disk != "d1" {
		return nil, errors.New("no such disk")
	}
	return &BlockView{Block: off / BlockSize, Written: true, Slot: "A", Layers: []LayerView{{Layer: 1, Algorithm: "XAES-256-GCM",
		Nonce: make([]byte, 24), Ciphertext: []byte(strings.Repeat("\x8f", BlockSize)), Tag: make([]byte, 16)}}}, nil
}

func (f *fakeBlocks) ReadGuest(_ context.Context, vm, disk string, p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.reads++
	f.mu.Unlock()
	return copy(p, guestBytes), nil
}

type fakeRates struct{}

func (fakeRates) Recent(vm, disk string) []RatePoint {
	t := time.Unix(1000, 0)
	return []RatePoint{{T: t, ReadOps: 10, WriteOps: 20, ReadLatency: time.Millisecond, WriteLatency: 2 * time.Millisecond},
		{T: t.Add(time.Second), ReadOps: 30, WriteOps: 40, ReadLatency: 3 * time.Millisecond, WriteLatency: 4 * time.Millisecond}}
}

const (
	testToken = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testAddr  = "127.0.0.1:8080"
	testHost  = "127.0.0.1:8080"
	opToken   = "operator-secret-token-7f3a"
)

type rig struct {
	t    *testing.T
	c    *Console
	ctl  *fakeControl
	keys *fakeKeys
	blk  *fakeBlocks
	logs *testenv.Buffer
	h    http.Handler
}

func newRig(t *testing.T, mod func(*Config)) *rig {
	t.Helper()
	r := &rig{t: t, keys: newFakeKeys(), blk: &fakeBlocks{}, logs: &testenv.Buffer{},
		ctl: &fakeControl{vms: []api.VM{{Name: "vm1", PowerState: api.PowerRunning,
			StorageProfile: api.StorageProfile{OsDisk: api.AttachedDisk{Name: "d1"}}}},
			disks: []api.Disk{{Name: "d1", KeyID: "https://ks/vaults/v1/keys/k1/ver1"}},
			des:   []api.DiskEncryptionSet{{Name: "des1", ActiveKey: api.KeyForDES{KeyURL: "https://ks/vaults/v1/keys/k1/ver1"}, KeyAccess: "ok"}}}}
	cfg := Config{Control: r.ctl, Keys: r.keys, Blocks: r.blk, Token: testToken, Addr: testAddr,
		Log: slog.New(slog.NewTextHandler(r.logs, nil))}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	require.NoError(t, err)
	r.c, r.h = c, c.Handler()
	ctx := t.Context()
	c.refresh(ctx, true)
	c.refreshDES(ctx, true)
	return r
}

// login returns a session cookie.
func (r *rig) login() *http.Cookie {
	r.t.Helper()
	w := r.do(httptest.NewRequest("GET", "http://"+testHost+"/login?token="+testToken, nil))
	require.Equal(r.t, http.StatusSeeOther, w.Code, w.Body.String())
	for _, c := range w.Result().Cookies() {
		if c.Name == CookieName {
			return c
		}
	}
	r.t.Fatal("login set no cookie")
	return nil
}

func (r *rig) do(req *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	r.h.ServeHTTP(w, req)
	return w
}

// post sends a same-origin JSON action with the session cookie.
func (r *rig) post(ck *http.Cookie, path, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", "http://"+testHost+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", "http://"+testHost)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.AddCookie(ck)
	return r.do(req)
}

func (r *rig) get(ck *http.Cookie, path string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("GET", "http://"+testHost+path, nil)
	if ck != nil {
		req.AddCookie(ck)
	}
	return r.do(req)
}
