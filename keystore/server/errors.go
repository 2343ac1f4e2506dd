package server

import (
	"errors"
	"fmt"
	"hostcrypt/internal/internalerr"
	"log/slog"
	"net/http"
)

// apiError is an error the API reports to its caller in Key Vault's
// envelope: {"error":{"code":…,"message":…,"innererror":{"code":…}}}.
type apiError struct {
	Status  int
	Code    string
	Inner   string
	Message string
}

func (e *apiError) Error() string { return e.Message }

func errf(status int, code, inner, format string, args ...any) *apiError {
	return &apiError{Status: status, Code: code, Inner: inner, Message: fmt.Sprintf(format, args...)}
}

func badParam(format string, args ...any) *apiError {
	return errf(http.StatusBadRequest, "BadParameter", "", format, args...)
}

func forbiddenByPolicy(format string, args ...any) *apiError {
	return errf(http.StatusForbidden, "Forbidden", "ForbiddenByPolicy", format, args...)
}

func keyNotFound(vault, name, version string) *apiError {
	if version != "" {
		return errf(http.StatusNotFound, "KeyNotFound", "", "key %s version %s not found in vault %s; list the versions with `hostcrypt key list-versions --vault-name %s --name %s`", name, version, vault, vault, name)
	}
	return errf(http.StatusNotFound, "KeyNotFound", "", "key %s not found in vault %s; list the keys with `hostcrypt key list --vault-name %s`", name, vault, vault)
}

func vaultNotFound(vault string) *apiError {
	return errf(http.StatusNotFound, "VaultNotFound", "", "vault %s not found; list vaults with `hostcrypt keyvault list`", vault)
}

// asAPIError turns any error into an envelope. An error that is not an
// *apiError is an internal failure: its detail goes to the log under the
// request's id, and the caller gets the id (package internalerr).
func asAPIError(err error, log *slog.Logger, reqID string, attrs ...any) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	return errf(http.StatusInternalServerError, "InternalError", "", "%s", internalerr.Report(log, "keystored", reqID, err, attrs...))
}
