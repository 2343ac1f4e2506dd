package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// A transfer answers with a stream: a refusal found before any data moves
// is an ordinary error response; once the copy starts, the answer is 200
// with newline-delimited JSON (application/x-ndjson), one TransferEvent per
// line: progress lines, then a last line holding the disk or the error.
// Closing the connection cancels the transfer.

// TransferEvent is one line of a transfer's answer.
type TransferEvent struct {
	Progress *Progress `json:"progress,omitempty"`
	Disk     *Disk     `json:"disk,omitempty"`
	Error    *Error    `json:"error,omitempty"`
}

// progressEvery is how often a progress line is sent at most.
const progressEvery = 250 * time.Millisecond

// handleTransfers adds the routes of disk import and export:
//
//	POST   /disks/import                import (ImportDiskRequest), streamed
//	POST   /disks/{name}/export         export (ExportDiskRequest), streamed
func handleTransfers(mux *http.ServeMux, h *Host) {
	mux.HandleFunc("POST /disks/import", func(w http.ResponseWriter, r *http.Request) {
		var req ImportDiskRequest
		if err := decode(r, &req); err != nil {
			h.writeError(w, r, err)
			return
		}
		h.serveTransfer(w, r, func(p func(Progress)) (*Disk, error) { return h.ImportDisk(r.Context(), req, p) })
	})
	mux.HandleFunc("POST /disks/{name}/export", func(w http.ResponseWriter, r *http.Request) {
		var req ExportDiskRequest
		if err := decode(r, &req); err != nil {
			h.writeError(w, r, err)
			return
		}
		h.serveTransfer(w, r, func(p func(Progress)) (*Disk, error) {
			return h.ExportDisk(r.Context(), r.PathValue("name"), req, p)
		})
	})
}

func (h *Host) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := asError(err)
	if e.Status >= 500 {
		h.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, e.Status, map[string]any{"error": e})
}

// serveTransfer runs fn, streaming its progress once it reports any.
func (h *Host) serveTransfer(w http.ResponseWriter, r *http.Request, fn func(func(Progress)) (*Disk, error)) {
	rc := http.NewResponseController(w)
	var (
		mu      sync.Mutex
		started bool
		last    time.Time
	)
	enc := json.NewEncoder(w)
	send := func(ev TransferEvent) {
		_ = enc.Encode(ev)
		_ = rc.Flush()
	}
	d, err := fn(func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			started = true
		} else if time.Since(last) < progressEvery && p.Done < p.Total {
			return
		}
		last = time.Now()
		send(TransferEvent{Progress: &p})
	})
	mu.Lock()
	defer mu.Unlock()
	if !started {
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, TransferEvent{Disk: d})
		return
	}
	if err != nil {
		e := asError(err)
		if e.Status >= 500 {
			h.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		send(TransferEvent{Error: e})
		return
	}
	send(TransferEvent{Disk: d})
}

// Transfer sends a streamed request (disk import or export) and calls
// progress for each progress line; it returns the disk of the last line. A
// refusal comes back as *Error. Cancelling ctx cancels the transfer.
func (c *Client) Transfer(ctx context.Context, path string, in any, progress func(Progress)) (*Disk, error) {
	raw, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", "http://hostcryptd"+path, bytesReader(raw))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach hostcryptd: %w (is it running? check --host-socket or HOSTCRYPT_SOCKET)", err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev TransferEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("reading hostcryptd's answer (%s): %w", resp.Status, err)
		}
		switch {
		case ev.Error != nil:
			if resp.StatusCode >= 300 {
				ev.Error.Status = resp.StatusCode
			}
			return nil, ev.Error
		case resp.StatusCode >= 300:
			return nil, fmt.Errorf("hostcryptd answered %s", resp.Status)
		case ev.Disk != nil:
			return ev.Disk, nil
		case ev.Progress != nil && progress != nil:
			progress(*ev.Progress)
		}
	}
	return nil, fmt.Errorf("hostcryptd answered %s and ended before the transfer finished", resp.Status)
}
