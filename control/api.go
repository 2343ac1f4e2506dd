package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// The control API is JSON over HTTP on a unix socket that only root can open
// (0600). Paths follow the resources:
//
//	GET    /disks                       list
//	POST   /disks                       create (CreateDiskRequest)
//	GET    /disks/{name}                show
//	PATCH  /disks/{name}                update (UpdateDiskRequest)
//	DELETE /disks/{name}                delete
//	POST   /disks/import                import an image file (ImportDiskRequest), streamed
//	POST   /disks/{name}/export         export to a raw file (ExportDiskRequest), streamed
//	GET    /vms                         list
//	POST   /vms                         create (CreateVMRequest)
//	GET    /vms/{name}                  show
//	PATCH  /vms/{name}                  update a deallocated VM (UpdateVMRequest)
//	GET    /vms/{name}/encryption-report what is encrypted where (EncryptionReport)
//	DELETE /vms/{name}                  delete
//	POST   /vms/{name}/start|stop|deallocate
//	POST   /vms/{name}/disks            attach (AttachRequest)
//	DELETE /vms/{name}/disks/{disk}     detach
//	GET    /des                         list disk encryption sets
//	POST   /des                         create (CreateDESRequest)
//	GET    /des/{name}                  show, with a live check of key access
//	PATCH  /des/{name}                  update (UpdateDESRequest): switch key, auto-rotation
//	DELETE /des/{name}                  delete
//	GET    /snapshots                   list snapshots
//	POST   /snapshots                   create (CreateSnapshotRequest)
//	GET|DELETE /snapshots/{name}        show, delete
//	PATCH  /snapshots/{name}            switch keys (UpdateSnapshotRequest)
//	GET    /images                      list images
//	POST   /images                      create (CreateImageRequest)
//	GET|DELETE /images/{name}           show, delete
//	POST   /snapshots|images/{name}/move move (MoveRequest)
//	GET    /progress/{kind}/{name}      progress of the copy creating disks|snapshots|images/{name}
//	POST   /disks/{name}/move           move to another resource group or subscription (MoveRequest)
//	POST   /host/gc                     list (dryRun) or remove what no record owns (GCRequest, GCReport)
//
// Errors come as {"error":{"code":…,"message":…}} with a 4xx or 5xx status.

// maxBody bounds a request body; every request of this API is small.
const maxBody = 1 << 20

