package imgfile

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// qemuTimeout bounds qemu-img info and map: a crafted image must not keep
// the daemon busy for ever.
const qemuTimeout = 2 * time.Minute

// qcow2 reads a qcow2 image's guest view through qemu-nbd.
type qcow2 struct {
	path    string
	size    int64
	extents []extent // guest ranges holding data, sorted
	nbd     *nbdConn
	cmd     *exec.Cmd
	exited  chan struct{}
	dir     string
}

type extent struct{ start, end int64 }

func (q *qcow2) Format() string { return QCOW2 }
func (q *qcow2) Size() int64    { return q.size }

func (q *qcow2) ReadAt(p []byte, off int64) (int, error) { return q.nbd.ReadAt(p, off) }

func (q *qcow2) NextData(off int64) (int64, int64, error) {
	i := sort.Search(len(q.extents), func(i int) bool { return q.extents[i].end > off })
	if i == len(q.extents) {
		return q.size, q.size, nil
	}
	return max(q.extents[i].start, off), q.extents[i].end, nil
}

func (q *qcow2) Close() error {
	var err error
	if q.nbd != nil {
		err = q.nbd.Close()
	}
	if q.cmd != nil {
		// Without --persistent qemu-nbd leaves once its client has gone.
		select {
		case <-q.exited:
		case <-time.After(5 * time.Second):
			_ = q.cmd.Process.Kill()
			<-q.exited
		}
	}
	if q.dir != "" {
		os.RemoveAll(q.dir)
	}
	return err
}

// qemuInfo is what is read of `qemu-img info --output=json`.
type qemuInfo struct {
	VirtualSize     int64  `json:"virtual-size"`
	Format          string `json:"format"`
	BackingFilename string `json:"backing-filename"`
	Encrypted       bool   `json:"encrypted"`
	FormatSpecific  struct {
		Data struct {
			DataFile string `json:"data-file"`
			Corrupt  bool   `json:"corrupt"`
		} `json:"data"`
	} `json:"format-specific"`
}

type qemuMapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Depth  int   `json:"depth"`
	Zero   bool  `json:"zero"`
	Data   bool  `json:"data"`
}

func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, qemuTimeout)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, errors.New("qemu-img is not installed on the host; install qemu-utils (scripts/deps.sh) to import qcow2 images")
		}
		msg := strings.TrimSpace(errOut.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("qemu-img %s: %s", args[0], msg)
	}
	return out.Bytes(), nil
}

