package internalerr

import (
	"bytes"
	"errors"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestReportLogsTheDetailAndAnswersTheID(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	msg := Report(log, "hostcryptd", "", errors.New("open /srv/storage/disks/x: permission denied"), "path", "/disks")
	assert.NotContains(t, msg, "/srv/storage", "the detail stays in the log")
	assert.Contains(t, msg, "hostcryptd's log")
	assert.Contains(t, buf.String(), "/srv/storage/disks/x")
	// The id in the answer is the one in the log line.
	id := msg[len("internal error ") : len("internal error ")+16]
	assert.Contains(t, buf.String(), "id="+id)

	buf.Reset()
	msg = Report(log, "keystored", "req-1", errors.New("boom"))
	assert.Equal(t, Message("keystored", "req-1"), msg)
	assert.Contains(t, buf.String(), "id=req-1")
}
