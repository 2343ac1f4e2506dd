// Package server is the key store: a TLS REST server that plays Azure Key
// Vault (API 7.4) for hostcrypt. It owns vaults, RSA keys and their
// versions, platform AES keys, identities, access policies, rotation
// policies, the audit log and the key event stream. State lives in a bbolt
// database under the state directory; private key material in it is sealed
// under a master key, itself optionally sealed under a passphrase.
package server

import (
	"hostcrypt/keystore/api"

	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"hostcrypt/internal/dirlock"
)

// Clock tells the time. The scheduler, expiry and rotation read it; tests
// replace it (see testhooks_on.go for the build-tagged hook).
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Config configures a Server.
type Config struct {
	Dir        string
	Listen     string // host:port; port 0 picks a free one
	Passphrase []byte // nil: the master key is not passphrase-sealed
	Clock      Clock  // nil: the real clock (or the test-hook clock in testhooks builds)
	Logger     *slog.Logger

	AuditMaxBytes int64 // rotate the audit log past this size (default 16 MiB; at most AuditMaxTotalBytes/4)
	// AuditMaxTotalBytes caps all audit files together: the oldest rotated
	// files are removed beyond it (default 1 GiB; negative: no cap).
	AuditMaxTotalBytes int64
	// AuditMaxAge removes rotated audit files whose newest line is older
	// (default 365 days; negative: no cap).
	AuditMaxAge time.Duration
	// AuthFailBurst failed authentications from one source are answered
	// 401 and audited, then one every AuthFailEvery; more are answered 429
	// and summarised in the audit (defaults 10 and 10 s).
	AuthFailBurst int
	AuthFailEvery time.Duration
	// AuditSummaryInterval is how often suppressed failures are written
	// as summary lines and retention runs without a rotation (default 1 min).
	AuditSummaryInterval time.Duration
	TickInterval         time.Duration // how often the scheduler runs (default 1 s)
	WebhookRetryMin      time.Duration // first webhook retry delay (default 1 s)
	MaxBodyBytes         int64         // request body limit (default 1 MiB)

	// WebhookAllow lists the destinations webhooks may call (see
	// webhook.go for the forms); empty allows none.
	WebhookAllow []string
	// WebhookRootCAs verifies https webhook destinations; nil uses the
	// system's roots.
	WebhookRootCAs *x509.CertPool

	// webhookLookup resolves a webhook's host name (tests map names to
	// local servers); nil uses the system resolver.
	webhookLookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

// Server is a running key store.
type Server struct {
	cfg       Config
	log       *slog.Logger
	clock     Clock
	db        *bolt.DB
	master    []byte
	tenant    string
	audit     *auditLog
	lock      *dirlock.Lock // on cfg.Dir, held until closeState
	authLimit *authLimiter
	hub       *hub
	met       *serverMetrics
	ln        net.Listener
	http      *http.Server
	baseURL   string
	created   bool

	privCache sync.Map // vault/name/version -> crypto key material (see ops.go)

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	whMu     sync.Mutex
	webhooks map[string]context.CancelFunc
	runMu    sync.Mutex // one scheduler pass at a time

	webhookAllow  []allowEntry
	webhookLookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

// Open initialises the state directory on first start (master key, CA,
// tokens), loads it on later starts, and listens. Serve starts serving.
func Open(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("a state directory is required (--dir)")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8443"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if cfg.Clock == nil {
		cfg.Clock = defaultClock()
	}
	if cfg.AuditMaxBytes == 0 {
		cfg.AuditMaxBytes = 16 << 20
	}
	if cfg.AuditMaxTotalBytes == 0 {
		cfg.AuditMaxTotalBytes = 1 << 30
	}
	if cfg.AuditMaxAge == 0 {
		cfg.AuditMaxAge = 365 * 24 * time.Hour
	}
	if cfg.AuthFailBurst == 0 {
		cfg.AuthFailBurst = 10
	}
	if cfg.AuthFailEvery == 0 {
		cfg.AuthFailEvery = 10 * time.Second
	}
	if cfg.AuditSummaryInterval == 0 {
		cfg.AuditSummaryInterval = time.Minute
	}
	if cfg.TickInterval == 0 {
		cfg.TickInterval = time.Second
	}
	if cfg.WebhookRetryMin == 0 {
		cfg.WebhookRetryMin = time.Second
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	allow, err := parseWebhookAllow(cfg.WebhookAllow)
	if err != nil {
		return nil, err
	}
	if err := ensureDir(cfg.Dir); err != nil {
		return nil, err
	}
	// Before the master key is read or made: two key stores on one
	// directory would race to create it, and would then share a log.
	lock, err := dirlock.Acquire(cfg.Dir)
	if err != nil {
		return nil, err
	}
	master, created, err := loadOrCreateMasterKey(cfg.Dir, cfg.Passphrase)
	if err != nil {
		lock.Release()
		return nil, err
	}
	s := &Server{cfg: cfg, lock: lock, log: cfg.Logger, clock: cfg.Clock, master: master, created: created, hub: newHub(), webhooks: map[string]context.CancelFunc{},
		webhookAllow: allow, webhookLookup: cfg.webhookLookup}
	s.met = newServerMetrics(s)
	ok := false
	defer func() {
		if !ok {
			s.closeState()
		}
	}()
	if s.db, err = openState(cfg.Dir); err != nil {
		return nil, err
	}
	if s.tenant, err = initPrincipals(s.db, cfg.Dir, s.clock.Now()); err != nil {
		return nil, err
	}
	s.audit, err = openAuditLog(filepath.Join(cfg.Dir, dirAudit), auditOptions{
		rotateSize: cfg.AuditMaxBytes, maxTotal: cfg.AuditMaxTotalBytes, maxAge: cfg.AuditMaxAge,
		now: s.clock.Now, log: s.log,
	})
	if err != nil {
		return nil, err
	}
	s.authLimit = newAuthLimiter(cfg.AuthFailBurst, cfg.AuthFailEvery, time.Now)
	ca, caKey, err := loadOrCreateCA(cfg.Dir)
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %w", cfg.Listen, err)
	}
	cert, err := issueServerCert(cfg.Dir, ca, caKey, host)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	s.ln = ln
	s.baseURL = "https://" + ln.Addr().String()
	if err := writeFileAtomic(filepath.Join(cfg.Dir, fileAddress), []byte(s.baseURL+"\n")); err != nil {
		ln.Close()
		return nil, err
	}
	s.http = &http.Server{
		Handler:           s.routes(),
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10, // bounds what a request can put into its audit line
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	ok = true
	return s, nil
}

// BaseURL is https://HOST:PORT of the listening server.
func (s *Server) BaseURL() string { return s.baseURL }

// Created says whether this start initialised the state directory.
func (s *Server) Created() bool { return s.created }

// TenantID is the default tenant.
func (s *Server) TenantID() string { return s.tenant }

// Serve serves until Shutdown; it also runs the scheduler and webhooks.
func (s *Server) Serve() error {
	var hooks []webhook
	s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketWebhooks).ForEach(func(_, v []byte) error {
			var w webhook
			if json.Unmarshal(v, &w) == nil {
				hooks = append(hooks, w)
			}
			return nil
		})
	})
	for _, w := range hooks {
		s.startWebhook(w)
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.audit.retentionLoop(s.ctx, s.cfg.AuditSummaryInterval)
	}()
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(s.cfg.AuditSummaryInterval)
		defer t.Stop()
		for {
			select {
			case <-s.ctx.Done():
				return
			case <-t.C:
				s.flushAuthSummaries()
			}
		}
	}()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(s.cfg.TickInterval)
		defer t.Stop()
		for {
			select {
			case <-s.ctx.Done():
				return
			case <-t.C:
				if err := s.RunDue(); err != nil {
					s.log.Error("scheduler pass failed", "err", err)
				}
			}
		}
	}()
	err := s.http.ServeTLS(s.ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting requests, waits for those in flight, and closes the state.
func (s *Server) Shutdown(ctx context.Context) error {
	s.cancel() // ends long polls and webhook senders
	err := s.http.Shutdown(ctx)
	if err != nil {
		s.http.Close()
	}
	s.wg.Wait()
	s.flushAuthSummaries()
	s.closeState()
	return err
}

// flushAuthSummaries writes one audit line per source whose failed
// authentications were suppressed since the last one.
func (s *Server) flushAuthSummaries() {
	for _, sum := range s.authLimit.drain() {
		if err := s.audit.Append(sum.record(s.clock.Now())); err != nil {
			s.log.Error("audit append failed", "err", err)
		}
	}
}

// throttleFailure counts a failed authentication against its source and
// returns the error to answer: the 401 while the source is within its
// allowance, a 429 beyond it (then the call is not audited on its own).
func (s *Server) throttleFailure(c *call, err error) error {
	var ae *apiError
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		return err
	}
	src := sourceOf(c.r.RemoteAddr)
	allowed, retry, sum := s.authLimit.fail(src)
	if sum != nil {
		if aerr := s.audit.Append(sum.record(s.clock.Now())); aerr != nil {
			s.log.Error("audit append failed", "err", aerr)
		}
	}
	s.met.authFailed.Inc()
	if allowed {
		return err
	}
	c.throttled = true
	secs := int(math.Ceil(retry.Seconds()))
	c.w.Header().Set("Retry-After", strconv.Itoa(secs))
	return errf(http.StatusTooManyRequests, "TooManyRequests", "", "%s; too many failed authentications came from %s, so this one is refused without a check of its own: retry after %d s with a valid token", ae.Message, src, secs)
}

