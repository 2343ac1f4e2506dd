package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
)

// CookieName is the console's session cookie.
const CookieName = "hostcrypt_console"

// maxSessions bounds the sessions kept: a login beyond it ends the oldest.
const maxSessions = 32

// CSP is the console's Content-Security-Policy: its own script, style and
// connections only, nothing inline, no plugin, no form posted elsewhere, and
// no page may frame it.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// auth is the console's gate: the Host allowlist, the login, the session
// cookie and the Origin check.
type auth struct {
	token  []byte
	hosts  map[string]bool
	secure bool

	mu       sync.Mutex
	sessions [][]byte
}

func newAuth(token, addr string, extra []string, secure bool) (*auth, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("console: listening address %q: %w", addr, err)
	}
	a := &auth{token: []byte(token), hosts: map[string]bool{}, secure: secure}
	for _, h := range append([]string{addr, "localhost", "127.0.0.1", "[::1]"}, extra...) {
		h = strings.ToLower(h)
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), port)
		}
		a.hosts[h] = true
	}
	return a, nil
}

// wrap puts the checks in front of next.
func (a *auth) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		if !a.hosts[strings.ToLower(r.Host)] {
			// A name that resolves to this address but is not the
			// console's: DNS rebinding, or a proxy the console does not
			// know (hostcryptd --web-host adds names).
			http.Error(w, "host "+quote(r.Host)+" is not one of the console's; add it with hostcryptd --web-host", http.StatusMisdirectedRequest)
			return
		}
		if r.URL.Path == "/login" {
			a.login(w, r)
			return
		}
		if !a.session(r) {
			http.Error(w, "not logged in: open the console at /login?token=TOKEN, TOKEN being the content of STATE/console.token (hostcryptd prints where it is)", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := a.sameOrigin(r); err != "" {
				http.Error(w, err, http.StatusForbidden)
				return
			}
		}
		if r.URL.Path == "/logout" && r.Method == http.MethodPost {
			a.logout(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// quote shows a header value in a message, cut short.
func quote(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return fmt.Sprintf("%q", s)
}

// login exchanges the token for a session cookie and sends the browser on to
// a URL without the token.
func (a *auth) login(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "log in with GET /login?token=TOKEN", http.StatusMethodNotAllowed)
		return
	}
	given := []byte(r.URL.Query().Get("token"))
	if subtle.ConstantTimeCompare(given, a.token) != 1 {
		http.Error(w, "wrong console token: use the content of STATE/console.token of this hostcryptd's current run", http.StatusForbidden)
		return
	}
	b := make([]byte, 32)
	rand.Read(b)
	id := hex.EncodeToString(b)
	a.mu.Lock()
	a.sessions = append(a.sessions, []byte(id))
	if len(a.sessions) > maxSessions {
		a.sessions = a.sessions[len(a.sessions)-maxSessions:]
	}
	a.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: id, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: a.secure})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// session tells whether r carries a session cookie of this run. Every
// session is compared, each in constant time.
func (a *auth) session(r *http.Request) bool {
	ck, err := r.Cookie(CookieName)
	if err != nil {
		return false
	}
	v := []byte(ck.Value)
	a.mu.Lock()
	defer a.mu.Unlock()
	found := 0
	for _, s := range a.sessions {
		found |= subtle.ConstantTimeCompare(v, s)
	}
	return found == 1
}

func (a *auth) logout(w http.ResponseWriter, r *http.Request) {
	ck, _ := r.Cookie(CookieName)
	a.mu.Lock()
	for i, s := range a.sessions {
		if subtle.ConstantTimeCompare([]byte(ck.Value), s) == 1 {
			a.sessions = append(a.sessions[:i], a.sessions[i+1:]...)
			break
		}
	}
	a.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: a.secure})
	w.WriteHeader(http.StatusNoContent)
}

// sameOrigin checks a state-changing request: the browser says where it
// comes from (Origin), and that must be the console itself; the body is
// JSON, which no plain HTML form can send. It returns why not, or "".
func (a *auth) sameOrigin(r *http.Request) string {
	origin := r.Header.Get("Origin")
	scheme := "http://"
	if a.secure {
		scheme = "https://"
	}
	if origin == "" || !strings.EqualFold(origin, scheme+r.Host) {
		return "cross-origin request refused: Origin " + quote(origin) + " is not this console's"
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" {
		return "cross-site request refused (Sec-Fetch-Site " + quote(s) + ")"
	}
	if r.URL.Path != "/logout" {
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			return "a console action has a JSON body (Content-Type application/json)"
		}
	}
	return ""
}
