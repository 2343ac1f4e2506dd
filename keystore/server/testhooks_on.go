//go:build testhooks

package server

import (
	"hostcrypt/keystore/api"

	"net/http"
	"sync"
	"time"
)

// hookClock is the real clock plus an offset that integration tests move
// through POST /testhooks/clock. It exists only in binaries built with
// -tags testhooks.
type hookClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func defaultClock() Clock { return &hookClock{} }

func (c *hookClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// maxHookOffset keeps the moved clock far from where times stop being
// storable (year 9999) and from overflowing the offset.
const maxHookOffset = 100 * 365 * 24 * time.Hour

func (c *hookClock) advance(d time.Duration) (time.Time, bool) {
	c.mu.Lock()
	if d > maxHookOffset-c.offset {
		c.mu.Unlock()
		return time.Time{}, false
	}
	c.offset += d
	c.mu.Unlock()
	return c.Now(), true
}

func registerTestHooks(s *Server, h func(pattern, op string, f handlerFunc)) {
	h("POST /testhooks/clock", "TestHookClock", func(c *call) (any, error) {
		var req api.ClockAdvance
		if err := decode(c, &req); err != nil {
			return nil, err
		}
		if err := c.requireKind("move the clock", kindAdmin); err != nil {
			return nil, err
		}
		hc, ok := s.clock.(*hookClock)
		if !ok {
			return nil, errf(http.StatusConflict, "Conflict", "", "this server's clock is injected and cannot be moved over the API")
		}
		d, err := time.ParseDuration(req.Advance)
		if err != nil || d < 0 {
			return nil, badParam("advance %q is not a non-negative duration", req.Advance)
		}
		now, ok := hc.advance(d)
		if !ok {
			return nil, badParam("advance %q would move the clock more than 100 years (876000h) in all", req.Advance)
		}
		if err := s.RunDue(); err != nil {
			return nil, err
		}
		return map[string]any{"now": now.UTC()}, nil
	})
}