// openQCOW2 checks the image with qemu-img info (the format is given, never
// probed), maps its data with qemu-img map and starts qemu-nbd on it.
func openQCOW2(ctx context.Context, path string) (_ Source, err error) {
	raw, err := qemuImg(ctx, "info", "--output=json", "-f", QCOW2, path)
	if err != nil {
		return nil, fmt.Errorf("%s starts like a qcow2 image but qemu cannot read it: %w: %w", path, ErrNotImage, err)
	}
	var info qemuInfo
	if err := json.Unmarshal(raw, &info); err != nil {
		return nil, fmt.Errorf("qemu-img info on %s: %w", path, err)
	}
	switch {
	case info.BackingFilename != "":
		return nil, fmt.Errorf("%s is a qcow2 overlay on backing file %s: %w; flatten it first (qemu-img convert -O qcow2 %s FLAT.qcow2)", path, info.BackingFilename, ErrUnsupportedFormat, path)
	case info.FormatSpecific.Data.DataFile != "":
		return nil, fmt.Errorf("%s keeps its data in external file %s: %w; convert it first (qemu-img convert -O qcow2 %s FLAT.qcow2)", path, info.FormatSpecific.Data.DataFile, ErrUnsupportedFormat, path)
	case info.Encrypted:
		return nil, fmt.Errorf("%s is an encrypted qcow2 image: %w; decrypt it first (qemu-img convert with its secret)", path, ErrUnsupportedFormat)
	case info.FormatSpecific.Data.Corrupt:
		return nil, fmt.Errorf("%s is marked corrupt: %w; check and repair it (qemu-img check -r all %s)", path, ErrNotImage, path)
	case info.VirtualSize <= 0:
		return nil, fmt.Errorf("%s has virtual size %d: %w", path, info.VirtualSize, ErrNotImage)
	}
	raw, err = qemuImg(ctx, "map", "--output=json", "-f", QCOW2, path)
	if err != nil {
		return nil, err
	}
	var entries []qemuMapEntry
	if err := json.Unmarshal(raw, &entries); err != nil {
		return nil, fmt.Errorf("qemu-img map on %s: %w", path, err)
	}
	q := &qcow2{path: path, size: info.VirtualSize}
	for _, e := range entries {
		// Clusters that read as zeros (unallocated, zero flag, preallocated
		// zeros) are holes of the import.
		if !e.Data || e.Zero || e.Length <= 0 {
			continue
		}
		if n := len(q.extents); n > 0 && q.extents[n-1].end == e.Start {
			q.extents[n-1].end += e.Length
		} else {
			q.extents = append(q.extents, extent{e.Start, e.Start + e.Length})
		}
	}
	defer func() {
		if err != nil {
			q.Close()
		}
	}()
	if err := q.serve(ctx); err != nil {
		return nil, err
	}
	if q.nbd.size != q.size {
		return nil, fmt.Errorf("qemu-nbd serves %d bytes of %s, qemu-img info says %d", q.nbd.size, path, q.size)
	}
	return q, nil
}

// serve starts qemu-nbd read-only on a socket in a private directory and
// connects to it.
func (q *qcow2) serve(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "hostcrypt-import-")
	if err != nil {
		return err
	}
	q.dir = dir
	sock := filepath.Join(dir, "nbd.sock")
	var errOut bytes.Buffer
	q.cmd = exec.Command("qemu-nbd", "--read-only", "--shared=1", "--format="+QCOW2, "--socket="+sock, q.path)
	q.cmd.Stderr = &errOut
	if err := q.cmd.Start(); err != nil {
		q.cmd = nil
		if errors.Is(err, exec.ErrNotFound) {
			return errors.New("qemu-nbd is not installed on the host; install qemu-utils (scripts/deps.sh) to import qcow2 images")
		}
		return err
	}
	q.exited = make(chan struct{})
	go func() { q.cmd.Wait(); close(q.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			q.nbd, err = nbdHandshake(c)
			if err != nil {
				c.Close()
				return fmt.Errorf("qemu-nbd on %s: %w", q.path, err)
			}
			return nil
		}
		select {
		case <-q.exited:
			return fmt.Errorf("qemu-nbd could not serve %s: %s", q.path, strings.TrimSpace(errOut.String()))
		case <-ctx.Done():
			q.cmd.Process.Kill()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			q.cmd.Process.Kill()
			return fmt.Errorf("qemu-nbd did not start serving %s within 30 s", q.path)
		}
	}
}

// nbdConn is a minimal NBD client: the fixed newstyle handshake with
// NBD_OPT_EXPORT_NAME, then NBD_CMD_READ with simple replies, one request
// at a time.
type nbdConn struct {
	mu     sync.Mutex
	c      net.Conn
	size   int64
	cookie uint64
	hdr    [28]byte
}

const (
	nbdMagic        = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic     = 0x49484156454f5054 // "IHAVEOPT"
	nbdReqMagic     = 0x25609513
	nbdReplyMagic   = 0x67446698
	nbdFlagFixed    = 1 << 0
	nbdFlagNoZeroes = 1 << 1
	nbdOptExport    = 1
	nbdCmdRead      = 0
	nbdCmdDisc      = 2
	nbdMaxRead      = 32 << 20
)

func readFull(c net.Conn, b []byte) error {
	for n := 0; n < len(b); {
		m, err := c.Read(b[n:])
		n += m
		if err != nil && n < len(b) {
			return err
		}
	}
	return nil
}

