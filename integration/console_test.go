package integration

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/internal/testenv"
)

// chromium returns the headless browser the console test drives (Debian's
// chromium; scripts/deps.sh installs it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if testenv.InCI() {
		t.Fatal("chromium is not installed (scripts/deps.sh installs it); in CI every test must run")
	}
	t.Skip("chromium is not installed (scripts/deps.sh installs it)")
	return ""
}

// browserLog is what a page did that the test checks afterwards: every
// request it made and every error its console showed.
type browserLog struct {
	mu       sync.Mutex
	requests []string
	errors   []string
}

func (b *browserLog) listen(ctx context.Context) error {
	return chromedp.Listen(ctx, func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch ev := ev.(type) {
		case *network.EventRequestWillBeSent:
			b.requests = append(b.requests, ev.Request.URL)
		case *runtime.EventExceptionThrown:
			b.errors = append(b.errors, "exception: "+ev.ExceptionDetails.Text)
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeWarning {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				b.errors = append(b.errors, "console."+string(ev.Type)+": "+strings.Join(args, " "))
			}
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.EntryLevelError || ev.Entry.Level == cdplog.EntryLevelWarning {
				b.errors = append(b.errors, string(ev.Entry.Source)+": "+ev.Entry.Text+" "+ev.Entry.URL)
			}
		}
	})
}

func (b *browserLog) snapshot() (requests, errors []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.requests...), append([]string(nil), b.errors...)
}

