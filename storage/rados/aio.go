//go:build ceph

package rados

// Chunk reads and writes that come together go through librados'
// asynchronous calls, so that no thread of the daemon blocks in C while the
// OSD answers. A synchronous call holds an OS thread in cgo for the whole
// round trip; with 32 reads in flight the daemon ran 68 threads, and Go's
// runtime kept handing processors from blocked threads to others and waking
// them. Here a read (rados_aio_read) or a write (the guarded write operation
// of hc_write, shim.go, through rados_aio_write_op_operate) is submitted in
// a short cgo call and its goroutine parks; librados' finisher thread runs a
// C callback that writes the call's id and result to a pipe, which one
// goroutine per backend reads through Go's network poller (many completions
// in one read when they come together) and hands on. At depth 32 the
// daemon's CPU fell by a sixth per 4 KiB read and by a quarter per 4 KiB
// write (docs/PERFORMANCE.md, "Where random I/O at depth 32 goes").
//
// That path wakes more threads per call than a synchronous one (the
// finisher, then the poller), which only pays when calls come together:
// reads one at a time (queue depth 1) took a quarter more of the daemon's
// CPU each and ran 12 % fewer per second. So a read (a write) that finds
// fewer than syncBelow other reads (writes) in flight is synchronous, as
// before. Zeros and the other calls are synchronous.

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

// hc_aio is one call in flight, in C memory: the callback's argument. A
// write also keeps its operation here (released with the completion) and
// the text of its epoch guard.
struct hc_aio {
	int fd;
	uint64_t id;
	rados_completion_t c;
	rados_write_op_t op;
	char eb[24];
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

rados_write_op_t hc_write_op(const char *buf, size_t len, uint64_t off,
                             const char *name, uint64_t ep, int stamp, char *eb);

// hc_aio_write submits hc_write's operation (shim.go): len bytes at off
// into an existing object, under the epoch guard of name, ep and stamp.
// a->c and a->op are released once its message arrived.
static int hc_aio_write(rados_ioctx_t io, const char *oid, const char *buf, size_t len, uint64_t off,
                        const char *name, uint64_t ep, int stamp, struct hc_aio *a) {
	int r = rados_aio_create_completion2(a, hc_aio_done, &a->c);
	if (r < 0)
		return r;
	a->op = hc_write_op(buf, len, off, name, ep, stamp, a->eb);
	r = rados_aio_write_op_operate(a->op, io, a->c, oid, NULL, 0);
	if (r < 0) {
		rados_release_write_op(a->op);
		rados_aio_release(a->c);
	}
	return r;
}

static void hc_aio_release(struct hc_aio *a) {
	if (a->op)
		rados_release_write_op(a->op);
	rados_aio_release(a->c);
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

// syncBelow: a read (a write) is synchronous while at most this many reads
// (writes) of its backend are in flight, itself included.
const syncBelow = 4

// aioCalls runs the chunk reads and writes of one backend.
type aioCalls struct {
	reads, writes aioCount

	r    *os.File // the pipe's read end, through Go's poller
	wfd  C.int    // its write end, for the callbacks
	done chan struct{}

	mu   sync.Mutex
	next uint64
	wait map[uint64]chan int64
}

// aioCount counts the calls of one kind.
type aioCount struct {
	inflight atomic.Int64 // in flight
	// syncBelow, but tests may lower it (to 0: every call asynchronous).
	syncBelow atomic.Int64
	// How many went each way, for tests.
	syncs, asyncs atomic.Uint64
}

// sync enters a call: true when it is to be synchronous. The caller calls
// leave when it is done.
func (n *aioCount) sync() bool {
	if n.inflight.Add(1) <= n.syncBelow.Load() {
		n.syncs.Add(1)
		return true
	}
	n.asyncs.Add(1)
	return false
}

func (n *aioCount) leave() { n.inflight.Add(-1) }

func newAIOCalls() (*aioCalls, error) {
	var fds [2]C.int
	if r := C.hc_pipe(&fds[0]); r < 0 {
		return nil, fmt.Errorf("rados: a pipe for read and write completions: %w", errno(r))
	}
	a := &aioCalls{
		r:    os.NewFile(uintptr(fds[0]), "rados-completions"),
		wfd:  fds[1],
		done: make(chan struct{}),
		wait: make(map[uint64]chan int64),
	}
	a.reads.syncBelow.Store(syncBelow)
	a.writes.syncBelow.Store(syncBelow)
	go a.loop()
	return a, nil
}

// loop hands each completion to the call waiting for it, until the write
// end is closed.
func (a *aioCalls) loop() {
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

// call runs one asynchronous call: submit submits it with ca (its id and
// the pipe filled in) as the callback's argument and returns librados'
// result of submitting it. call returns the result of the call, or of
// submitting it when that failed; ca's completion (and operation) is
// released.
func (a *aioCalls) call(submit func(ca *C.struct_hc_aio) C.int) (int64, error) {
	ca := (*C.struct_hc_aio)(C.calloc(1, C.size_t(unsafe.Sizeof(C.struct_hc_aio{}))))
	if ca == nil {
		return 0, fmt.Errorf("rados: out of memory for a call")
	}
	defer C.free(unsafe.Pointer(ca))
	ch := make(chan int64, 1)
	a.mu.Lock()
	a.next++
	id := a.next
	a.wait[id] = ch
	a.mu.Unlock()
	ca.fd = a.wfd
	ca.id = C.uint64_t(id)
	if r := submit(ca); r < 0 {
		a.mu.Lock()
		delete(a.wait, id)
		a.mu.Unlock()
		return 0, errno(r)
	}
	ret := <-ch
	C.hc_aio_release(ca)
	if ret < 0 {
		return 0, errno(C.int(ret))
	}
	return ret, nil
}

// read reads len(p) bytes at off of object oid, like rados_read: it returns
// the bytes read (fewer past the object's end) or a librados error.
func (a *aioCalls) read(io *rados.IOContext, oid string, p []byte, off uint64) (int, error) {
	defer a.reads.leave()
	if a.reads.sync() {
		return io.Read(oid, p, off)
	}
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	// librados fills p after the submitting call returns: pinned until the
	// read is done.
	var pin runtime.Pinner
	pin.Pin(&p[0])
	defer pin.Unpin()
	n, err := a.call(func(ca *C.struct_hc_aio) C.int {
		return C.hc_aio_read(cioctx(io), coid, bufPtr(p), C.size_t(len(p)), C.uint64_t(off), ca)
	})
	return int(n), err
}

// write writes p (not empty) at off into the existing object oid, under g,
// like writeExisting.
func (a *aioCalls) write(io *rados.IOContext, oid string, p []byte, off uint64, g guard) error {
	defer a.writes.leave()
	if a.writes.sync() {
		return writeExisting(io, oid, p, off, g)
	}
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	// librados may hold on to p until the write is done: pinned until then.
	var pin runtime.Pinner
	pin.Pin(&p[0])
	defer pin.Unpin()
	ep, stamp := g.args()
	_, err := a.call(func(ca *C.struct_hc_aio) C.int {
		return C.hc_aio_write(cioctx(io), coid, bufPtr(p), C.size_t(len(p)), C.uint64_t(off), cEpochXattr, ep, stamp, ca)
	})
	return err
}

// close ends the loop; no call may be in flight.
func (a *aioCalls) close() {
	C.hc_close(a.wfd)
	<-a.done
	a.r.Close()
}
