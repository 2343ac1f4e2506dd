package console

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"hostcrypt/control/api"
	ksapi "hostcrypt/keystore/api"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func state(t *testing.T, r *rig, ck *http.Cookie) *State {
	t.Helper()
	w := r.get(ck, "/api/state")
	require.Equal(t, http.StatusOK, w.Code)
	var s State
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &s))
	return &s
}

func TestStateShowsTheLastReading(t *testing.T) {
	r := newRig(t, nil)
	ck := r.login()
	s := state(t, r, ck)
	require.Len(t, s.VMs, 1)
	assert.Equal(t, "vm1", s.VMs[0].Name)
	require.Contains(t, s.Reports, "vm1")
	assert.Equal(t, "XAES-256-GCM", s.Reports["vm1"].Entries[0].Algorithm)
	require.Len(t, s.DES, 1)
	assert.True(t, s.BlocksAvailable)
	assert.False(t, s.RatesAvailable)
	assert.False(t, s.DemoPlaintext)
}

// A page load never waits for the key store: the sets' listing (which asks
// it) hangs here, and the state still answers with the reading before.
func TestStateDoesNotWaitForTheKeyStore(t *testing.T) {
	r := newRig(t, nil)
	ck := r.login()
	hang := make(chan struct{})
	r.ctl.mu.Lock()
	r.ctl.desBlock = hang
	r.ctl.des = nil
	r.ctl.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.c.refreshDES(ctx, false); close(done) }()
	answered := make(chan *State)
	go func() { answered <- state(t, r, ck) }()
	select {
	case s := <-answered:
		require.Len(t, s.DES, 1, "the last reading of the sets")
	case <-time.After(30 * time.Second):
		t.Fatal("GET /api/state waited for the hanging DES listing")
	}
	cancel()
	<-done
	close(hang)
}

func TestTimelineSaysAVMStoppedAndWhy(t *testing.T) {
	r := newRig(t, nil)
	reason := "key https://ks/vaults/v1/keys/k1/ver1 of disk encryption set \"des1\" is not usable: disabled"
	r.ctl.setPower("vm1", api.PowerStopped, reason)
	r.c.refresh(t.Context(), false)
	evs, _, _ := r.c.timeline.since(0)
	var found *Event
	for i := range evs {
		if evs[i].Kind == "vm" && strings.Contains(evs[i].Title, "vm1 stopped") {
			found = &evs[i]
		}
	}
	require.NotNil(t, found, "%+v", evs)
	assert.Equal(t, reason, found.Detail)
	assert.Equal(t, "alert", found.Level)

	// Nothing changed: nothing new.
	n := len(evs)
	r.c.refresh(t.Context(), false)
	evs, _, _ = r.c.timeline.since(0)
	assert.Len(t, evs, n)
}

