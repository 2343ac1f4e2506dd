package cluster

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

var bg = context.Background()

// serverLocks keeps leased locks as a store's server would, on a clock of
// its own that the test moves.
type serverLocks struct {
	mu       sync.Mutex
	now      time.Time
	locks    map[string]held // key+name -> holder
	renewals int
	// hang, while not nil, holds every renewal until it is closed: a
	// store that does not answer.
	hang chan struct{}
	// fail, while not nil, fails every renewal (a fenced client).
	fail error
}

type held struct {
	cookie string
	until  time.Time
}

func newServerLocks() *serverLocks {
	return &serverLocks{now: time.Unix(1e9, 0), locks: map[string]held{}}
}

func (s *serverLocks) advance(d time.Duration) {
	s.mu.Lock()
	s.now = s.now.Add(d)
	s.mu.Unlock()
}

func (s *serverLocks) Lock(ctx context.Context, key, name, cookie, _ string, lease time.Duration, renew bool) error {
	s.mu.Lock()
	hang, fail := s.hang, s.fail
	s.mu.Unlock()
	if renew && fail != nil {
		return fail
	}
	if renew && hang != nil {
		select {
		case <-hang:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.locks[key+"\x00"+name]
	live := ok && s.now.Before(h.until)
	switch {
	case renew && (!live || h.cookie != cookie):
		return storage.ErrNotFound
	case !renew && live:
		return storage.ErrConflict
	}
	if renew {
		s.renewals++
	}
	s.locks[key+"\x00"+name] = held{cookie: cookie, until: s.now.Add(lease)}
	return nil
}

func (s *serverLocks) Unlock(_ context.Context, key, name, cookie string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, ok := s.locks[key+"\x00"+name]; ok && h.cookie == cookie {
		delete(s.locks, key+"\x00"+name)
	}
	return nil
}

func (s *serverLocks) Holders(_ context.Context, key, name string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, ok := s.locks[key+"\x00"+name]; ok && s.now.Before(h.until) {
		return []string{h.cookie}, nil
	}
	return nil, nil
}

func (s *serverLocks) renewed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.renewals
}

func alive(t *testing.T, st storage.Backend, l Locks) map[string]bool {
	t.Helper()
	hs, err := List(bg, st, l)
	require.NoError(t, err)
	out := map[string]bool{}
	for _, h := range hs {
		out[h.Name] = h.Alive
	}
	return out
}

func TestJoinListClose(t *testing.T) {
	st, err := local.Open(t.TempDir())
	require.NoError(t, err)
	locks := newServerLocks()
	a, err := Join(bg, Config{Name: "host-a", Store: st, Locks: locks, Lease: time.Hour})
	require.NoError(t, err)
	b, err := Join(bg, Config{Name: "host-b", Store: st, Locks: locks, Lease: time.Hour})
	require.NoError(t, err)
	assert.Equal(t, map[string]bool{"host-a": true, "host-b": true}, alive(t, st, locks))

	// A second daemon under a live host's name is refused, naming it.
	_, err = Join(bg, Config{Name: "host-a", Store: st, Locks: locks, Lease: time.Hour})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `host name "host-a" is in use`)

	// A clean stop is seen at once; the name is free again.
	require.NoError(t, a.Close(bg))
	assert.Equal(t, map[string]bool{"host-a": false, "host-b": true}, alive(t, st, locks))
	a2, err := Join(bg, Config{Name: "host-a", Store: st, Locks: locks, Lease: time.Hour})
	require.NoError(t, err)
	assert.True(t, alive(t, st, locks)["host-a"])
	require.NoError(t, a2.Close(bg))
	require.NoError(t, b.Close(bg))
}

// A host that stops renewing is lost once the server sees its lease run
// out, whatever the host's own clock says; a host that renews stays alive.
func TestLivenessIsTheServersLease(t *testing.T) {
	st, err := local.Open(t.TempDir())
	require.NoError(t, err)
	locks := newServerLocks()
	lease := 300 * time.Millisecond
	// Host a's clock is a day ahead: it changes nothing.
	a, err := Join(bg, Config{Name: "a", Store: st, Locks: locks, Lease: lease,
		Now: func() time.Time { return time.Now().Add(24 * time.Hour) }})
	require.NoError(t, err)
	defer a.Close(bg)
	dead, err := Join(bg, Config{Name: "dead", Store: st, Locks: locks, Lease: lease})
	require.NoError(t, err)
	// "dead" stops renewing without releasing its lock: a killed daemon.
	close(dead.stop)
	dead.wg.Wait()

	assert.Equal(t, map[string]bool{"a": true, "dead": true}, alive(t, st, locks), "within the lease both are alive")
	// Wait for a's renewal, then move the server's clock past the lease
	// of dead, but not of a's renewal.
	require.Eventually(t, func() bool { return locks.renewed() > 0 }, 10*time.Second, 10*time.Millisecond)
	locks.advance(lease + time.Millisecond)
	got := alive(t, st, locks)
	assert.False(t, got["dead"], "dead's lease ran out on the server")
	// a renews every lease/3 in real time; the server's clock jumped by
	// one lease, so a's next renewal finds its lock expired and takes it
	// again.
	require.Eventually(t, func() bool { return alive(t, st, locks)["a"] }, 10*time.Second, 10*time.Millisecond)
	// And the name of the dead host is free again.
	d2, err := Join(bg, Config{Name: "dead", Store: st, Locks: locks, Lease: lease})
	require.NoError(t, err)
	require.NoError(t, d2.Close(bg))
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"a", "host-1", "H.example_2"} {
		assert.NoError(t, CheckName(ok), ok)
	}
	for _, bad := range []string{"", "-a", ".a", "a/b", "a b", string(make([]byte, 64))} {
		assert.Error(t, CheckName(bad), "%q", bad)
	}
}

// A host whose clients another host fenced is marked so until it joins
// again.
func TestMarkFenced(t *testing.T) {
	st, err := local.Open(t.TempDir())
	require.NoError(t, err)
	locks := newServerLocks()
	a, err := Join(bg, Config{Name: "host-a", Store: st, Locks: locks, Lease: time.Hour})
	require.NoError(t, err)
	require.NoError(t, a.Close(bg))
	require.NoError(t, MarkFenced(bg, st, "host-a", "host-b"))
	hs, err := List(bg, st, locks)
	require.NoError(t, err)
	require.Len(t, hs, 1)
	assert.Equal(t, "host-b", hs[0].FencedBy)
	assert.False(t, hs[0].Alive)
	require.Error(t, MarkFenced(bg, st, "host-x", "host-b"), "no such host")

	a, err = Join(bg, Config{Name: "host-a", Store: st, Locks: locks, Lease: time.Hour})
	require.NoError(t, err)
	defer a.Close(bg)
	hs, err = List(bg, st, locks)
	require.NoError(t, err)
	assert.Empty(t, hs[0].FencedBy, "joining again clears it")
	assert.True(t, hs[0].Alive)
}
