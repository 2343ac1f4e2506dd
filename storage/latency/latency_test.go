package latency_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/latency"
	"hostcrypt/storage/local"
	"hostcrypt/storage/storagetest"
)

// delay is small so the suite stays fast, yet it still puts a timer and
// a goroutine switch into every call.
const delay = 50 * time.Microsecond

func open(t *testing.T) storage.Backend {
	b, err := local.Open(filepath.Join(t.TempDir(), "store"))
	require.NoError(t, err)
	return latency.New(b, delay)
}

type unwrapper interface{ Unwrap() storage.Backend }

func TestConformance(t *testing.T) {
	storagetest.Run(t, open, storagetest.Options{
		Reopen: func(t *testing.T, b storage.Backend) storage.Backend {
			dir := b.(unwrapper).Unwrap().(*local.Backend).Dir()
			inner, err := local.Open(dir)
			require.NoError(t, err)
			return latency.New(inner, delay)
		},
		Foreign: func(t *testing.T, b storage.Backend, key string) {
			p := filepath.Join(b.(unwrapper).Unwrap().(*local.Backend).Dir(), filepath.FromSlash(key))
			require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
			require.NoError(t, os.Symlink("/", p))
		},
	})
}

func TestDelays(t *testing.T) {
	const d = 20 * time.Millisecond
	inner, err := local.Open(t.TempDir())
	require.NoError(t, err)
	b := latency.New(inner, d)
	defer b.Close()
	ctx := t.Context()

	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"WriteMeta", func() error { return b.WriteMeta(ctx, "m", []byte("x")) }},
		{"ReadMeta", func() error { _, err := b.ReadMeta(ctx, "m"); return err }},
		{"List", func() error { _, err := b.List(ctx, ""); return err }},
		{"Usage", func() error { _, err := b.Usage(ctx, ""); return err }},
		{"Delete", func() error { return b.Delete(ctx, "m") }},
	} {
		start := time.Now()
		require.NoError(t, tc.call(), tc.name)
		require.GreaterOrEqual(t, time.Since(start), d, tc.name)
	}

	c, err := b.OpenChunk(ctx, "c", true)
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"WriteAt", func() error { _, err := c.WriteAt([]byte("x"), 0); return err }},
		{"ReadAt", func() error { _, err := c.ReadAt(make([]byte, 1), 0); return err }},
		{"PunchHole", func() error { return c.PunchHole(0, 1) }},
		{"Sync", c.Sync},
		{"Close", c.Close},
	} {
		start := time.Now()
		require.NoError(t, tc.call(), tc.name)
		require.GreaterOrEqual(t, time.Since(start), d, tc.name)
	}
}

func TestCancelCutsTheDelay(t *testing.T) {
	inner, err := local.Open(t.TempDir())
	require.NoError(t, err)
	b := latency.New(inner, time.Hour)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	_, err = b.ReadMeta(ctx, "m")
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestZeroDelayIsIdentity(t *testing.T) {
	inner, err := local.Open(t.TempDir())
	require.NoError(t, err)
	require.Same(t, storage.Backend(inner), latency.New(inner, 0))
}
