package server

import (
	"context"
	"hostcrypt/internal/testenv"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/keystore/api"
	"hostcrypt/keystore/client"
)

type env struct {
	t        testing.TB
	dir      string
	s        *Server
	clock    *testenv.Clock
	admin    *client.Client
	platform *client.Client
	done     chan error
	clients  []*client.Client
}

type envOpt func(*Config)

func startEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ks")
	return startEnvIn(t, dir, testenv.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)), opts...)
}

func startEnvIn(t testing.TB, dir string, clock *testenv.Clock, opts ...envOpt) *env {
	t.Helper()
	cfg := Config{Dir: dir, Listen: "127.0.0.1:0", Clock: clock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), TickInterval: time.Hour, WebhookRetryMin: 10 * time.Millisecond}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := Open(cfg)
	require.NoError(t, err)
	e := &env{t: t, dir: dir, s: s, clock: clock, done: make(chan error, 1)}
	go func() { e.done <- s.Serve() }()
	e.admin = e.clientFromFile(fileAdminToken)
	e.platform = e.clientFromFile(filePlatformToken)
	t.Cleanup(e.stop)
	return e
}

func (e *env) stop() {
	if e.s == nil {
		return
	}
	for _, c := range e.clients {
		c.Close() // idle keep-alive connections would hold Shutdown up
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(e.t, e.s.Shutdown(ctx))
	require.NoError(e.t, <-e.done)
	e.s = nil
}

func (e *env) clientFromFile(name string) *client.Client {
	c, err := client.New(e.s.BaseURL(), filepath.Join(e.dir, fileCA), filepath.Join(e.dir, name))
	require.NoError(e.t, err)
	e.clients = append(e.clients, c)
	return c
}

func (e *env) clientWithToken(token string) *client.Client {
	c, err := client.NewWithToken(e.s.BaseURL(), filepath.Join(e.dir, fileCA), token)
	require.NoError(e.t, err)
	e.clients = append(e.clients, c)
	return c
}

// identity creates an identity and returns it with a client acting as it.
func (e *env) identity(typ, tenant string) (*api.Identity, *client.Client) {
	id, err := e.platform.CreateIdentity(context.Background(), typ, tenant, "test")
	require.NoError(e.t, err)
	require.NotEmpty(e.t, id.Token)
	return id, e.clientWithToken(id.Token)
}

func (e *env) vault(name, sku string) {
	var req api.VaultCreate
	req.Properties.Sku = &api.Sku{Name: sku}
	_, err := e.admin.CreateVault(context.Background(), name, req)
	require.NoError(e.t, err)
}

func requireCode(t *testing.T, err error, status int, code string) {
	t.Helper()
	require.Error(t, err)
	var ce *client.Error
	require.ErrorAs(t, err, &ce, "want a key store refusal, got %v", err)
	require.Equal(t, status, ce.Status, "%v", err)
	if code != "" {
		require.True(t, ce.Code == code || ce.InnerCode == code, "want code %s, got %v", code, err)
	}
	require.NotEmpty(t, ce.Message)
}

func readAll(t *testing.T, dir string) map[string][]byte {
	out := map[string][]byte{}
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			out[strings.TrimPrefix(p, dir)] = b
		}
		return nil
	})
	return out
}

// A second key store on a directory in use is refused at once, before it
// reads or makes the master key, and the first keeps serving.
func TestSecondServerOnDirRefused(t *testing.T) {
	e := startEnv(t)
	before, err := os.ReadFile(filepath.Join(e.dir, fileAdminToken))
	require.NoError(t, err)
	_, err = Open(Config{Dir: e.dir, Listen: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.ErrorContains(t, err, "in use")
	after, err := os.ReadFile(filepath.Join(e.dir, fileAdminToken))
	require.NoError(t, err)
	require.Equal(t, before, after)
	_, err = e.admin.ListVaults(context.Background())
	require.NoError(t, err)
}
