package server

import (
	"hostcrypt/keystore/api"

	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"
)

// authLimiter throttles failed authentications per source address with a
// token bucket: a source may fail burst times at once and once more every
// `every` after that. A failure within the allowance is answered 401 and
// audited like any request; one beyond it is answered 429 and only
// counted, and the count goes into the audit log as one summary line
// ("N more failed authentications from X suppressed") at the source's next
// allowed failure or at the next flush. A bearer token is 256 random bits,
// so the throttle is not what stops guessing; it keeps a flood of bad
// tokens from costing an fsync and a line each.
//
// Requests with a valid token never pass through here: the host's own
// calls are not throttled even when they share an address with a source
// that is.
type authLimiter struct {
	burst float64
	every time.Duration
	now   func() time.Time // monotonic in production, so a clock step changes nothing

	mu      sync.Mutex
	sources map[string]*failSource
}

type failSource struct {
	tokens     float64
	last       time.Time
	suppressed int
	since      time.Time // first suppressed failure not yet reported
}

// authSummary is a count of suppressed failures to write as one line.
type authSummary struct {
	source string
	count  int
	since  time.Time
}

// maxFailSources bounds the limiter's memory; beyond it, new sources share
// one bucket named otherSources.
const (
	maxFailSources = 4096
	otherSources   = "other addresses"
)

func newAuthLimiter(burst int, every time.Duration, now func() time.Time) *authLimiter {
	return &authLimiter{burst: float64(burst), every: every, now: now, sources: map[string]*failSource{}}
}

// sourceOf is the throttled unit of a remote address: the IP, or the /64
// of an IPv6 address (one host commonly holds a whole /64).
func sourceOf(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return clip(host, 64)
	}
	ip = ip.WithZone("").Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// fail records a failed authentication from source. allowed is false when
// the source is over its allowance; retry is then how long until the next
// failure is allowed. A non-nil summary holds failures suppressed before
// this allowed one, to be written first.
func (l *authLimiter) fail(source string) (allowed bool, retry time.Duration, summary *authSummary) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	s, ok := l.sources[source]
	if !ok {
		if len(l.sources) >= maxFailSources {
			source = otherSources
			s = l.sources[source]
		}
		if s == nil {
			s = &failSource{tokens: l.burst, last: now}
			l.sources[source] = s
		}
	}
	s.tokens = min(l.burst, s.tokens+float64(now.Sub(s.last))/float64(l.every))
	s.last = now
	if s.tokens >= 1 {
		s.tokens--
		if s.suppressed > 0 {
			summary = &authSummary{source: source, count: s.suppressed, since: s.since}
			s.suppressed = 0
		}
		return true, 0, summary
	}
	if s.suppressed == 0 {
		s.since = now
	}
	s.suppressed++
	return false, time.Duration((1 - s.tokens) * float64(l.every)), nil
}

// drain returns the suppressed counts not yet reported and forgets sources
// whose allowance is whole again.
func (l *authLimiter) drain() []authSummary {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	var out []authSummary
	for src, s := range l.sources {
		if s.suppressed > 0 {
			out = append(out, authSummary{source: src, count: s.suppressed, since: s.since})
			s.suppressed = 0
		}
		if s.tokens+float64(now.Sub(s.last))/float64(l.every) >= l.burst {
			delete(l.sources, src)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].source < out[j].source })
	return out
}

// summaryRecord is the audit line for suppressed failures.
func (s authSummary) record(now time.Time) *api.AuditRecord {
	return &api.AuditRecord{
		Time: now.UTC(), OperationName: opAuthThrottled, ResultCode: 429, ResultType: "Throttled",
		ErrorCode: "Unauthorized", RequestID: newID(), ClientIP: s.source, Count: s.count,
		Message: fmt.Sprintf("%d more failed authentications from %s suppressed (throttled) since %s", s.count, s.source, s.since.UTC().Format(time.RFC3339)),
	}
}
