//go:build ceph

package rados

// Chunk reads that come together go through librados' asynchronous reads,
// so that no thread of the daemon blocks in C while the OSD answers. A
// synchronous rados_read holds an OS thread in a cgo call for the whole round trip; with 32 reads
// in flight the daemon ran 68 threads, and Go's runtime kept handing
// processors from blocked threads to others and waking them. Here a read is
// submitted in a short cgo call and its goroutine parks; librados' finisher
// thread runs a C callback that writes the read's id and result to a pipe,
// which one goroutine per backend reads through Go's network poller (many
// completions in one read when they come together) and hands on. The
// daemon's CPU per 4 KiB read at depth 32 fell by a sixth
// (docs/PERFORMANCE.md, "Where random I/O at depth 32 goes").
//
// That path wakes more threads per read than a synchronous one (the
// finisher, then the poller), which only pays when reads come together:
// reads one at a time (queue depth 1) took a quarter more of the daemon's
// CPU each and ran 12 % fewer per second. So a read that finds fewer than syncBelow other reads in
// flight is a synchronous rados_read, as before.

/*
#cgo LDFLAGS: -lrados
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <rados/librados.h>

// hc_aio_msg is what a completion writes to the pipe: the read's id and
// librados' result (bytes read or a negative errno). 16 bytes: a pipe write
// of at most PIPE_BUF bytes is never split or interleaved.
struct hc_aio_msg {
	uint64_t id;
	int64_t ret;
};

// hc_aio is one read in flight, in C memory: the callback's argument.
struct hc_aio {
	int fd;
	uint64_t id;
	rados_completion_t c;
};

static void hc_aio_done(rados_completion_t c, void *arg) {
	struct hc_aio *a = arg;
	struct hc_aio_msg m = { a->id, rados_aio_get_return_value(c) };
	ssize_t r;
	do {
		r = write(a->fd, &m, sizeof m);
	} while (r < 0 && errno == EINTR);
}

// hc_aio_read submits a read of len bytes at off into buf; a->c is its
// completion, to be released once its message arrived.
static int hc_aio_read(rados_ioctx_t io, const char *oid, char *buf, size_t len, uint64_t off, struct hc_aio *a) {
	int r = rados_aio_create_completion2(a, hc_aio_done, &a->c);
	if (r < 0)
		return r;
	r = rados_aio_read(io, oid, a->c, buf, len, off);
	if (r < 0)
		rados_aio_release(a->c);
	return r;
}

// hc_pipe makes the completion pipe: the write end blocking (a callback
// never drops a message), the read end non-blocking (for Go's poller).
static int hc_pipe(int fds[2]) {
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	if (fcntl(fds[0], F_SETFL, O_NONBLOCK) < 0) {
		int e = errno;
		close(fds[0]);
		close(fds[1]);
		return -e;
	}
	return 0;
}

static void hc_close(int fd) { close(fd); }
*/
import "C"

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/ceph/go-ceph/rados"
)

// syncBelow: a read is synchronous while at most this many reads of its
// backend are in flight, itself included.
const syncBelow = 4

// aioReader runs the reads of one backend.
type aioReader struct {
	inflight atomic.Int64 // reads in flight
	// How many reads went each way, for tests.
	syncReads, asyncReads atomic.Uint64

	r    *os.File // the pipe's read end, through Go's poller
	wfd  C.int    // its write end, for the callbacks
	done chan struct{}

	mu   sync.Mutex
	next uint64
	wait map[uint64]chan int64
}

func newAIOReader() (*aioReader, error) {
	var fds [2]C.int
	if r := C.hc_pipe(&fds[0]); r < 0 {
		return nil, fmt.Errorf("rados: a pipe for read completions: %w", errno(r))
	}
	a := &aioReader{
		r:    os.NewFile(uintptr(fds[0]), "rados-completions"),
		wfd:  fds[1],
		done: make(chan struct{}),
		wait: make(map[uint64]chan int64),
	}
	go a.loop()
	return a, nil
}

// loop hands each completion to the read waiting for it, until the write end
// is closed.
func (a *aioReader) loop() {
	defer close(a.done)
	const msg = int(unsafe.Sizeof(C.struct_hc_aio_msg{}))
	buf := make([]byte, 256*msg)
	have := 0
	for {
		n, err := a.r.Read(buf[have:])
		have += n
		k := have / msg * msg
		for off := 0; off < k; off += msg {
			id := binary.NativeEndian.Uint64(buf[off:])
			ret := int64(binary.NativeEndian.Uint64(buf[off+8:]))
			a.mu.Lock()
			ch := a.wait[id]
			delete(a.wait, id)
			a.mu.Unlock()
			if ch != nil {
				ch <- ret
			}
		}
		have = copy(buf, buf[k:have])
		if err != nil {
			return
		}
	}
}

// read reads len(p) bytes at off of object oid, like rados_read: it returns
// the bytes read (fewer past the object's end) or a librados error.
func (a *aioReader) read(io *rados.IOContext, oid string, p []byte, off uint64) (int, error) {
	defer a.inflight.Add(-1)
	if a.inflight.Add(1) <= syncBelow {
		a.syncReads.Add(1)
		return io.Read(oid, p, off)
	}
	a.asyncReads.Add(1)
	ca := (*C.struct_hc_aio)(C.calloc(1, C.size_t(unsafe.Sizeof(C.struct_hc_aio{}))))
	if ca == nil {
		return 0, fmt.Errorf("rados: out of memory for a read")
	}
	defer C.free(unsafe.Pointer(ca))
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	ch := make(chan int64, 1)
	a.mu.Lock()
	a.next++
	id := a.next
	a.wait[id] = ch
	a.mu.Unlock()
	ca.fd = a.wfd
	ca.id = C.uint64_t(id)
	// librados fills p after this call returns: pinned until then.
	var pin runtime.Pinner
	pin.Pin(&p[0])
	defer pin.Unpin()
	if r := C.hc_aio_read(cioctx(io), coid, bufPtr(p), C.size_t(len(p)), C.uint64_t(off), ca); r < 0 {
		a.mu.Lock()
		delete(a.wait, id)
		a.mu.Unlock()
		return 0, errno(r)
	}
	ret := <-ch
	C.rados_aio_release(ca.c)
	if ret < 0 {
		return 0, errno(C.int(ret))
	}
	return int(ret), nil
}

// close ends the loop; no read may be in flight.
func (a *aioReader) close() {
	C.hc_close(a.wfd)
	<-a.done
	a.r.Close()
}