func (s *Server) closeState() {
	if s.audit != nil {
		s.audit.Close()
	}
	if s.db != nil {
		s.db.Close()
	}
	s.privCache.Range(func(k, _ any) bool { s.privCache.Delete(k); return true })
	wipe(s.master)
	if s.lock != nil {
		s.lock.Release()
	}
}

func (s *Server) kid(vault, name, version string) string {
	return s.baseURL + "/vaults/" + vault + "/keys/" + name + "/" + version
}

// call is one request in flight: who made it and what the audit line says.
type call struct {
	w http.ResponseWriter
	r *http.Request
	p *principal
	// actor is the host identity that acts for p (api.ActForHeader), or
	// nil.
	actor  *principal
	reqID  string
	op     string
	vault  string
	kid    string
	status int
	// throttled: a failed authentication beyond its source's allowance,
	// counted in a summary line instead of audited on its own.
	throttled bool
}

type handlerFunc func(c *call) (any, error)

// handle registers h behind authentication, the body limit, the error
// envelope and the audit log. Every request, allowed or denied, leaves
// exactly one audit line before its answer is sent.
func (s *Server) handle(mux *http.ServeMux, pattern, op string, h handlerFunc) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		c := &call{w: w, r: r, reqID: newID(), op: op, vault: r.PathValue("vault"), status: http.StatusOK}
		if name := r.PathValue("name"); name != "" && strings.HasPrefix(pattern[strings.Index(pattern, " ")+1:], "/vaults/{vault}/keys/") {
			// Until a handler resolves the version, a refused call is
			// audited with the key id its path names.
			c.kid = s.baseURL + "/vaults/" + c.vault + "/keys/" + name
			if v := r.PathValue("version"); v != "" {
				c.kid += "/" + v
			}
		}
		w.Header().Set("x-ms-request-id", c.reqID)
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
		var (
			out any
			err error
		)
		func() {
			defer func() {
				if v := recover(); v != nil {
					s.log.Error("handler panic", "op", op, "panic", fmt.Sprint(v))
					err = errors.New("panic")
				}
			}()
			if err = s.authenticate(c); err == nil {
				out, err = h(c)
			} else {
				err = s.throttleFailure(c, err)
			}
		}()
		rec := &api.AuditRecord{
			Time: s.clock.Now().UTC(), OperationName: op, Vault: clip(c.vault, 64), Kid: clip(c.kid, 512),
			RequestID: c.reqID, ClientIP: r.RemoteAddr,
		}
		if c.p != nil {
			rec.CallerObjectID, rec.CallerTenantID, rec.CallerType = c.p.ObjectID, c.p.TenantID, c.p.Kind
		}
		if c.actor != nil {
			rec.ActorObjectID, rec.ActorType, rec.ActorName = c.actor.ObjectID, c.actor.Kind, clip(c.actor.DisplayName, 128)
		}
		var body any = out
		if err != nil {
			ae := asAPIError(err, s.log, c.reqID, "op", op, "vault", c.vault, "kid", c.kid)
			c.status = ae.Status
			rec.ErrorCode = ae.Code
			env := api.ErrorBody{Code: ae.Code, Message: ae.Message}
			if ae.Inner != "" {
				rec.ErrorCode = ae.Inner
				env.InnerError = &api.InnerError{Code: ae.Inner}
			}
			body = api.ErrorEnvelope{Error: env}
			if ae.Status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="hostcrypt-keystore"`)
			}
		}
		rec.ResultCode = c.status
		rec.ResultType = resultType(c.status)
		rec.DurationMs = float64(time.Since(start).Microseconds()) / 1000
		if c.throttled {
			// Counted by the limiter; its summary line stands for this call.
		} else if aerr := s.appendAudit(rec); aerr != nil {
			// A request that cannot be audited is not answered as done.
			s.log.Error("audit append failed", "err", aerr)
			c.status = http.StatusServiceUnavailable
			body = api.ErrorEnvelope{Error: api.ErrorBody{Code: "AuditUnavailable", Message: "the audit log cannot be written; the request may have been applied, check and retry"}}
		}
		s.met.requests.WithLabelValues(op, resultType(c.status)).Inc()
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(c.status)
		if body != nil {
			json.NewEncoder(w).Encode(body)
		}
	})
}

// appendAudit appends rec to the audit log, timed for the metrics.
func (s *Server) appendAudit(rec *api.AuditRecord) error {
	start := time.Now()
	err := s.audit.Append(rec)
	s.met.auditAppend.Observe(time.Since(start).Seconds())
	return err
}

func resultType(status int) string {
	switch {
	case status < 300:
		return "Success"
	case status == 401:
		return "Unauthorized"
	case status == 403:
		return "Forbidden"
	case status == 404:
		return "NotFound"
	case status == 429:
		return "Throttled"
	case status < 500:
		return "BadRequest"
	}
	return "Failed"
}

func (s *Server) authenticate(c *call) error {
	h := c.r.Header.Get("Authorization")
	token, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || token == "" {
		return errf(http.StatusUnauthorized, "Unauthorized", "", "request has no bearer token; pass --token-file or set HOSTCRYPT_TOKEN_FILE")
	}
	var p principal
	err := s.db.View(func(tx *bolt.Tx) error {
		id := tx.Bucket(bucketTokens).Get([]byte(tokenHash(strings.TrimSpace(token))))
		if id == nil {
			return errf(http.StatusUnauthorized, "Unauthorized", "", "the bearer token is not valid (wrong token, or its identity was deleted)")
		}
		found, err := getJSON(tx, bucketPrincipals, string(id), &p)
		if err == nil && !found {
			err = errf(http.StatusUnauthorized, "Unauthorized", "", "the bearer token is not valid (its identity was deleted)")
		}
		return err
	})
	if err != nil {
		return err
	}
	c.p = &p
	if target := c.r.Header.Get(api.ActForHeader); target != "" {
		return s.actFor(c, target)
	}
	return nil
}

// decode reads a JSON body strictly: unknown fields, trailing data and
// oversized bodies are errors the caller can act on.
func decode(c *call, v any) error {
	dec := json.NewDecoder(c.r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errf(http.StatusRequestEntityTooLarge, "RequestTooLarge", "", "request body is larger than %d bytes", mbe.Limit)
		}
		if errors.Is(err, io.EOF) {
			return badParam("request body is empty; a JSON object is required")
		}
		return badParam("request body is not valid JSON for this operation: %s", jsonMsg(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badParam("request body has data after the JSON object")
	}
	return nil
}

func jsonMsg(err error) string {
	msg := err.Error()
	return strings.TrimPrefix(msg, "json: ")
}

func newVersion() string { return hex.EncodeToString(randBytes(16)) }
