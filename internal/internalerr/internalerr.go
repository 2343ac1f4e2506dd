// Package internalerr is the one policy both daemons follow for a failure
// that is not the caller's: the detail (an error text may name paths,
// storage objects or a peer's answer) goes to the daemon's own log under an
// id, and the caller is answered with that id only, which an operator finds
// in the log.
package internalerr

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
)

// NewID returns a fresh id for a failure: 16 hex digits.
func NewID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Report logs err with attrs under id (a fresh one if id is empty) and
// returns the message the caller gets: the id and where to look, never the
// detail.
func Report(log *slog.Logger, daemon, id string, err error, attrs ...any) string {
	if id == "" {
		id = NewID()
	}
	log.Error("internal error", append([]any{"id", id, "err", err}, attrs...)...)
	return Message(daemon, id)
}

// Message is what a caller is told of an internal failure logged under id.
func Message(daemon, id string) string {
	return fmt.Sprintf("internal error %s: %s's log has the details under this id", id, daemon)
}
