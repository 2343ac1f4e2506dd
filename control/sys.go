package control

import (
	"bytes"
	"io"
	"syscall"
)

func umask(m int) int { return syscall.Umask(m) }

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
