package control

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"hostcrypt/control/api"
	"hostcrypt/control/keys"
	"hostcrypt/control/store"
	"hostcrypt/internal/internalerr"
)

func errorf(status int, code, format string, args ...any) *api.Error {
	return api.Errorf(status, code, format, args...)
}

func notFound(kind, name string) *api.Error {
	return errorf(http.StatusNotFound, api.CodeNotFound, "%s %q does not exist", kind, name)
}

func conflict(format string, args ...any) *api.Error {
	return errorf(http.StatusConflict, api.CodeConflict, format, args...)
}

func badRequest(format string, args ...any) *api.Error {
	return errorf(http.StatusBadRequest, api.CodeInvalidParameter, format, args...)
}

func notAllowed(status int, format string, args ...any) *api.Error {
	return errorf(status, api.CodeOperationNotAllowed, format, args...)
}

// keyError is an error of the key service with what it means for the key,
// as the service classified it when control called it.
type keyError struct {
	problem keys.Problem
	err     error
	// view, if set, is what a client is answered instead of err's text.
	view *api.Error
}

func (e *keyError) Error() string {
	if e.view != nil {
		return e.view.Message
	}
	return e.err.Error()
}
func (e *keyError) Unwrap() error { return e.err }

// classified wraps an error of a key service call with its class (Other
// errors stay as they are).
func classified(ks keys.Service, err error) error {
	if err == nil {
		return nil
	}
	var ke *keyError
	if errors.As(err, &ke) {
		return err
	}
	p := ks.Classify(err)
	if p == keys.Other || p == keys.Usable {
		return err
	}
	return &keyError{problem: p, err: err}
}

// problemOf returns the class of a key error, or Other.
func problemOf(err error) keys.Problem {
	var ke *keyError
	if errors.As(err, &ke) {
		return ke.problem
	}
	return keys.Other
}

// asError turns any error into the API's: refusals stay as they are; a key
// the key store refused is a 403 and a key store that did not answer a 503,
// with the message; anything else is an internal failure, logged under an
// id that the answer names (package internalerr).
func asError(err error, log *slog.Logger, attrs ...any) *api.Error {
	var e *api.Error
	if errors.As(err, &e) {
		return e
	}
	var ke *keyError
	if errors.As(err, &ke) && ke.view != nil {
		return ke.view
	}
	if errors.Is(err, store.ErrTampered) {
		// Not this host's failure, and the records' names are the point.
		return errorf(http.StatusInternalServerError, api.CodeRecordsTampered, "%v", err)
	}
	switch problemOf(err) {
	case keys.Revoked, keys.Expired:
		return errorf(http.StatusForbidden, api.CodeKeyAccessDenied, "%v", err)
	case keys.Unreachable:
		return errorf(http.StatusServiceUnavailable, api.CodeKeyStoreUnreachable, "%v; try again when the key store answers", err)
	}
	return errorf(http.StatusInternalServerError, api.CodeInternalError, "%s", internalerr.Report(log, "hostcryptd", "", err, attrs...))
}

// message is the text of an error as a client would see it, for the
// reasons and warnings kept in records.
func message(err error) string {
	var e *api.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return fmt.Sprint(err)
}
