package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"hostcrypt/control/api"
	ksapi "hostcrypt/keystore/api"
)

// maxBody bounds an action's JSON body.
const maxBody = 64 << 10

// decode reads r's JSON body into v, refusing unknown fields.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return errorf(http.StatusBadRequest, "the request's body is not what %s takes: %v", r.URL.Path, err)
	}
	return nil
}

// fail answers with err as the control API's error envelope; an error that
// is not an *api.Error says only what failed and is logged.
func (c *Console) fail(w http.ResponseWriter, err error) {
	var e *api.Error
	if !errors.As(err, &e) {
		e = errorf(http.StatusBadGateway, "%v", err)
	}
	status := e.Status
	if status == 0 {
		status = http.StatusBadGateway
	}
	writeJSON(w, status, api.ErrorEnvelope{Error: e})
}

// actionContext is an action's context: it is not cancelled when the page
// goes away (a VM half stopped helps nobody), only after ActionTimeout.
func (c *Console) actionContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), c.cfg.ActionTimeout)
}

// done records an action on the timeline and in the log, and wakes the
// readings so that the page shows its effect.
func (c *Console) done(r *http.Request, title string, err error) {
	if err != nil {
		c.log.Info("console action refused", "action", title, "from", r.RemoteAddr, "err", err)
		c.timeline.add("action", "warn", title+": refused", err.Error())
	} else {
		c.log.Info("console action", "action", title, "from", r.RemoteAddr)
		c.timeline.add("action", "info", title, "from the console")
	}
	wake(c.refreshWake)
	wake(c.desWake)
}

func (c *Console) vmAction(w http.ResponseWriter, r *http.Request) {
	name, action := r.PathValue("name"), r.PathValue("action")
	var call func(context.Context, string) (*api.VM, error)
	switch action {
	case "start":
		call = c.cfg.Control.StartVM
	case "stop":
		call = c.cfg.Control.StopVM
	case "deallocate":
		call = c.cfg.Control.DeallocateVM
	default:
		c.fail(w, errorf(http.StatusNotFound, "no VM action %q: use start, stop or deallocate", action))
		return
	}
	var body struct{}
	if err := decode(r, &body); err != nil {
		c.fail(w, err)
		return
	}
	ctx, cancel := c.actionContext(r)
	defer cancel()
	vm, err := call(ctx, name)
	c.done(r, fmt.Sprintf("%s VM %s", action, name), err)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, vm)
}

// SnapshotRequest is the body of POST /api/snapshots.
type SnapshotRequest struct {
	Name        string `json:"name"`
	Source      string `json:"source"`
	Incremental bool   `json:"incremental"`
}

func (c *Console) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var req SnapshotRequest
	if err := decode(r, &req); err != nil {
		c.fail(w, err)
		return
	}
	if req.Name == "" || req.Source == "" {
		c.fail(w, errorf(http.StatusBadRequest, "a snapshot needs a name and a source disk"))
		return
	}
	ctx, cancel := c.actionContext(r)
	defer cancel()
	s, err := c.cfg.Control.CreateSnapshot(ctx, api.CreateSnapshotRequest{Name: req.Name, Source: req.Source, Incremental: req.Incremental})
	c.done(r, fmt.Sprintf("snapshot %s of disk %s", req.Name, req.Source), err)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// KeyEnabledRequest is the body of POST /api/keys/enabled: one key version
// enabled or disabled, as the holder of Token.
type KeyEnabledRequest struct {
	Kid     string `json:"kid"`
	Enabled bool   `json:"enabled"`
	// Token is the operator's key store token, used for this request
	// alone.
	Token string `json:"token"`
}

// KeyRotateRequest is the body of POST /api/keys/rotate: a new version of
// the key Kid names, as the holder of Token.
type KeyRotateRequest struct {
	Kid   string `json:"kid"`
	Token string `json:"token"`
}

// operatorToken checks the token an operator gave; it is passed on to the
// key store, never kept, logged or answered.
func operatorToken(t string) (string, error) {
	t = strings.TrimSpace(t)
	if t == "" {
		return "", errorf(http.StatusBadRequest, "this action needs your key store token: hostcryptd holds no right to change customer keys, and the key store audits the change as the token's holder")
	}
	for _, r := range t {
		if r <= ' ' || r > '~' {
			return "", errorf(http.StatusBadRequest, "that is not a key store token (a token is printable ASCII without spaces): paste the content of your token file")
		}
	}
	return t, nil
}

// decodeKeyAction decodes a key action's request into req and takes the
// operator's token out of it (token points into req): the token is
// checked and returned, and the request keeps no copy.
func decodeKeyAction(r *http.Request, req any, token *string) (string, error) {
	if err := decode(r, req); err != nil {
		return "", err
	}
	tok, err := operatorToken(*token)
	*token = ""
	return tok, err
}

func (c *Console) setKeyEnabled(w http.ResponseWriter, r *http.Request) {
	var req KeyEnabledRequest
	tok, err := decodeKeyAction(r, &req, &req.Token)
	if err != nil {
		c.fail(w, err)
		return
	}
	k, err := ksapi.ParseVersionedKeyID(req.Kid)
	if err != nil {
		c.fail(w, errorf(http.StatusBadRequest, "%v", err))
		return
	}
	verb := "disable"
	if req.Enabled {
		verb = "enable"
	}
	ctx, cancel := c.actionContext(r)
	defer cancel()
	err = c.cfg.Keys.SetKeyEnabled(ctx, tok, k.Vault, k.Name, k.Version, req.Enabled)
	c.done(r, fmt.Sprintf("%s key %s/%s version %s", verb, k.Vault, k.Name, shortVersion(k.Version)), err)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"kid": k.String(), "state": verb + "d"})
}

func (c *Console) rotateKey(w http.ResponseWriter, r *http.Request) {
	var req KeyRotateRequest
	tok, err := decodeKeyAction(r, &req, &req.Token)
	if err != nil {
		c.fail(w, err)
		return
	}
	k, err := ksapi.ParseKeyID(req.Kid)
	if err != nil {
		c.fail(w, errorf(http.StatusBadRequest, "%v", err))
		return
	}
	ctx, cancel := c.actionContext(r)
	defer cancel()
	kid, err := c.cfg.Keys.RotateKey(ctx, tok, k.Vault, k.Name)
	c.done(r, fmt.Sprintf("rotate key %s/%s", k.Vault, k.Name), err)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"kid": kid})
}