func TestKeyBookFollowsTheEvents(t *testing.T) {
	b := newKeyBook()
	exp := time.Now().Add(48 * time.Hour).Unix()
	past := time.Now().Add(-time.Hour).Unix()
	ev := func(typ, vault, key, version string, exp *int64) ksapi.Event {
		return ksapi.Event{EventType: "Microsoft.KeyVault." + typ, Data: ksapi.EventData{
			Id: "https://ks/vaults/" + vault + "/keys/" + key + "/" + version, VaultName: vault, ObjectType: "Key", ObjectName: key, Version: version, EXP: exp}}
	}
	assert.Equal(t, "v1", b.apply(ev("KeyNewVersionCreated", "v1", "k1", "a", &exp)))
	assert.Equal(t, "", b.apply(ev("KeyNewVersionCreated", "v1", "k1", "b", nil)), "a vault is new once")
	b.apply(ev("KeyDisabled", "v1", "k1", "a", &exp))
	b.apply(ev("KeyNewVersionCreated", "v1", "k2", "c", &past))
	b.apply(ev("KeyNewVersionCreated", "v1", "k3", "d", nil))
	b.apply(ev("KeyNearExpiry", "v1", "k3", "d", nil))
	b.apply(ev("KeyNewVersionCreated", "v2", "gone", "e", nil))
	b.apply(ev("KeyDeleted", "v2", "gone", "e", nil))
	b.apply(ev("KeyNewVersionCreated", "v2", "purged", "f", nil))
	b.apply(ev("KeyPurged", "v2", "purged", "", nil))
	b.apply(ksapi.Event{EventType: "Microsoft.KeyVault.VaultAccessPolicyChanged", Data: ksapi.EventData{VaultName: "v3", ObjectType: "Vault", ObjectName: "v3"}})

	vaults, keys := b.views(time.Now())
	got := map[string]KeyView{}
	for _, k := range keys {
		got[k.Vault+"/"+k.Name+"/"+k.Version] = k
	}
	require.Len(t, got, 5)
	assert.Equal(t, "disabled", got["v1/k1/a"].State)
	assert.False(t, got["v1/k1/a"].Current)
	require.NotNil(t, got["v1/k1/a"].Expires)
	assert.Equal(t, exp, got["v1/k1/a"].Expires.Unix())
	assert.Equal(t, "enabled", got["v1/k1/b"].State)
	assert.True(t, got["v1/k1/b"].Current)
	assert.Equal(t, "expired", got["v1/k2/c"].State, "past its expiry, event or not")
	assert.Equal(t, "near expiry", got["v1/k3/d"].State)
	assert.Equal(t, "deleted", got["v2/gone/e"].State)
	names := []string{}
	for _, v := range vaults {
		names = append(names, v.Name)
	}
	assert.Equal(t, []string{"v1", "v2", "v3"}, names)
	b.apply(ev("KeyEnabled", "v1", "k1", "a", &exp))
	b.apply(ksapi.Event{EventType: "Microsoft.KeyVault.KeyRecovered", Data: ksapi.EventData{VaultName: "v2", ObjectType: "Key", ObjectName: "gone"}})
	_, keys = b.views(time.Now())
	for _, k := range keys {
		if k.Version == "a" || k.Version == "e" {
			assert.Equal(t, "enabled", k.State, k.Version)
		}
	}
}

