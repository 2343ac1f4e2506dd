package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"hostcrypt/control/api"
)

// The control API is JSON over HTTP on a unix socket that only root can open
// (0600). Its routes, resources and error envelope are package control/api's.

// maxBody bounds a request body; every request of this API is small.
const maxBody = 1 << 20

// Handler serves the control API for h.
func Handler(h *Host) http.Handler {
	mux := http.NewServeMux()
	handle := func(route string, fn func(r *http.Request) (any, error)) {
		mux.HandleFunc(route, func(w http.ResponseWriter, r *http.Request) {
			v, err := fn(r)
			if err != nil {
				h.writeError(w, r, err)
				return
			}
			if v == nil {
				w.WriteHeader(http.StatusNoContent)
				return
			}
			writeJSON(w, http.StatusOK, v)
		})
	}
	name := func(r *http.Request) string { return r.PathValue("name") }

	handle(api.RouteListDisks, func(r *http.Request) (any, error) { return h.ListDisks() })
	handle(api.RouteCreateDisk, withBody(func(r *http.Request, b api.CreateDiskRequest) (any, error) { return h.CreateDisk(r.Context(), b) }))
	handle(api.RouteShowDisk, func(r *http.Request) (any, error) { return h.ShowDisk(name(r)) })
	handle(api.RouteUpdateDisk, withBody(func(r *http.Request, b api.UpdateDiskRequest) (any, error) {
		return h.UpdateDisk(r.Context(), name(r), b)
	}))
	handle(api.RouteDeleteDisk, func(r *http.Request) (any, error) { return nil, h.DeleteDisk(r.Context(), name(r)) })
	handle(api.RouteMoveDisk, withBody(func(r *http.Request, b api.MoveRequest) (any, error) { return h.MoveDisk(r.Context(), name(r), b) }))
	handleTransfers(mux, h)

	handle(api.RouteListVMs, func(r *http.Request) (any, error) { return h.ListVMs() })
	handle(api.RouteCreateVM, withBody(func(r *http.Request, b api.CreateVMRequest) (any, error) { return h.CreateVM(r.Context(), b) }))
	handle(api.RouteShowVM, func(r *http.Request) (any, error) { return h.ShowVM(name(r)) })
	handle(api.RouteUpdateVM, withBody(func(r *http.Request, b api.UpdateVMRequest) (any, error) { return h.UpdateVM(r.Context(), name(r), b) }))
	handle(api.RouteEncryptionReport, func(r *http.Request) (any, error) { return h.VMEncryptionReport(r.Context(), name(r)) })
	handle(api.RouteDeleteVM, func(r *http.Request) (any, error) { return nil, h.DeleteVM(r.Context(), name(r)) })
	handle(api.RouteStartVM, func(r *http.Request) (any, error) { return h.StartVM(r.Context(), name(r)) })
	handle(api.RouteStopVM, func(r *http.Request) (any, error) { return h.StopVM(r.Context(), name(r), "") })
	handle(api.RouteDeallocateVM, func(r *http.Request) (any, error) { return h.DeallocateVM(r.Context(), name(r)) })
	handle(api.RouteAttachDisk, withBody(func(r *http.Request, b api.AttachRequest) (any, error) { return h.AttachDisk(r.Context(), name(r), b) }))
	handle(api.RouteDetachDisk, func(r *http.Request) (any, error) { return h.DetachDisk(r.Context(), name(r), r.PathValue("disk")) })

	handle(api.RouteListDES, func(r *http.Request) (any, error) { return h.ListDES(r.Context()) })
	handle(api.RouteCreateDES, withBody(func(r *http.Request, b api.CreateDESRequest) (any, error) { return h.CreateDES(r.Context(), b) }))
	handle(api.RouteShowDES, func(r *http.Request) (any, error) { return h.ShowDES(r.Context(), name(r)) })
	handle(api.RouteUpdateDES, withBody(func(r *http.Request, b api.UpdateDESRequest) (any, error) {
		return h.UpdateDES(r.Context(), name(r), b)
	}))
	handle(api.RouteDeleteDES, func(r *http.Request) (any, error) { return nil, h.DeleteDES(r.Context(), name(r)) })

	handle(api.RouteListIdentities, func(r *http.Request) (any, error) { return h.ListIdentities(r.Context()) })
	handle(api.RouteCreateIdentity, withBody(func(r *http.Request, b api.CreateIdentityRequest) (any, error) {
		return h.CreateIdentity(r.Context(), b)
	}))
	handle(api.RouteShowIdentity, func(r *http.Request) (any, error) { return h.ShowIdentity(r.Context(), name(r)) })
	handle(api.RouteDeleteIdentity, func(r *http.Request) (any, error) { return nil, h.DeleteIdentity(r.Context(), name(r)) })

	handle(api.RouteListSubscriptions, func(r *http.Request) (any, error) { return h.ListSubscriptions(r.Context()) })
	handle(api.RouteShowSubscription, func(r *http.Request) (any, error) { return h.ShowSubscription(r.Context(), r.PathValue("id")) })
	handle(api.RouteTransferSubscription, withBody(func(r *http.Request, b api.TransferSubscriptionRequest) (any, error) {
		return h.TransferSubscription(r.Context(), r.PathValue("id"), b)
	}))

	handle(api.RouteListSnapshots, func(r *http.Request) (any, error) { return h.ListSnapshots() })
	handle(api.RouteCreateSnapshot, withBody(func(r *http.Request, b api.CreateSnapshotRequest) (any, error) {
		return h.CreateSnapshot(r.Context(), b)
	}))
	handle(api.RouteShowSnapshot, func(r *http.Request) (any, error) { return h.ShowSnapshot(name(r)) })
	handle(api.RouteDeleteSnapshot, func(r *http.Request) (any, error) { return nil, h.DeleteSnapshot(r.Context(), name(r)) })
	handle(api.RouteUpdateSnapshot, withBody(func(r *http.Request, b api.UpdateSnapshotRequest) (any, error) {
		return h.UpdateSnapshot(r.Context(), name(r), b)
	}))
	handle(api.RouteMoveSnapshot, withBody(func(r *http.Request, b api.MoveRequest) (any, error) { return h.MoveSnapshot(r.Context(), name(r), b) }))

	handle(api.RouteListImages, func(r *http.Request) (any, error) { return h.ListImages() })
	handle(api.RouteCreateImage, withBody(func(r *http.Request, b api.CreateImageRequest) (any, error) { return h.CreateImage(r.Context(), b) }))
	handle(api.RouteShowImage, func(r *http.Request) (any, error) { return h.ShowImage(name(r)) })
	handle(api.RouteDeleteImage, func(r *http.Request) (any, error) { return nil, h.DeleteImage(r.Context(), name(r)) })
	handle(api.RouteMoveImage, withBody(func(r *http.Request, b api.MoveRequest) (any, error) { return h.MoveImage(r.Context(), name(r), b) }))

	gallery := func(r *http.Request) string { return r.PathValue("gallery") }
	handle(api.RouteListGalleries, func(r *http.Request) (any, error) { return h.ListGalleries(r.Context()) })
	handle(api.RouteCreateGallery, withBody(func(r *http.Request, b api.CreateGalleryRequest) (any, error) { return h.CreateGallery(r.Context(), b) }))
	handle(api.RouteShowGallery, func(r *http.Request) (any, error) { return h.ShowGallery(r.Context(), name(r)) })
	handle(api.RouteDeleteGallery, func(r *http.Request) (any, error) { return nil, h.DeleteGallery(r.Context(), name(r)) })
	handle(api.RouteMoveGallery, withBody(func(r *http.Request, b api.MoveRequest) (any, error) { return h.MoveGallery(r.Context(), name(r), b) }))
	handle(api.RouteListGalleryImages, func(r *http.Request) (any, error) { return h.ListGalleryImages(r.Context(), gallery(r)) })
	handle(api.RouteCreateGalleryImage, withBody(func(r *http.Request, b api.CreateGalleryImageRequest) (any, error) {
		return h.CreateGalleryImage(r.Context(), gallery(r), b)
	}))
	handle(api.RouteShowGalleryImage, func(r *http.Request) (any, error) { return h.ShowGalleryImage(r.Context(), gallery(r), name(r)) })
	handle(api.RouteDeleteGalleryImage, func(r *http.Request) (any, error) { return nil, h.DeleteGalleryImage(r.Context(), gallery(r), name(r)) })
	handle(api.RouteListGalleryImageVersions, func(r *http.Request) (any, error) {
		return h.ListGalleryImageVersions(r.Context(), gallery(r), r.PathValue("image"))
	})
	handle(api.RouteCreateGalleryImageVersion, withBody(func(r *http.Request, b api.CreateGalleryImageVersionRequest) (any, error) {
		return h.CreateGalleryImageVersion(r.Context(), gallery(r), r.PathValue("image"), b)
	}))
	handle(api.RouteShowGalleryImageVersion, func(r *http.Request) (any, error) {
		return h.ShowGalleryImageVersion(r.Context(), gallery(r), r.PathValue("image"), name(r))
	})
	handle(api.RouteDeleteGalleryImageVersion, func(r *http.Request) (any, error) {
		return nil, h.DeleteGalleryImageVersion(r.Context(), gallery(r), r.PathValue("image"), name(r))
	})

	handle(api.RouteProgress, func(r *http.Request) (any, error) {
		if p := h.Progress(r.PathValue("kind"), name(r)); p != nil {
			return p, nil
		}
		return nil, errorf(http.StatusNotFound, "NoOperation", "no copy in progress for %s %q", r.PathValue("kind"), name(r))
	})
	handle(api.RouteGC, withBody(func(r *http.Request, b api.GCRequest) (any, error) { return h.GC(r.Context(), b) }))
	handle(api.RouteListHosts, func(r *http.Request) (any, error) { return h.ListHosts(r.Context()) })
	handle("/", func(r *http.Request) (any, error) {
		return nil, errorf(http.StatusNotFound, "NotFound", "no API at %s %s", r.Method, r.URL.Path)
	})
	return mux
}

// withBody decodes the request's JSON body into a T for fn.
func withBody[T any](fn func(r *http.Request, body T) (any, error)) func(r *http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		var b T
		if err := decode(r, &b); err != nil {
			return nil, err
		}
		return fn(r, b)
	}
}

func (h *Host) writeError(w http.ResponseWriter, r *http.Request, err error) {
	writeJSON(w, 0, api.ErrorEnvelope{Error: asError(err, h.log, "method", r.Method, "path", r.URL.Path)})
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

// writeJSON writes v with status; an ErrorEnvelope's status is its error's.
func writeJSON(w http.ResponseWriter, status int, v any) {
	if env, ok := v.(api.ErrorEnvelope); ok {
		status = env.Error.Status
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// socketMu serialises the umask change of Listen.
var socketMu sync.Mutex

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
	socketMu.Lock()
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	socketMu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
