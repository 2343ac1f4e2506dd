package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Event is one line of the timeline.
type Event struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Kind is where it comes from: "key" (the key store), "vm", "disk",
	// "des" (seen in the control plane), "action" (done from a console),
	// "plaintext" (a plaintext view).
	Kind string `json:"kind"`
	// Level is "info", "warn" or "alert".
	Level  string `json:"level"`
	Title  string `json:"title"`
	Detail string `json:"detail,omitempty"`
}

// timeline keeps the last events and wakes the streams that follow it. Its
// version also counts changes of the state, which the streams announce.
type timeline struct {
	now func() time.Time

	mu      sync.Mutex
	max     int
	events  []Event
	seq     uint64
	state   uint64
	changed chan struct{}
}

func newTimeline(max int, now func() time.Time) *timeline {
	return &timeline{max: max, now: now, changed: make(chan struct{})}
}

// add puts an event that happens now on the timeline.
func (t *timeline) add(kind, level, title, detail string) Event {
	return t.addAt(time.Time{}, kind, level, title, detail)
}

// addAt puts an event that happened at when (zero: now) on the timeline.
func (t *timeline) addAt(when time.Time, kind, level, title, detail string) Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	if when.IsZero() {
		when = t.now()
	}
	t.seq++
	e := Event{Seq: t.seq, Time: when.UTC(), Kind: kind, Level: level, Title: title, Detail: detail}
	t.events = append(t.events, e)
	if len(t.events) > t.max {
		t.events = append(t.events[:0:0], t.events[len(t.events)-t.max:]...)
	}
	t.notify()
	return e
}

// stateChanged tells the streams that the state changed.
func (t *timeline) stateChanged() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.state++
	t.notify()
}

func (t *timeline) notify() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// since returns the events after seq, the state's version and a channel
// closed at the next change.
func (t *timeline) since(seq uint64) ([]Event, uint64, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Event
	for _, e := range t.events {
		if e.Seq > seq {
			out = append(out, e)
		}
	}
	return out, t.state, t.changed
}

// heartbeat keeps an idle stream open through proxies and shows a dead one.
const heartbeat = 15 * time.Second

// serveEvents streams the timeline as server-sent events: "timeline"
// events carry an Event (their id its Seq, so a reconnecting browser
// resumes with Last-Event-ID), "state" events say the state changed and
// should be read again.
func (c *Console) serveEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming is not supported here", http.StatusInternalServerError)
		return
	}
	var after uint64
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		after, _ = strconv.ParseUint(id, 10, 64)
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	// A page that follows makes the readings frequent again, fresh at
	// once.
	c.viewers.Add(1)
	defer c.viewers.Add(-1)
	wake(c.refreshWake)
	wake(c.desWake)
	lastState := ^uint64(0)
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		evs, state, changed := c.timeline.since(after)
		for _, e := range evs {
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "id: %d\nevent: timeline\ndata: %s\n\n", e.Seq, b)
			after = e.Seq
		}
		if state != lastState {
			fmt.Fprintf(w, "event: state\ndata: %d\n\n", state)
			lastState = state
		}
		fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		case <-tick.C:
			fmt.Fprint(w, ": still here\n\n")
		}
	}
}