// TestConsoleInABrowser drives the web console in headless Chromium against
// the real daemons and a real mount: log in (the token leaves the URL), see
// the demo VM, look at a block (ciphertext beside what the guest reads),
// disable the VM's key with the operator's key store token typed in the
// page (the VM stops, the reason names the key, keystored's audit names the
// operator), and nothing the page loads comes from elsewhere or logs an
// error. Then a request without the cookie and a cross-origin POST, from a
// page of another origin in the same browser, are refused.
//
// HOSTCRYPT_CONSOLE_SCREENSHOT=FILE saves a PNG of the page at the end (the
// README's picture).
func TestConsoleInABrowser(t *testing.T) {
	browser := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const keyCheck = 2 * time.Second
	ks := startKeystore(t)
	h := newHost(t, ks, "--web", "127.0.0.1:0", "--web-demo-plaintext", "--key-check-interval", keyCheck.String())
	m := regexp.MustCompile(`web console listening" url=(http://127\.0\.0\.1:\d+)/`).FindStringSubmatch(h.logs.String())
	require.NotNil(t, m, h.logs.String())
	base := m[1]
	raw, err := os.ReadFile(filepath.Join(h.state, "console.token"))
	require.NoError(t, err)
	token := strings.TrimSpace(string(raw))
	raw, err = os.ReadFile(filepath.Join(ks.dir, "admin.token"))
	require.NoError(t, err)
	operator := strings.TrimSpace(string(raw))

	// The demo: a customer key in a vault, a set over it, vm1 with a disk
	// on it holding a known block, and vm2 on platform keys with
	// encryption at host.
	kid, _ := cmkVM(t, h)
	h.ok("vm", "create", "--name", "vm2", "--os-disk-size", "8M", "--encryption-at-host", "false")
	block := bytes.Repeat([]byte("the guest's own bytes. "), 4096/23+1)[:4096]
	src := filepath.Join(t.TempDir(), "block")
	require.NoError(t, os.WriteFile(src, block, 0o600))
	sh(t, "dd if="+src+" of="+h.img("vm1", "data-0.img")+" bs=4096 count=1 oflag=direct conv=notrunc,fsync status=none")

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1440, 900), chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	var page browserLog
	require.NoError(t, page.listen(bctx))
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		require.NoError(t, chromedp.Do(bctx, steps...), what)
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(sel)))
		require.NoError(t, err, sel)
		return s
	}
	attr := func(sel, name string) string {
		t.Helper()
		a, err := chromedp.Run(bctx, chromedp.AttributeValue(chromedp.CSS(sel), name))
		require.NoError(t, err, sel)
		require.True(t, a.Exists, "%s has no %s", sel, name)
		return a.Value
	}
	_, err = chromedp.Call(bctx, network.Enable, network.EnableParams{})
	require.NoError(t, err)
	_, err = chromedp.Call(bctx, cdplog.Enable, cdp.Empty{})
	require.NoError(t, err)
	_, err = chromedp.Call(bctx, runtime.Enable, cdp.Empty{})
	require.NoError(t, err)

	// Log in: the token is exchanged for a cookie and leaves the URL.
	do("log in", chromedp.Navigate(base+"/login?token="+token), chromedp.WaitVisible(chromedp.CSS(`[data-vm="vm1"].running`)))
	loc, err := chromedp.Run(bctx, chromedp.Location())
	require.NoError(t, err)
	assert.Equal(t, base+"/", loc)
	assert.NotContains(t, loc, token)
	assert.Equal(t, "running", strings.ToLower(text(`[data-vm="vm1"] .power`)))
	do("the set and the key shown",
		chromedp.WaitVisible(chromedp.CSS(`tr[data-des="des1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-kid="`+kid+`"] button.disable`)))

	// Look at the block: stored ciphertext beside what the guest reads.
	do("look at a block",
		chromedp.SetValue(chromedp.CSS(`#block-vm`), "vm1"),
		chromedp.SetValue(chromedp.CSS(`#block-disk`), "c1"),
		chromedp.SetValue(chromedp.CSS(`#block-offset`), "0"),
		chromedp.Click(chromedp.CSS(`#block-plain`)),
		chromedp.Click(chromedp.CSS(`#block-go`)),
		chromedp.WaitVisible(chromedp.CSS(`#block-guest .guest`)))
	guest := attr(`#block-guest .guest`, "data-plaintext")
	stored := attr(`#block-stored .layer[data-layer="1"]`, "data-ciphertext")
	assert.Equal(t, hex.EncodeToString(block), guest, "what the guest reads is what it wrote")
	require.Len(t, stored, 2*4096)
	assert.NotEqual(t, guest, stored, "storage holds ciphertext")
	assert.NotContains(t, stored, hex.EncodeToString([]byte("the guest's own bytes")))
	assert.Contains(t, h.logs.String(), "guest plaintext shown", "the plaintext view is logged")

	// The disk's rates come from the metrics' counters: the block written
	// above and the one written now are among the writes of the last
	// minutes.
	sh(t, "dd if="+src+" of="+h.img("vm1", "data-0.img")+" bs=4096 count=1 oflag=direct conv=notrunc,fsync status=none")
	wrote := `#rates .rate[data-vm="vm1"][data-disk="c1"]:not([data-writes="0"])`
	rctx, rcancel := context.WithTimeout(bctx, 15*time.Second)
	err = chromedp.Do(rctx, chromedp.WaitVisible(chromedp.CSS(wrote)))
	rcancel()
	require.NoError(t, err, "the rates of vm1's disk c1 show no write")
	assert.NotContains(t, text(`#rates`), "not available")

	// Disable the key version from the page, with the operator's token.
	do("disable the key",
		chromedp.Click(chromedp.CSS(`tr[data-kid="`+kid+`"] button.disable`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm-token`)),
		chromedp.SendKeys(chromedp.CSS(`#confirm-token`), operator),
		chromedp.Click(chromedp.CSS(`#confirm-ok`)))
	disabled := time.Now()
	wctx, wcancel := context.WithTimeout(bctx, 15*time.Second)
	err = chromedp.Do(wctx, chromedp.WaitVisible(chromedp.CSS(`[data-vm="vm1"].stopped .reason`)))
	wcancel()
	require.NoError(t, err, "the page did not show vm1 stopped; hostcryptd:\n%s", h.logs.String())
	t.Logf("the page showed vm1 stopped %v after the key was disabled (key check interval %v)", time.Since(disabled).Round(10*time.Millisecond), keyCheck)
	assert.Contains(t, text(`[data-vm="vm1"] .reason`), kid, "the reason names the key")
	do("the timeline", chromedp.WaitVisible(chromedp.CSS(`#timeline li.key`)))
	timeline := text(`#timeline`)
	assert.Contains(t, timeline, "KeyDisabled: vault1/k1")
	assert.Contains(t, timeline, "VM vm1 stopped")
	assert.Contains(t, timeline, "plaintext of VM vm1 disk c1 at offset 0 shown")
	typed, err := chromedp.Run(bctx, chromedp.JavascriptAttribute[string](chromedp.CSS(`#confirm-token`), "value"))
	require.NoError(t, err)
	assert.Empty(t, typed, "the page keeps no token once it is sent")

	// keystored audited the change as the operator, not as the host.
	var recs []struct {
		Op     string `json:"operationName"`
		Caller string `json:"callerObjectId"`
		Type   string `json:"callerType"`
		Kid    string `json:"kid"`
		Result int    `json:"resultCode"`
	}
	h.json(&recs, "keyvault", "audit", "--name", "vault1")
	creator, updater := "", ""
	for _, r := range recs {
		switch {
		case r.Op == "VaultCreate" && r.Result < 300:
			creator = r.Caller
		case r.Op == "KeyUpdate" && r.Result == 200 && r.Kid == kid:
			updater = r.Caller
			assert.NotEqual(t, "Platform", r.Type)
		}
	}
	require.NotEmpty(t, updater, "no KeyUpdate of %s in the audit", kid)
	assert.Equal(t, creator, updater, "the audit names the operator whose token was typed in")

	if path := os.Getenv("HOSTCRYPT_CONSOLE_SCREENSHOT"); path != "" {
		_, err := chromedp.Run(bctx, chromedp.Evaluate[chromedp.Void](`window.scrollTo(0, 0)`))
		require.NoError(t, err)
		// The page's own notice of the last action goes after 5 s.
		do("settle", chromedp.Sleep(6*time.Second))
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, png, 0o644))
	}

	// Everything the page loaded came from the console, and it logged no
	// error.
	requests, errs := page.snapshot()
	require.NotEmpty(t, requests)
	for _, u := range requests {
		assert.True(t, strings.HasPrefix(u, base+"/"), "the page requested %s, outside %s", u, base)
	}
	assert.Empty(t, errs, "the browser's console")
	assert.NotContains(t, strings.Join(requests, "\n"), operator, "the operator's token is in no URL")

	// A request without the cookie is refused, a read included.
	resp, err := http.Get(base + "/api/state")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// A page of another origin in the same browser posts to the console:
	// the browser sends the cookie (same site: only the port differs), the
	// console refuses by Origin.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><p id="p">posting</p><script>
