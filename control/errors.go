package control

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is a refusal the API reports to its client: an HTTP status, a stable
// code (as Azure names them where it has a name) and a message that says what
// to do.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func notFound(kind, name string) *Error {
	return errorf(http.StatusNotFound, "ResourceNotFound", "%s %q does not exist", kind, name)
}

func conflict(format string, args ...any) *Error {
	return errorf(http.StatusConflict, "Conflict", format, args...)
}

func badRequest(format string, args ...any) *Error {
	return errorf(http.StatusBadRequest, "InvalidParameter", format, args...)
}

// asError turns any error into an *Error, keeping refusals as they are and
// reporting everything else as an internal failure with its text.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return errorf(http.StatusInternalServerError, "InternalError", "%v", err)
}
