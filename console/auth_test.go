package console

import (
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"hostcrypt/control/api"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLoginSetsASessionCookieAndDropsTheToken(t *testing.T) {
	r := newRig(t, nil)
	w := r.do(httptest.NewRequest("GET", "http://"+testHost+"/login?token="+testToken, nil))
	require.Equal(t, http.StatusSeeOther, w.Code)
	assert.Equal(t, "/", w.Header().Get("Location"), "the browser goes on to a URL without the token")
	var ck *http.Cookie
	for _, c := range w.Result().Cookies() {
		if c.Name == CookieName {
			ck = c
		}
	}
	require.NotNil(t, ck)
	assert.True(t, ck.HttpOnly)
	assert.Equal(t, http.SameSiteStrictMode, ck.SameSite)
	assert.Equal(t, "/", ck.Path)
	assert.False(t, ck.Secure, "plain HTTP on loopback: a Secure cookie would never come back")
	assert.NotContains(t, ck.Value, testToken, "the cookie is a session of its own, not the token")
	assert.Len(t, ck.Value, 64)

	page := r.get(ck, "/")
	require.Equal(t, http.StatusOK, page.Code)
	assert.Contains(t, page.Body.String(), "hostcrypt console")

	// A second login is a second session; both work.
	ck2 := r.login()
	assert.NotEqual(t, ck.Value, ck2.Value)
	assert.Equal(t, http.StatusOK, r.get(ck, "/api/state").Code)
	assert.Equal(t, http.StatusOK, r.get(ck2, "/api/state").Code)
}

func TestLoginRefusesAWrongToken(t *testing.T) {
	r := newRig(t, nil)
	for _, tok := range []string{"", "wrong", testToken[:63], testToken + "0", strings.ToUpper(testToken)} {
		w := r.do(httptest.NewRequest("GET", "http://"+testHost+"/login?token="+tok, nil))
		assert.Equal(t, http.StatusForbidden, w.Code, "token %q", tok)
		assert.Empty(t, w.Result().Cookies(), "token %q", tok)
	}
	w := r.do(httptest.NewRequest("POST", "http://"+testHost+"/login?token="+testToken, nil))
	assert.Equal(t, http.StatusMethodNotAllowed, w.Code)
	assert.Empty(t, w.Result().Cookies())
}

func TestEveryRequestNeedsTheSessionCookie(t *testing.T) {
	r := newRig(t, nil)
	r.login() // a session exists; the requests below do not carry it
	forged := &http.Cookie{Name: CookieName, Value: strings.Repeat("a", 64)}
	token := &http.Cookie{Name: CookieName, Value: testToken}
	for _, ck := range []*http.Cookie{nil, forged, token} {
		for _, path := range []string{"/", "/index.html", "/app.js", "/style.css", "/favicon.svg", "/api/state", "/api/events", "/api/rates", "/nothing"} {
			w := r.get(ck, path)
			assert.Equal(t, http.StatusUnauthorized, w.Code, "GET %s with %v", path, ck)
			assert.NotContains(t, w.Body.String(), "<script", "GET %s", path)
		}
		for _, path := range []string{"/api/vms/vm1/stop", "/api/snapshots", "/api/keys/enabled", "/api/block"} {
			req := httptest.NewRequest("POST", "http://"+testHost+path, strings.NewReader(`{}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Origin", "http://"+testHost)
			if ck != nil {
				req.AddCookie(ck)
			}
			assert.Equal(t, http.StatusUnauthorized, r.do(req).Code, "POST %s", path)
		}
	}
	assert.Empty(t, r.ctl.called(), "no refused request reached the control plane")
}

func TestLogoutEndsTheSession(t *testing.T) {
	r := newRig(t, nil)
	ck := r.login()
	req := httptest.NewRequest("POST", "http://"+testHost+"/logout", nil)
	req.Header.Set("Origin", "http://"+testHost)
	req.AddCookie(ck)
	require.Equal(t, http.StatusNoContent, r.do(req).Code)
	assert.Equal(t, http.StatusUnauthorized, r.get(ck, "/api/state").Code)
}

func TestHostHeaderAllowlist(t *testing.T) {
	r := newRig(t, func(c *Config) { c.AllowedHosts = []string{"demo.example", "other.example:9000"} })
	ck := r.login()
	for host, want := range map[string]int{
		"127.0.0.1:8080":     http.StatusOK,
		"localhost:8080":     http.StatusOK,
		"LOCALHOST:8080":     http.StatusOK,
		"[::1]:8080":         http.StatusOK,
		"demo.example:8080":  http.StatusOK,
		"other.example:9000": http.StatusOK,
		// DNS rebinding: a name of the attacker's that resolves to
		// 127.0.0.1 reaches the port, and its page would be same-origin
		// with the answer.
		"attacker.example:8080": http.StatusMisdirectedRequest,
		"localhost:8081":        http.StatusMisdirectedRequest,
		"demo.example:9000":     http.StatusMisdirectedRequest,
		"":                      http.StatusMisdirectedRequest,
	} {
		req := httptest.NewRequest("GET", "http://"+testHost+"/api/state", nil)
		req.Host = host
		req.AddCookie(ck)
		assert.Equal(t, want, r.do(req).Code, "Host %q", host)
	}
	// The login itself is behind the allowlist: a rebinding page cannot
	// log in with a token it learnt elsewhere either.
	req := httptest.NewRequest("GET", "http://attacker.example:8080/login?token="+testToken, nil)
	w := r.do(req)
	assert.Equal(t, http.StatusMisdirectedRequest, w.Code)
	assert.Empty(t, w.Result().Cookies())
}

func TestStateChangingRequestsNeedTheConsolesOrigin(t *testing.T) {
	r := newRig(t, nil)
	ck := r.login()
	cases := []struct {
		name               string
		origin, site, ctyp string
	}{
		{"no Origin", "", "", "application/json"},
		{"another origin", "http://attacker.example", "cross-site", "application/json"},
		{"another port", "http://127.0.0.1:9999", "same-site", "application/json"},
		{"https for http", "https://" + testHost, "", "application/json"},
		{"null origin", "null", "", "application/json"},
		{"right Origin, cross-site fetch", "http://" + testHost, "cross-site", "application/json"},
		{"a form's body", "http://" + testHost, "same-origin", "application/x-www-form-urlencoded"},
		{"text body", "http://" + testHost, "same-origin", "text/plain"},
	}
	for _, tc := range cases {
		req := httptest.NewRequest("POST", "http://"+testHost+"/api/vms/vm1/stop", strings.NewReader(`{}`))
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		if tc.site != "" {
			req.Header.Set("Sec-Fetch-Site", tc.site)
		}
		req.Header.Set("Content-Type", tc.ctyp)
		req.AddCookie(ck)
		assert.Equal(t, http.StatusForbidden, r.do(req).Code, tc.name)
	}
	assert.Empty(t, r.ctl.called(), "no refused request reached the control plane")
	w := r.post(ck, "/api/vms/vm1/stop", `{}`)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.Equal(t, []string{"stop vm1"}, r.ctl.called())
}

func TestSecurityHeadersOnEveryAnswer(t *testing.T) {
	r := newRig(t, nil)
	ck := r.login()
	answers := map[string]*httptest.ResponseRecorder{
		"page":        r.get(ck, "/"),
		"script":      r.get(ck, "/app.js"),
		"state":       r.get(ck, "/api/state"),
		"not found":   r.get(ck, "/nothing"),
		"no cookie":   r.get(nil, "/"),
		"wrong login": r.do(httptest.NewRequest("GET", "http://"+testHost+"/login?token=x", nil)),
	}
	for name, w := range answers {
		csp := w.Header().Get("Content-Security-Policy")
		assert.Contains(t, csp, "frame-ancestors 'none'", name)
		assert.Contains(t, csp, "script-src 'self'", name)
		assert.Contains(t, csp, "default-src 'none'", name)
		assert.NotContains(t, csp, "unsafe-inline", name)
		assert.NotContains(t, csp, "unsafe-eval", name)
		assert.Equal(t, "DENY", w.Header().Get("X-Frame-Options"), name)
		assert.Equal(t, "nosniff", w.Header().Get("X-Content-Type-Options"), name)
		assert.Equal(t, "no-referrer", w.Header().Get("Referrer-Policy"), name)
		assert.Equal(t, "no-store", w.Header().Get("Cache-Control"), name)
	}
	assert.Equal(t, http.StatusNotFound, answers["not found"].Code)
}

// The page works under its own CSP: no inline script, no inline style, no
// handler attribute, nothing loaded from elsewhere.
func TestThePageNeedsNothingTheCSPForbids(t *testing.T) {
	entries, err := static.ReadDir("static")
	require.NoError(t, err)
	require.NotEmpty(t, entries)
	external := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`)
	for _, e := range entries {
		b, err := static.ReadFile("static/" + e.Name())
		require.NoError(t, err)
		s := string(b)
		assert.NotRegexp(t, external, s, e.Name())
		assert.NotContains(t, s, "@import", e.Name())
		if strings.HasSuffix(e.Name(), ".html") {
			for _, m := range regexp.MustCompile(`(?is)<script([^>]*)>(.*?)</script>`).FindAllStringSubmatch(s, -1) {
				assert.Contains(t, m[1], `src="/`, "a script of %s is not a file of the console", e.Name())
				assert.Empty(t, strings.TrimSpace(m[2]), "inline script in %s", e.Name())
			}
			assert.NotRegexp(t, `(?i)\son[a-z]+\s*=`, s, "an event handler attribute in %s", e.Name())
			assert.NotRegexp(t, `(?i)\sstyle\s*=`, s, "an inline style in %s", e.Name())
			assert.NotContains(t, s, "<style", e.Name())
		}
		if strings.HasSuffix(e.Name(), ".js") {
			assert.NotContains(t, s, "innerHTML", "the page builds its DOM from text, not HTML")
			assert.NotRegexp(t, `\beval\(|new Function`, s)
			assert.NotContains(t, s, "localStorage", "the page keeps nothing")
			assert.NotContains(t, s, "document.cookie")
		}
	}
}

func TestTokensNeverInAnAnswerOrTheLog(t *testing.T) {
	r := newRig(t, func(c *Config) { c.DemoPlaintext = true })
	var all strings.Builder
	record := func(w *httptest.ResponseRecorder) {
		for k, vs := range w.Header() {
			all.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
		}
		all.Write(w.Body.Bytes())
	}
	w := r.do(httptest.NewRequest("GET", "http://"+testHost+"/login?token="+testToken, nil))
	record(w)
	ck := w.Result().Cookies()[0]
	record(r.do(httptest.NewRequest("GET", "http://"+testHost+"/login?token=bad"+testToken, nil)))
	for _, p := range []string{"/", "/app.js", "/api/state", "/api/rates"} {
		record(r.get(ck, p))
	}
	record(r.post(ck, "/api/keys/enabled", `{"kid":"https://ks/vaults/v1/keys/k1/ver1","enabled":false,"token":"`+opToken+`"}`))
	record(r.post(ck, "/api/keys/rotate", `{"kid":"https://ks/vaults/v1/keys/k1","token":"`+opToken+`"}`))
	r.keys.refuse = true
	refused := r.post(ck, "/api/keys/enabled", `{"kid":"https://ks/vaults/v1/keys/k1/ver1","enabled":true,"token":"`+opToken+`"}`)
	assert.Equal(t, http.StatusForbidden, refused.Code)
	record(refused)
	record(r.post(ck, "/api/keys/enabled", `{"kid":"not a kid","enabled":true,"token":"`+opToken+`"}`))
	record(r.post(ck, "/api/block", `{"vm":"vm1","disk":"d1","offset":0,"plaintext":true}`))
	record(r.get(ck, "/api/state")) // the timeline and state after all that

	// The event stream, as it stands.
	evs, _, _ := r.c.timeline.since(0)
	for _, e := range evs {
		all.WriteString(e.Title + e.Detail)
	}
	for _, secret := range []string{testToken, opToken} {
		assert.NotContains(t, all.String(), secret)
		assert.NotContains(t, r.logs.String(), secret)
	}
	assert.Equal(t, []string{opToken, opToken, opToken}, r.keys.tokens, "the operator's token reached the key store, each time")
}

func TestWriteToken(t *testing.T) {
	dir := t.TempDir()
	tok, path, err := WriteToken(dir)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, TokenFile), path)
	assert.Regexp(t, `^[0-9a-f]{64}$`, tok)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, tok+"\n", string(b))
	tok2, _, err := WriteToken(dir)
	require.NoError(t, err)
	assert.NotEqual(t, tok, tok2, "each start makes a new token")
	b, _ = os.ReadFile(path)
	assert.Equal(t, tok2+"\n", string(b))
}

func TestCheckAddr(t *testing.T) {
	for _, tc := range []struct {
		addr        string
		tls, remote bool
		ok          bool
	}{
		{"127.0.0.1:8080", false, false, true},
		{"localhost:8080", false, false, true},
		{"[::1]:8080", false, false, true},
		{"127.0.0.2:0", false, false, true},
		{"0.0.0.0:8080", false, false, false},
		{":8080", false, false, false},
		{"192.0.2.10:8080", false, false, false},
		{"demo.example:8080", false, false, false},
		{"0.0.0.0:8080", true, false, true},
		{"192.0.2.10:8080", false, true, true},
		{"127.0.0.1", false, false, false},
	} {
		err := CheckAddr("--web", tc.addr, tc.tls, tc.remote)
		if tc.ok {
			assert.NoError(t, err, tc.addr)
		} else {
			assert.Error(t, err, tc.addr)
		}
	}
	err := CheckAddr("--web", "0.0.0.0:8080", false, false)
	assert.ErrorContains(t, err, "--web-allow-remote")
}

func TestNewRefusesAShortToken(t *testing.T) {
	_, err := New(Config{Control: &fakeControl{}, Keys: newFakeKeys(), Token: "short", Addr: testAddr})
	assert.Error(t, err)
}

// Under TLS the cookie is Secure and the console's origin is https://.
func TestTLSConsole(t *testing.T) {
	srv := httptest.NewUnstartedServer(nil)
	addr := srv.Listener.Addr().String()
	ctl := &fakeControl{vms: []api.VM{{Name: "vm1", PowerState: api.PowerRunning}}}
	c, err := New(Config{Control: ctl, Keys: newFakeKeys(), Token: testToken, Addr: addr, TLS: true})
	require.NoError(t, err)
	srv.Config.Handler = c.Handler()
	srv.StartTLS()
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	hc := srv.Client()
	hc.Jar = jar
	resp, err := hc.Get("https://" + addr + "/login?token=" + testToken)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, resp.Request.Response.Cookies(), 1)
	ck := resp.Request.Response.Cookies()[0]
	assert.True(t, ck.Secure)
	assert.True(t, ck.HttpOnly)

	post := func(origin string) int {
		req, err := http.NewRequest("POST", "https://"+addr+"/api/vms/vm1/stop", strings.NewReader(`{}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Origin", origin)
		resp, err := hc.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, http.StatusForbidden, post("http://"+addr))
	assert.Equal(t, http.StatusOK, post("https://"+addr))
	assert.Equal(t, []string{"stop vm1"}, ctl.called())
}
