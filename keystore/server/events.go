package server

import (
	"hostcrypt/keystore/api"

	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

const eventPrefix = "Microsoft.KeyVault."

// emitKeyEvent appends an event about a key version inside tx.
func (s *Server) emitKeyEvent(tx *bolt.Tx, typ string, k *key, kv *keyVersion) error {
	d := api.EventData{VaultName: k.Vault, ObjectType: "Key", ObjectName: k.Name}
	if kv != nil {
		d.Id = s.kid(k.Vault, k.Name, kv.Version)
		d.Version = kv.Version
		d.NBF = unixPtr(kv.NBF)
		d.EXP = unixPtr(kv.EXP)
	} else {
		d.Id = s.baseURL + "/vaults/" + k.Vault + "/keys/" + k.Name
	}
	return s.appendEvent(tx, typ, k.Vault, k.Name, d)
}

func (s *Server) appendEvent(tx *bolt.Tx, typ, vaultName, subject string, d api.EventData) error {
	b := tx.Bucket(bucketEvents)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	ev := api.Event{
		Sequence: seq, ID: newID(), Topic: "/vaults/" + vaultName, Subject: subject,
		EventType: eventPrefix + typ, EventTime: s.clock.Now().UTC(), Data: d,
		DataVersion: "1", MetadataVersion: "1",
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	tx.OnCommit(s.hub.notify)
	tx.OnCommit(func() { s.met.events.WithLabelValues(eventType(ev.EventType)).Inc() })
	return b.Put(seqKey(seq), raw)
}

// readEvents returns up to limit events after seq that match; match runs
// inside the read transaction and may look at the state through tx.
func (s *Server) readEvents(after uint64, limit int, match func(*bolt.Tx, *api.Event) bool) ([]api.Event, error) {
	out := []api.Event{}
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			if binary.BigEndian.Uint64(k) <= after {
				continue
			}
			var ev api.Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return err
			}
			if match == nil || match(tx, &ev) {
				out = append(out, ev)
			}
		}
		return nil
	})
	return out, err
}

// waitEvents long-polls: it returns as soon as there are events after seq,
// or when wait has passed or ctx ends.
func (s *Server) waitEvents(ctx context.Context, after uint64, limit int, wait time.Duration, match func(*bolt.Tx, *api.Event) bool) ([]api.Event, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		ch := s.hub.wait() // taken before reading so no commit is missed
		evs, err := s.readEvents(after, limit, match)
		if err != nil || len(evs) > 0 {
			return evs, err
		}
		select {
		case <-ch:
		case <-deadline.C:
			return evs, nil
		case <-ctx.Done():
			return evs, nil
		case <-s.ctx.Done():
			return evs, nil
		}
	}
}

// hub wakes long-polls and webhook senders when events are committed.
type hub struct {
	mu sync.Mutex
	ch chan struct{}
}

func newHub() *hub { return &hub{ch: make(chan struct{})} }

func (h *hub) wait() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ch
}

func (h *hub) notify() {
	h.mu.Lock()
	defer h.mu.Unlock()
	close(h.ch)
	h.ch = make(chan struct{})
}

// webhook is a registered receiver of events: each batch is POSTed as a
// JSON array (as Event Grid does) and retried with backoff until it is
// accepted with a 2xx; the cursor is stored so delivery resumes after a
// restart.
type webhook struct {
	ID     string `json:"id"`
	URL    string `json:"url"`
	Vault  string `json:"vault,omitempty"`
	Tenant string `json:"tenantId"`
	Cursor uint64 `json:"cursor"`
}

// json is the webhook as the API shows it.
func (w webhook) json() api.Webhook {
	return api.Webhook{ID: w.ID, URL: w.URL, Vault: w.Vault, TenantID: w.Tenant, Cursor: w.Cursor}
}

func (s *Server) startWebhook(w webhook) {
	ctx, cancel := context.WithCancel(s.ctx)
	s.whMu.Lock()
	s.webhooks[w.ID] = cancel
	s.whMu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.deliver(ctx, w)
	}()
}

func (s *Server) stopWebhook(id string) {
	s.whMu.Lock()
	defer s.whMu.Unlock()
	if cancel, ok := s.webhooks[id]; ok {
		cancel()
		delete(s.webhooks, id)
	}
}

func (s *Server) deliver(ctx context.Context, w webhook) {
	// The allow list is the operator's and may have changed since the
	// webhook was registered: a destination no longer allowed gets nothing.
	allow, err := s.webhookEntry(w.URL)
	if err != nil {
		s.log.Error("webhook not delivered: its destination is not allowed by --webhook-allow", "webhook", w.ID, "url", w.URL, "err", err)
		return
	}
	client := s.webhookClient(allow)
	defer client.CloseIdleConnections()
	backoff := s.cfg.WebhookRetryMin
	// A webhook sees its tenant's vaults only, as GET /events does.
	match := func(tx *bolt.Tx, ev *api.Event) bool {
		if w.Vault != "" && ev.Data.VaultName != w.Vault {
			return false
		}
		v, err := loadVault(tx, ev.Data.VaultName)
		return err == nil && v.TenantID == w.Tenant
	}
	for ctx.Err() == nil {
		evs, err := s.waitEvents(ctx, w.Cursor, 100, time.Minute, match)
		if err != nil || len(evs) == 0 {
			continue
		}
		body, _ := json.Marshal(evs)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode/100 == 3 {
				err = fmt.Errorf("the destination answered %s; redirects are not followed", resp.Status)
			} else if resp.StatusCode/100 != 2 {
				err = fmt.Errorf("the destination answered %s", resp.Status)
			}
		}
		if err != nil {
			s.log.Warn("webhook delivery failed; retrying", "webhook", w.ID, "url", w.URL, "backoff", backoff, "err", err)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(backoff*2, 30*time.Second)
			continue
		}
		backoff = s.cfg.WebhookRetryMin
		w.Cursor = evs[len(evs)-1].Sequence
		s.db.Update(func(tx *bolt.Tx) error {
			var cur webhook
			if ok, _ := getJSON(tx, bucketWebhooks, w.ID, &cur); !ok {
				return nil // deleted meanwhile
			}
			cur.Cursor = w.Cursor
			return putJSON(tx, bucketWebhooks, w.ID, cur)
		})
	}
}

func unixPtr(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	u := t.Unix()
	return &u
}

func bigEndian(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