func nbdHandshake(c net.Conn) (*nbdConn, error) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	var greet [18]byte
	if err := readFull(c, greet[:]); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if binary.BigEndian.Uint64(greet[0:]) != nbdMagic || binary.BigEndian.Uint64(greet[8:]) != nbdOptMagic {
		return nil, errors.New("handshake: not a newstyle NBD server")
	}
	sflags := uint16(greet[16])<<8 | uint16(greet[17])
	if sflags&nbdFlagFixed == 0 {
		return nil, errors.New("handshake: the server does not speak fixed newstyle")
	}
	cflags := uint32(nbdFlagFixed)
	if sflags&nbdFlagNoZeroes != 0 {
		cflags |= nbdFlagNoZeroes
	}
	// Client flags, then NBD_OPT_EXPORT_NAME with the default (empty) name.
	var opt [20]byte
	binary.BigEndian.PutUint32(opt[0:], cflags)
	binary.BigEndian.PutUint64(opt[4:], nbdOptMagic)
	binary.BigEndian.PutUint32(opt[12:], nbdOptExport)
	binary.BigEndian.PutUint32(opt[16:], 0)
	if _, err := c.Write(opt[:]); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	reply := make([]byte, 10, 134)
	if cflags&nbdFlagNoZeroes == 0 {
		reply = reply[:134]
	}
	if err := readFull(c, reply); err != nil {
		return nil, fmt.Errorf("handshake: the server refused the export: %w", err)
	}
	return &nbdConn{c: c, size: int64(binary.BigEndian.Uint64(reply[0:]))}, nil
}

// ReadAt reads len(p) bytes at off.
func (n *nbdConn) ReadAt(p []byte, off int64) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	done := 0
	for done < len(p) {
		m := min(len(p)-done, nbdMaxRead)
		if err := n.read(p[done:done+m], off+int64(done)); err != nil {
			return done, err
		}
		done += m
	}
	return done, nil
}

func (n *nbdConn) read(p []byte, off int64) error {
	n.cookie++
	h := n.hdr[:]
	binary.BigEndian.PutUint32(h[0:], nbdReqMagic)
	h[4], h[5], h[6], h[7] = 0, 0, 0, nbdCmdRead
	binary.BigEndian.PutUint64(h[8:], n.cookie)
	binary.BigEndian.PutUint64(h[16:], uint64(off))
	binary.BigEndian.PutUint32(h[24:], uint32(len(p)))
	if _, err := n.c.Write(h); err != nil {
		return fmt.Errorf("nbd read at %d: %w", off, err)
	}
	var r [16]byte
	if err := readFull(n.c, r[:]); err != nil {
		return fmt.Errorf("nbd read at %d: %w", off, err)
	}
	magic := binary.BigEndian.Uint32(r[0:])
	errno := binary.BigEndian.Uint32(r[4:])
	if magic != nbdReplyMagic || binary.BigEndian.Uint64(r[8:]) != n.cookie {
		return fmt.Errorf("nbd read at %d: unexpected reply", off)
	}
	if errno != 0 {
		return fmt.Errorf("nbd read at %d: the server reports error %d", off, errno)
	}
	if err := readFull(n.c, p); err != nil {
		return fmt.Errorf("nbd read at %d: %w", off, err)
	}
	return nil
}

// Close says goodbye to the server and closes the connection.
func (n *nbdConn) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	h := n.hdr[:]
	binary.BigEndian.PutUint32(h[0:], nbdReqMagic)
	h[4], h[5], h[6], h[7] = 0, 0, 0, nbdCmdDisc
	binary.BigEndian.PutUint64(h[8:], n.cookie+1)
	binary.BigEndian.PutUint64(h[16:], 0)
	binary.BigEndian.PutUint32(h[24:], 0)
	n.c.Write(h)
	return n.c.Close()
}