const post = (mode, type) => fetch(%q, {method: 'POST', mode: mode, credentials: 'include', headers: {'Content-Type': type}, body: '{"name":"evil","source":"vm2_OsDisk"}'})
  .then(r => 'answered ' + r.status, e => 'failed');
Promise.all([post('no-cors', 'text/plain'), post('cors', 'application/json')]).then(rs => {
  const d = document.createElement('p'); d.id = 'done'; d.textContent = rs.join(', '); document.body.append(d); });
</script>`, base+"/api/snapshots")
	}))
	defer evil.Close()
	ectx, ecancel := chromedp.NewContext(bctx)
	defer ecancel()
	require.NoError(t, chromedp.Do(ectx, chromedp.Navigate(evil.URL), chromedp.WaitVisible(chromedp.CSS(`#done`))))
	outcome, err := chromedp.Run(ectx, chromedp.Text(chromedp.CSS(`#done`)))
	require.NoError(t, err)
	t.Logf("the other origin's posts: %s", outcome)
	assert.NotContains(t, h.ok("snapshot", "list"), "evil", "the cross-origin POST did nothing")

	// The same POST from Go with the browser's cookie: refused by its
	// Origin alone; with the console's Origin it is done.
	jar, err := chromedp.Call(bctx, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/"}})
	require.NoError(t, err)
	cookies := jar.Cookies
	require.Len(t, cookies, 1)
	assert.True(t, cookies[0].HTTPOnly)
	assert.Equal(t, network.CookieSameSiteStrict, cookies[0].SameSite)
	send := func(origin, name string) (int, string) {
		req, err := http.NewRequest("POST", base+"/api/snapshots", strings.NewReader(`{"name":"`+name+`","source":"vm2_OsDisk"}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Origin", origin)
		req.AddCookie(&http.Cookie{Name: cookies[0].Name, Value: cookies[0].Value})
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, msg := send(evil.URL, "evil2")
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, msg, "cross-origin request refused")
	code, msg = send(base, "legit")
	require.Equal(t, http.StatusOK, code, msg)
	var snaps []struct {
		Name string `json:"name"`
	}
	h.json(&snaps, "snapshot", "list")
	var names []string
	for _, s := range snaps {
		names = append(names, s.Name)
	}
	assert.Equal(t, []string{"legit"}, names)
}
