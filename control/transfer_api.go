package control

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"hostcrypt/control/api"
)

// A transfer answers with a stream: a refusal found before any data moves
// is an ordinary error response; once the copy starts, the answer is 200
// with newline-delimited JSON (application/x-ndjson), one api.TransferEvent
// per line: progress lines, then a last line holding the disk or the error.
// Closing the connection cancels the transfer.

// progressEvery is how often a progress line is sent at most.
const progressEvery = 250 * time.Millisecond

// handleTransfers adds the routes of disk import and export.
func handleTransfers(mux *http.ServeMux, h *Host) {
	mux.HandleFunc(api.RouteImportDisk, func(w http.ResponseWriter, r *http.Request) {
		var req api.ImportDiskRequest
		if err := decode(r, &req); err != nil {
			h.writeError(w, r, err)
			return
		}
		h.serveTransfer(w, r, func(p func(api.Progress)) (*api.Disk, error) { return h.ImportDisk(r.Context(), req, p) })
	})
	mux.HandleFunc(api.RouteExportDisk, func(w http.ResponseWriter, r *http.Request) {
		var req api.ExportDiskRequest
		if err := decode(r, &req); err != nil {
			h.writeError(w, r, err)
			return
		}
		h.serveTransfer(w, r, func(p func(api.Progress)) (*api.Disk, error) {
			return h.ExportDisk(r.Context(), r.PathValue("name"), req, p)
		})
	})
}

// serveTransfer runs fn, streaming its progress once it reports any.
func (h *Host) serveTransfer(w http.ResponseWriter, r *http.Request, fn func(func(api.Progress)) (*api.Disk, error)) {
	rc := http.NewResponseController(w)
	var (
		mu      sync.Mutex
		started bool
		last    time.Time
	)
	enc := json.NewEncoder(w)
	send := func(ev api.TransferEvent) {
		_ = enc.Encode(ev)
		_ = rc.Flush()
	}
	d, err := fn(func(p api.Progress) {
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
		send(api.TransferEvent{Progress: &p})
	})
	mu.Lock()
	defer mu.Unlock()
	if !started {
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, api.TransferEvent{Disk: d})
		return
	}
	if err != nil {
		send(api.TransferEvent{Error: asError(err, h.log, "method", r.Method, "path", r.URL.Path)})
		return
	}
	send(api.TransferEvent{Disk: d})
}
