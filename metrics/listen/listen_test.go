package listen

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var ok = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "metric 1\n") })

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

func TestLoopbackServed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := Serve(ctx, "127.0.0.1:0", ok, Options{})
	require.NoError(t, err)
	code, body := get(t, http.DefaultClient, "http://"+addr+"/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "metric 1\n", body)
	code, _ = get(t, http.DefaultClient, "http://"+addr+"/debug/pprof/")
	require.Equal(t, http.StatusNotFound, code, "only /metrics")
	cancel()
	require.Eventually(t, func() bool {
		_, err := http.Get("http://" + addr + "/metrics")
		return err != nil
	}, 5*time.Second, 10*time.Millisecond, "the listener closes with ctx")
}

// An address the network reaches is refused unless TLS or the flag allows
// it; the error says what to do.
func TestRemoteRefused(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:9464"} {
		_, err := Serve(ctx, addr, ok, Options{Flag: "--metrics", RemoteFlag: "--metrics-allow-remote"})
		require.ErrorContains(t, err, "not a loopback address", addr)
		require.ErrorContains(t, err, "--metrics-allow-remote", addr)
	}
	_, err := Serve(ctx, "nonsense", ok, Options{})
	require.ErrorContains(t, err, "HOST:PORT")

	addr, err := Serve(ctx, "0.0.0.0:0", ok, Options{AllowRemote: true})
	require.NoError(t, err)
	port := addr[strings.LastIndex(addr, ":"):]
	code, _ := get(t, http.DefaultClient, "http://127.0.0.1"+port+"/metrics")
	require.Equal(t, http.StatusOK, code)
}

// With TLS any address is allowed, and it is served over TLS only.
func TestRemoteOverTLS(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ts := httptest.NewTLSServer(ok) // for its certificate (127.0.0.1) and a client trusting it
	defer ts.Close()
	addr, err := Serve(ctx, "0.0.0.0:0", ok, Options{TLS: ts.TLS.Clone()})
	require.NoError(t, err)
	port := addr[strings.LastIndex(addr, ":"):]
	code, body := get(t, ts.Client(), "https://127.0.0.1"+port+"/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "metric 1\n", body)
	resp, err := http.Get("http://127.0.0.1" + port + "/metrics")
	if err == nil {
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "plain HTTP to the TLS listener")
		resp.Body.Close()
	}
}