// Handler serves the control API for h.
func Handler(h *Host) http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, fn func(r *http.Request) (any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			v, err := fn(r)
			if err != nil {
				e := asError(err)
				if e.Status >= 500 {
					h.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				}
				writeJSON(w, e.Status, map[string]any{"error": e})
				return
			}
			if v == nil {
				w.WriteHeader(http.StatusNoContent)
				return
			}
			writeJSON(w, http.StatusOK, v)
		})
	}
	handle("GET /disks", func(r *http.Request) (any, error) { return h.ListDisks(), nil })
	handle("POST /disks", func(r *http.Request) (any, error) {
		var req CreateDiskRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.CreateDisk(r.Context(), req)
	})
	handle("GET /disks/{name}", func(r *http.Request) (any, error) { return h.ShowDisk(r.PathValue("name")) })
	handle("PATCH /disks/{name}", func(r *http.Request) (any, error) {
		var req UpdateDiskRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.UpdateDisk(r.Context(), r.PathValue("name"), req)
	})
	handle("DELETE /disks/{name}", func(r *http.Request) (any, error) {
		return nil, h.DeleteDisk(r.Context(), r.PathValue("name"))
	})
	handleTransfers(mux, h)
	handle("GET /vms", func(r *http.Request) (any, error) { return h.ListVMs(), nil })
	handle("POST /vms", func(r *http.Request) (any, error) {
		var req CreateVMRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.CreateVM(r.Context(), req)
	})
	handle("GET /vms/{name}", func(r *http.Request) (any, error) { return h.ShowVM(r.PathValue("name")) })
	handle("PATCH /vms/{name}", func(r *http.Request) (any, error) {
		var req UpdateVMRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.UpdateVM(r.Context(), r.PathValue("name"), req)
	})
	handle("GET /vms/{name}/encryption-report", func(r *http.Request) (any, error) {
		return h.VMEncryptionReport(r.Context(), r.PathValue("name"))
	})
	handle("DELETE /vms/{name}", func(r *http.Request) (any, error) {
		return nil, h.DeleteVM(r.Context(), r.PathValue("name"))
	})
	handle("POST /vms/{name}/start", func(r *http.Request) (any, error) { return h.StartVM(r.Context(), r.PathValue("name")) })
	handle("POST /vms/{name}/stop", func(r *http.Request) (any, error) {
		return h.StopVM(r.Context(), r.PathValue("name"), "")
	})
	handle("POST /vms/{name}/deallocate", func(r *http.Request) (any, error) {
		return h.DeallocateVM(r.Context(), r.PathValue("name"))
	})
	handle("POST /vms/{name}/disks", func(r *http.Request) (any, error) {
		var req AttachRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.AttachDisk(r.Context(), r.PathValue("name"), req)
	})
	handle("DELETE /vms/{name}/disks/{disk}", func(r *http.Request) (any, error) {
		return h.DetachDisk(r.Context(), r.PathValue("name"), r.PathValue("disk"))
	})
	handle("GET /des", func(r *http.Request) (any, error) { return h.ListDES(r.Context()), nil })
	handle("POST /des", func(r *http.Request) (any, error) {
		var req CreateDESRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.CreateDES(r.Context(), req)
	})
	handle("GET /des/{name}", func(r *http.Request) (any, error) { return h.ShowDES(r.Context(), r.PathValue("name")) })
	handle("PATCH /des/{name}", func(r *http.Request) (any, error) {
		var req UpdateDESRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.UpdateDES(r.Context(), r.PathValue("name"), req)
	})
	handle("DELETE /des/{name}", func(r *http.Request) (any, error) {
		return nil, h.DeleteDES(r.Context(), r.PathValue("name"))
	})
	handle("GET /snapshots", func(r *http.Request) (any, error) { return h.ListSnapshots(), nil })
	handle("POST /snapshots", func(r *http.Request) (any, error) {
		var req CreateSnapshotRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.CreateSnapshot(r.Context(), req)
	})
	handle("GET /snapshots/{name}", func(r *http.Request) (any, error) { return h.ShowSnapshot(r.PathValue("name")) })
	handle("DELETE /snapshots/{name}", func(r *http.Request) (any, error) {
		return nil, h.DeleteSnapshot(r.Context(), r.PathValue("name"))
	})
	handle("PATCH /snapshots/{name}", func(r *http.Request) (any, error) {
		var req UpdateSnapshotRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.UpdateSnapshot(r.Context(), r.PathValue("name"), req)
	})
	handle("POST /snapshots/{name}/move", func(r *http.Request) (any, error) {
		var req MoveRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.MoveSnapshot(r.Context(), r.PathValue("name"), req)
	})
	handle("POST /images/{name}/move", func(r *http.Request) (any, error) {
		var req MoveRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.MoveImage(r.Context(), r.PathValue("name"), req)
	})
	handle("GET /images", func(r *http.Request) (any, error) { return h.ListImages(), nil })
	handle("POST /images", func(r *http.Request) (any, error) {
		var req CreateImageRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.CreateImage(r.Context(), req)
	})
	handle("GET /images/{name}", func(r *http.Request) (any, error) { return h.ShowImage(r.PathValue("name")) })
	handle("DELETE /images/{name}", func(r *http.Request) (any, error) {
		return nil, h.DeleteImage(r.Context(), r.PathValue("name"))
	})
	handle("GET /progress/{kind}/{name}", func(r *http.Request) (any, error) {
		if p := h.Progress(r.PathValue("kind"), r.PathValue("name")); p != nil {
			return p, nil
		}
		return nil, errorf(http.StatusNotFound, "NoOperation", "no copy in progress for %s %q", r.PathValue("kind"), r.PathValue("name"))
	})
	handle("POST /disks/{name}/move", func(r *http.Request) (any, error) {
		var req MoveRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.MoveDisk(r.Context(), r.PathValue("name"), req)
	})
	handle("POST /host/gc", func(r *http.Request) (any, error) {
		var req GCRequest
		if err := decode(r, &req); err != nil {
			return nil, err
		}
		return h.GC(r.Context(), req)
	})
	handle("/", func(r *http.Request) (any, error) {
		return nil, errorf(http.StatusNotFound, "NotFound", "no API at %s %s", r.Method, r.URL.Path)
	})
	return mux
}

// decode reads a JSON body strictly: unknown fields and trailing data are
// refused, so a misspelt option is an error rather than silently ignored.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("request body: %v", err)
	}
	if dec.More() {
		return badRequest("request body: more than one JSON value")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Listen opens the control socket at path, readable and writable by its
// owner only. A socket file left by a dead daemon is replaced; a live one is
// an error.
func Listen(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another daemon is serving %s; stop it first", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	old := umask(0o177)
	l, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Client calls the control API over its unix socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{http: &http.Client{Transport: tr}}
}

// Do sends a request with body in (nil for none) and decodes the answer into
// out (nil to drop it). A refusal comes back as *Error.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytesReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://hostcryptd"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach hostcryptd: %w (is it running? check --host-socket or HOSTCRYPT_SOCKET)", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var env struct {
			Error *Error `json:"error"`
		}
		if json.Unmarshal(raw, &env) == nil && env.Error != nil {
			env.Error.Status = resp.StatusCode
			return env.Error
		}
		return fmt.Errorf("hostcryptd answered %s", resp.Status)
	}
	if out != nil && len(raw) > 0 {
		return json.Unmarshal(raw, out)
	}
	return nil
}