// The key events reach the key book, the timeline, and the state, with the
// sets and disks that use each version.
func TestKeyEventsReachTheStateAndTimeline(t *testing.T) {
	r := newRig(t, nil)
	ck := r.login()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.c.followKeyEvents(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	r.keys.add(ksapi.Event{EventType: "Microsoft.KeyVault.KeyNewVersionCreated", EventTime: time.Now(),
		Data: ksapi.EventData{Id: "https://ks/vaults/v1/keys/k1/ver1", VaultName: "v1", ObjectType: "Key", ObjectName: "k1", Version: "ver1"}})
	r.keys.add(ksapi.Event{EventType: "Microsoft.KeyVault.KeyDisabled", EventTime: time.Now(),
		Data: ksapi.EventData{Id: "https://ks/vaults/v1/keys/k1/ver1", VaultName: "v1", ObjectType: "Key", ObjectName: "k1", Version: "ver1"}})
	var s *State
	require.Eventually(t, func() bool {
		s = state(t, r, ck)
		return len(s.Keys) == 1 && s.Keys[0].State == "disabled" && len(s.Vaults) == 1 && s.Vaults[0].Sku == "premium"
	}, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, []string{"disk d1", "set des1"}, s.Keys[0].UsedBy)
	evs, _, _ := r.c.timeline.since(0)
	var titles []string
	for _, e := range evs {
		titles = append(titles, e.Title)
	}
	assert.Contains(t, titles, "KeyDisabled: v1/k1 version ver1")
}

func TestSSEStreamsTheTimelineAndStateChanges(t *testing.T) {
	r := newRig(t, nil)
	srv := httptest.NewUnstartedServer(r.h)
	srv.Start()
	defer srv.Close()
	ck := r.login()
	r.c.timeline.add("action", "info", "before the stream", "")

	open := func(lastID string) (*bufio.Reader, func()) {
		req, err := http.NewRequest("GET", srv.URL+"/api/events", nil)
		require.NoError(t, err)
		req.Host = testHost
		req.AddCookie(ck)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
		return bufio.NewReader(resp.Body), func() { resp.Body.Close() }
	}
	// next reads one event: its type, id and data.
	next := func(br *bufio.Reader) (typ, id, data string) {
		for {
			line, err := br.ReadString('\n')
			require.NoError(t, err)
			line = strings.TrimRight(line, "\n")
			switch {
			case line == "" && typ != "":
				return
			case strings.HasPrefix(line, "event: "):
				typ = line[7:]
			case strings.HasPrefix(line, "id: "):
				id = line[4:]
			case strings.HasPrefix(line, "data: "):
				data = line[6:]
			}
		}
	}
	br, closeStream := open("")
	typ, id, data := next(br)
	require.Equal(t, "timeline", typ)
	var e Event
	require.NoError(t, json.Unmarshal([]byte(data), &e))
	assert.Equal(t, "before the stream", e.Title)
	assert.Equal(t, "1", id)
	typ, _, _ = next(br)
	assert.Equal(t, "state", typ, "a new stream says to read the state")

	// Pushed as it happens.
	r.c.timeline.add("vm", "alert", "VM vm1 stopped", "key disabled")
	typ, id, data = next(br)
	require.Equal(t, "timeline", typ)
	require.NoError(t, json.Unmarshal([]byte(data), &e))
	assert.Equal(t, "VM vm1 stopped", e.Title)
	assert.Equal(t, "2", id)
	r.c.timeline.stateChanged()
	typ, _, _ = next(br)
	assert.Equal(t, "state", typ)
	closeStream()

	// A reconnecting browser resumes after the last id it saw.
	r.c.timeline.add("vm", "info", "third", "")
	br, closeStream = open("2")
	defer closeStream()
	typ, id, data = next(br)
	require.Equal(t, "timeline", typ)
	require.NoError(t, json.Unmarshal([]byte(data), &e))
	assert.Equal(t, "third", e.Title)
	assert.Equal(t, "3", id)
}

func TestActionsReachTheControlPlaneAndTheTimeline(t *testing.T) {
	r := newRig(t, nil)
	ck := r.login()
	w := r.post(ck, "/api/vms/vm1/stop", `{}`)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	w = r.post(ck, "/api/vms/vm1/start", ``)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	w = r.post(ck, "/api/vms/vm1/deallocate", `{}`)
	assert.Equal(t, http.StatusConflict, w.Code, "a refusal keeps its status")
	assert.Contains(t, w.Body.String(), "is busy")
	w = r.post(ck, "/api/vms/vm1/reboot", `{}`)
	assert.Equal(t, http.StatusNotFound, w.Code)
	w = r.post(ck, "/api/snapshots", `{"name":"s1","source":"d1","incremental":true}`)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	w = r.post(ck, "/api/snapshots", `{"name":"s1","source":"d1","extra":1}`)
	assert.Equal(t, http.StatusBadRequest, w.Code, "unknown fields are refused")
	assert.Equal(t, []string{"stop vm1", "start vm1", "deallocate vm1", "snapshot s1 of d1"}, r.ctl.called())
	evs, _, _ := r.c.timeline.since(0)
	var titles []string
	for _, e := range evs {
		if e.Kind == "action" {
			titles = append(titles, e.Title)
		}
	}
	assert.Equal(t, []string{"stop VM vm1", "start VM vm1", "deallocate VM vm1: refused", "snapshot s1 of disk d1"}, titles)
}

func TestKeyActionsNeedTheOperatorsToken(t *testing.T) {
	r := newRig(t, nil)
	ck := r.login()
	kid := "https://ks/vaults/v1/keys/k1/ver1"
	for _, b := range []string{
		`{"kid":"` + kid + `","enabled":false}`,
		`{"kid":"` + kid + `","enabled":false,"token":"  "}`,
		`{"kid":"` + kid + `","enabled":false,"token":"two words"}`,
		`{"kid":"` + kid + `","enabled":false,"token":"line\nbreak"}`,
		`{"kid":"` + kid + `","enabled":false,"token":"caf\u00e9"}`,
	} {
		w := r.post(ck, "/api/keys/enabled", b)
		assert.Equal(t, http.StatusBadRequest, w.Code, b)
		assert.Contains(t, w.Body.String(), "key store token", b)
	}
	w := r.post(ck, "/api/keys/rotate", `{"kid":"https://ks/vaults/v1/keys/k1"}`)
	assert.Equal(t, http.StatusBadRequest, w.Code)
	assert.Empty(t, r.keys.calls)

	w = r.post(ck, "/api/keys/enabled", `{"kid":"https://ks/vaults/v1/keys/k1","enabled":false,"token":"t"}`)
	assert.Equal(t, http.StatusBadRequest, w.Code, "disabling names a version")
	w = r.post(ck, "/api/keys/enabled", `{"kid":"`+kid+`","enabled":false,"token":" t1\n"}`)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	w = r.post(ck, "/api/keys/rotate", `{"kid":"https://ks/vaults/v1/keys/k1","token":"t2"}`)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.Contains(t, w.Body.String(), "/vaults/v1/keys/k1/v2")
	assert.Equal(t, []string{"disable v1/k1/ver1", "rotate v1/k1"}, r.keys.calls)
	assert.Equal(t, []string{"t1", "t2"}, r.keys.tokens)
}

func TestBlockViewShowsPlaintextOnlyWithTheDemoFlag(t *testing.T) {
	ask := `{"vm":"vm1","disk":"d1","offset":5000,"plaintext":true}`
	t.Run("without the flag", func(t *testing.T) {
		r := newRig(t, nil)
		ck := r.login()
		w := r.post(ck, "/api/block", ask)
		require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		var a BlockAnswer
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &a))
		assert.Equal(t, int64(4096), a.Offset, "the block holding the offset")
		require.Len(t, a.Stored.Layers, 1)
		assert.Len(t, a.Stored.Layers[0].Ciphertext, BlockSize)
		assert.Nil(t, a.Guest)
		assert.Contains(t, a.GuestNote, "--web-demo-plaintext")
		assert.Zero(t, r.blk.reads, "the guest's data was not even read")
		assert.NotContains(t, w.Body.String(), "guest data")
	})
	t.Run("with the flag", func(t *testing.T) {
		r := newRig(t, func(c *Config) { c.DemoPlaintext = true })
		ck := r.login()
		w := r.post(ck, "/api/block", ask)
		require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		var a BlockAnswer
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &a))
		assert.Equal(t, guestBytes, a.Guest)
		assert.NotEqual(t, a.Stored.Layers[0].Ciphertext, a.Guest)
		assert.Contains(t, r.logs.String(), "guest plaintext shown", "every view is logged")
		assert.Contains(t, r.logs.String(), "vm=vm1")
		assert.NotContains(t, r.logs.String(), "guest data", "the log says a view happened, not what it showed")
		evs, _, _ := r.c.timeline.since(0)
		n := 0
		for _, e := range evs {
			if e.Kind == "plaintext" {
				n++
				assert.Contains(t, e.Title, "VM vm1 disk d1 at offset 4096")
			}
		}
		assert.Equal(t, 1, n, "every view is an event")

		// Ciphertext alone is not recorded as a plaintext view.
		w = r.post(ck, "/api/block", `{"vm":"vm1","disk":"d1","offset":0}`)
		require.Equal(t, http.StatusOK, w.Code)
		assert.NotContains(t, w.Body.String(), `"guest"`)
		assert.Equal(t, 1, r.blk.reads)

		// Never for a stopped VM.
		r.ctl.setPower("vm1", api.PowerStopped, "")
		r.c.refresh(t.Context(), false)
		w = r.post(ck, "/api/block", ask)
		assert.Equal(t, http.StatusConflict, w.Code)
		assert.Contains(t, w.Body.String(), "not running")
		assert.Equal(t, 1, r.blk.reads)
	})
	t.Run("a GET is no way around the Origin check", func(t *testing.T) {
		r := newRig(t, func(c *Config) { c.DemoPlaintext = true })
		ck := r.login()
		w := r.get(ck, "/api/block?"+url.Values{"vm": {"vm1"}, "disk": {"d1"}}.Encode())
		assert.NotEqual(t, http.StatusOK, w.Code)
		assert.Zero(t, r.blk.reads)
	})
}

