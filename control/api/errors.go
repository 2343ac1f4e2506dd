package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is a refusal or failure the API reports: an HTTP status, a stable
// code (as Azure names them where it has a name) and a message that says
// what to do. A failure that is not the client's (500) carries an id that
// the daemon's log has the details under.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf makes an *Error.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorEnvelope is the body of every refusal: {"error":{…}}.
type ErrorEnvelope struct {
	Error *Error `json:"error"`
}

// Codes of refusals a client may want to tell apart.
const (
	CodeNotFound            = "ResourceNotFound"
	CodeConflict            = "Conflict"
	CodeInvalidParameter    = "InvalidParameter"
	CodeOperationNotAllowed = "OperationNotAllowed"
	CodeQuotaExceeded       = "QuotaExceeded"
	// CodeKeyAccessDenied: the key store refused a key operation (a key
	// disabled, deleted or expired, an access policy missing): 403.
	CodeKeyAccessDenied = "KeyAccessDenied"
	// CodeKeyStoreUnreachable: the key store did not answer: 503.
	CodeKeyStoreUnreachable = "KeyStoreUnreachable"
	CodeShuttingDown        = "ShuttingDown"
	CodeInternalError       = "InternalError"
	// CodeRecordsTampered: the shared records fail their seals (changed
	// in the pool outside hostcryptd); nothing is done until they are put
	// back: 500, with the records named.
	CodeRecordsTampered = "RecordsIntegrityFailure"
)

// StatusOf returns the HTTP status of err if it is an *Error, else 0.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// IsNotFound reports a 404.
func IsNotFound(err error) bool { return StatusOf(err) == http.StatusNotFound }
