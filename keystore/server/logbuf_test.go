package server

import (
	"hostcrypt/internal/testenv"
	"log/slog"
)

func newTestLogger(w *testenv.Buffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