func TestRates(t *testing.T) {
	r := newRig(t, nil)
	ck := r.login()
	var a RatesAnswer
	require.NoError(t, json.Unmarshal(r.get(ck, "/api/rates").Body.Bytes(), &a))
	assert.False(t, a.Available)
	assert.Contains(t, a.Note, "not available")

	r = newRig(t, func(c *Config) { c.Rates = fakeRates{} })
	ck = r.login()
	assert.True(t, state(t, r, ck).RatesAvailable)
	require.NoError(t, json.Unmarshal(r.get(ck, "/api/rates").Body.Bytes(), &a))
	assert.True(t, a.Available)
	require.Len(t, a.Disks, 1)
	assert.Equal(t, "d1", a.Disks[0].Disk)
	require.Len(t, a.Disks[0].Points, 2)
	p := a.Disks[0].Points[1]
	assert.Equal(t, 30.0, p.ReadOps)
	assert.Equal(t, 40.0, p.WriteOps)
	assert.Equal(t, 3.0, p.ReadLatencyMs)
	assert.Equal(t, 4.0, p.WriteLatencyMs)

	// A stopped VM's disks have no rates to show.
	r.ctl.setPower("vm1", api.PowerStopped, "")
	r.c.refresh(t.Context(), false)
	require.NoError(t, json.Unmarshal(r.get(ck, "/api/rates").Body.Bytes(), &a))
	assert.Empty(t, a.Disks)
}

