// Package client is the Go client of the key store (keystored): key
// operations for the host (wrap, unwrap, get, events), identity management
// for disk encryption sets, and the vault and key management the CLI uses.
// It speaks the wire types of package keystore/api.
//
// Every error the server returns is a *Error; network and TLS failures are
// distinct (IsUnreachable), because the host treats an unreachable key
// store differently from a refusal. Every call is bounded (Timeout): a key
// store that accepts a connection and then says nothing is reported as
// unreachable after that long, with ErrTimeout, never waited for.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hostcrypt/keystore/api"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Error is a refusal or failure reported by the key store.
type Error struct {
	Status    int
	Code      string
	InnerCode string
	Message   string
}

func (e *Error) Error() string {
	code := e.Code
	if e.InnerCode != "" {
		code += "/" + e.InnerCode
	}
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, code)
}

// UnreachableError wraps a failure to talk to the key store at all:
// connection, TLS or timeout. It is not a refusal.
type UnreachableError struct{ Err error }

func (e *UnreachableError) Error() string { return "key store unreachable: " + e.Err.Error() }
func (e *UnreachableError) Unwrap() error { return e.Err }

func codeIs(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && (e.InnerCode == code || e.Code == code)
}

// IsKeyDisabled reports a disabled key version (403 KeyDisabled).
func IsKeyDisabled(err error) bool { return codeIs(err, "KeyDisabled") }

// IsKeyExpired reports a wrap refused because the version expired.
func IsKeyExpired(err error) bool { return codeIs(err, "KeyExpired") }

// IsForbiddenByPolicy reports a missing access-policy permission.
func IsForbiddenByPolicy(err error) bool { return codeIs(err, "ForbiddenByPolicy") }

// IsKeyOperationForbidden reports an operation the key's key_ops exclude.
func IsKeyOperationForbidden(err error) bool { return codeIs(err, "KeyOperationForbidden") }

// IsNotFound reports a missing vault, key, version or identity.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// IsUnauthorized reports a missing, wrong or revoked token.
func IsUnauthorized(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusUnauthorized
}

// ErrTimeout is wrapped by the error of a call the key store did not answer
// within the client's timeout. Such an error is also IsUnreachable.
var ErrTimeout = errors.New("the key store did not answer in time")

// TimeoutError is a call the key store did not answer within After.
type TimeoutError struct {
	Host  string
	After time.Duration
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("the key store at %s did not answer within %s", e.Host, seconds(e.After))
}

func (e *TimeoutError) Unwrap() error { return ErrTimeout }

// seconds writes d as "10 s" or "1.5 s".
func seconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + " s"
}

// DefaultTimeout bounds each call of a client made by New or NewWithToken
// (SetTimeout changes it): well above a key store's slowest answer, an RSA
// 4096 key generation, and well below what a person waits for.
const DefaultTimeout = 30 * time.Second

// IsUnreachable reports that the key store could not be reached.
func IsUnreachable(err error) bool {
	var e *UnreachableError
	return errors.As(err, &e)
}

// Client talks to one key store with one bearer token.
type Client struct {
	base    *url.URL
	token   string
	http    *http.Client
	timeout time.Duration
	// actFor is the managed identity a host identity's calls act for
	// (ActingFor), or "".
	actFor string
}

// ActingFor returns a client that makes the calls of this one, a host
// identity's, acting for managed identity principalID: the key store
// authorises them as that identity and audits them naming both. It
// shares this client's connections.
func (c *Client) ActingFor(principalID string) *Client {
	cc := *c
	cc.actFor = principalID
	return &cc
}

// New makes a client from the base URL, the CA file to trust and a file
// holding the bearer token.
func New(baseURL, caFile, tokenFile string) (*Client, error) {
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("read token file: %w", err)
	}
	return NewWithToken(baseURL, caFile, strings.TrimSpace(string(tok)))
}

// NewWithToken makes a client from a token string.
func NewWithToken(baseURL, caFile, token string) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("key store URL %q must look like https://127.0.0.1:8443", baseURL)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pemData, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
		}
		tc.RootCAs = pool
	}
	tr := &http.Transport{
		TLSClientConfig:     tc,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   false,
	}
	return &Client{base: u, token: token, http: &http.Client{Transport: tr}, timeout: DefaultTimeout}, nil
}

// SetTimeout bounds every later call to d (0: no bound). A call that gets no
// complete answer in time fails with a *TimeoutError.
func (c *Client) SetTimeout(d time.Duration) { c.timeout = d }

// Timeout is the bound of each call.
func (c *Client) Timeout() time.Duration { return c.timeout }

// BaseURL is the key store's https://HOST:PORT.
func (c *Client) BaseURL() string { return c.base.String() }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// do sends a request to path (or to an absolute URL on the same server)
// and decodes the JSON answer into out.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	return c.doWaiting(ctx, 0, method, path, query, in, out)
}

// doWaiting is do for a request whose answer may take wait by design (a
// long poll): the timeout counts from then.
func (c *Client) doWaiting(ctx context.Context, wait time.Duration, method, path string, query url.Values, in, out any) error {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, wait+c.timeout, &TimeoutError{Host: c.base.Host, After: c.timeout})
		defer cancel()
	}
	err := c.send(ctx, method, path, query, in, out)
	if err != nil && ctx.Err() != nil {
		var te *TimeoutError
		if cause := context.Cause(ctx); errors.As(cause, &te) {
			return &UnreachableError{Err: te}
		}
	}
	return err
}

func (c *Client) send(ctx context.Context, method, path string, query url.Values, in, out any) error {
	u := *c.base
	if strings.HasPrefix(path, "https://") {
		pu, err := url.Parse(path)
		if err != nil {
			return fmt.Errorf("bad URL %q: %w", path, err)
		}
		if pu.Host != c.base.Host {
			return fmt.Errorf("%s is not on key store %s", path, c.base.Host)
		}
		u.Path = pu.Path
	} else {
		u.Path = c.base.Path + path
	}
	if query != nil {
		u.RawQuery = query.Encode()
	}
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if c.actFor != "" {
		req.Header.Set(api.ActForHeader, c.actFor)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &UnreachableError{Err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &UnreachableError{Err: err}
	}
	if resp.StatusCode/100 != 2 {
		var env api.ErrorEnvelope
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(raw, &env) == nil && env.Error.Code != "" {
			e.Code, e.Message = env.Error.Code, env.Error.Message
			if env.Error.InnerError != nil {
				e.InnerCode = env.Error.InnerError.Code
			}
		} else {
			e.Code, e.Message = http.StatusText(resp.StatusCode), strings.TrimSpace(string(raw))
		}
		return e
	}
	if out != nil && len(raw) > 0 {
		if rm, ok := out.(*json.RawMessage); ok {
			*rm = append((*rm)[:0], raw...)
			return nil
		}
		return json.Unmarshal(raw, out)
	}
	return nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func unb64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}
