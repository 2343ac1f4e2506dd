package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/keystore/api"
	"hostcrypt/keystore/client"
	"hostcrypt/keystore/server"
)

func startServer(t *testing.T) (*server.Server, string) {
	dir := filepath.Join(t.TempDir(), "ks")
	s, err := server.Open(server.Config{Dir: dir, Listen: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	go s.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s, dir
}

// A refusal is an *Error; a failure to reach or trust the server is
// IsUnreachable and nothing else.
func TestRefusalAndUnreachableAreDistinct(t *testing.T) {
	s, dir := startServer(t)
	ctx := context.Background()
	c, err := client.New(s.BaseURL(), filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	defer c.Close()

	_, err = c.GetKey(ctx, "novault", "k", "")
	var ce *client.Error
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 404, ce.Status)
	assert.Equal(t, "VaultNotFound", ce.Code)
	assert.True(t, client.IsNotFound(err))
	assert.False(t, client.IsUnreachable(err))

	bad, err := client.NewWithToken(s.BaseURL(), filepath.Join(dir, "ca.pem"), "wrong")
	require.NoError(t, err)
	defer bad.Close()
	_, err = bad.ListVaults(ctx)
	assert.True(t, client.IsUnauthorized(err))
	assert.False(t, client.IsUnreachable(err))

	// Nobody listening.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	gone, err := client.New("https://"+addr, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	_, err = gone.ListVaults(ctx)
	assert.True(t, client.IsUnreachable(err), "%v", err)
	var ue *client.UnreachableError
	assert.True(t, errors.As(err, &ue))
	assert.False(t, client.IsNotFound(err))

	// A server signed by another CA is not trusted.
	other := filepath.Join(t.TempDir(), "other-ca.pem")
	writeCA(t, other)
	untrusted, err := client.New(s.BaseURL(), other, filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	_, err = untrusted.ListVaults(ctx)
	assert.True(t, client.IsUnreachable(err), "%v", err)

	// A kid on another server is refused before any request.
	_, _, err = c.UnwrapKey(ctx, "https://example.invalid:1/vaults/v/keys/k/1", api.RSAOAEP256, []byte{1})
	require.Error(t, err)
	assert.False(t, client.IsUnreachable(err))

	_, err = client.New("http://127.0.0.1:1", "", filepath.Join(dir, "admin.token"))
	require.Error(t, err, "TLS only")
}

func writeCA(t *testing.T, path string) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
}

// A key store that takes the connection and never answers (a stopped
// process: the kernel still completes the TCP handshake) is reported as
// unreachable once the client's timeout passes, saying so.
func TestSilentKeyStoreTimesOut(t *testing.T) {
	_, dir := startServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() }) // held open, never read
		}
	}()
	c, err := client.New("https://"+ln.Addr().String(), filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	defer c.Close()
	c.SetTimeout(300 * time.Millisecond)
	done := make(chan error, 1)
	go func() { _, err := c.ListVaults(context.Background()); done <- err }()
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the call was not bounded by the client's timeout")
	}
	assert.True(t, client.IsUnreachable(err), "%v", err)
	assert.ErrorIs(t, err, client.ErrTimeout)
	assert.ErrorContains(t, err, "did not answer within 0.3 s")

	// A caller's own cancellation stays a cancellation.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.ListVaults(ctx)
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, client.ErrTimeout)
}