// With no page open the console reads the control plane seldom and asks the
// key store nothing; a page that follows the events makes it read at once
// and often.
func TestReadingsFollowTheViewers(t *testing.T) {
	r := newRig(t, func(c *Config) {
		c.RefreshInterval, c.IdleInterval, c.DESInterval = 5*time.Millisecond, time.Hour, 5*time.Millisecond
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// newRig read once of each; Run reads once more at its start.
	require.Eventually(t, func() bool { v, d := r.ctl.reads(); return v == 2 && d == 2 }, 10*time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond) // twenty intervals
	v, d := r.ctl.reads()
	assert.Equal(t, 2, v, "no page: no reading before the idle interval")
	assert.Equal(t, 2, d, "no page: no question to the key store")

	srv := httptest.NewServer(r.h)
	defer srv.Close()
	ck := r.login()
	req, err := http.NewRequest("GET", srv.URL+"/api/events", nil)
	require.NoError(t, err)
	req.Host = testHost
	req.AddCookie(ck)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	require.Eventually(t, func() bool { v, d := r.ctl.reads(); return v > 5 && d > 5 }, 10*time.Second, time.Millisecond)
	resp.Body.Close()
	require.Eventually(t, func() bool { return r.c.viewers.Load() == 0 }, 10*time.Second, time.Millisecond)
}

// A page that only polls the state (no event stream) keeps the readings
// frequent too: its first request has the control plane read at once.
func TestAStateRequestWakesTheReadings(t *testing.T) {
	r := newRig(t, func(c *Config) {
		c.RefreshInterval, c.IdleInterval, c.DESInterval = 5*time.Millisecond, time.Hour, 5*time.Millisecond
	})
	ck := r.login()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	require.Eventually(t, func() bool { v, d := r.ctl.reads(); return v == 2 && d == 2 }, 10*time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	v, _ := r.ctl.reads()
	require.Equal(t, 2, v)
	r.ctl.setPower("vm1", api.PowerStopped, "stopped by hand")
	state(t, r, ck)
	require.Eventually(t, func() bool {
		s := state(t, r, ck)
		return s.VMs[0].PowerState == api.PowerStopped
	}, 10*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { v, d := r.ctl.reads(); return v > 5 && d > 5 }, 10*time.Second, time.Millisecond)
}
