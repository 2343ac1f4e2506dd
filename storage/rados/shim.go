//go:build ceph

package rados

// The few librados operations go-ceph does not bind, or binds in a way this
// backend cannot use: a zero (go-ceph has none), a write that refuses to
// recreate a deleted object, the compare of an xattr in a write (the
// ownership epoch guard), a create that stamps the epoch, a removal or a
// stamp conditional on the epoch, a read of the epoch that tells a missing
// object from a missing xattr in one call, a full write that may be empty
// and may carry a version condition (go-ceph's write steps need a
// non-empty buffer), and a whole-object read that returns the size and
// version of what it read.

/*
#cgo LDFLAGS: -lrados
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <rados/librados.h>

// hc_epoch writes ep into buf (24 bytes) in 20 zero-padded decimal digits,
// the form of the epoch xattr, and returns its length.
static int hc_epoch(char *buf, uint64_t ep) {
	return snprintf(buf, 24, "%020llu", (unsigned long long)ep);
}

// hc_guard adds to op the epoch guard of a chunk write when ep is not 0:
// the op fails (ECANCELED) unless ep >= the object's xattr name, and with
// stamp it also sets the xattr to ep. The value is ep in 20 zero-padded
// decimal digits, written into buf (24 bytes, the caller's, alive until
// the op is operated): the OSD's comparison of strings, the only one the C
// API offers, then orders epochs as numbers; an object without the xattr
// compares as the empty string, below any epoch. (The OSD fails a compare
// on an object that does not exist with ENOENT, even after a create in the
// same operation: each guarded op asserts that the object exists.)
static void hc_guard(rados_write_op_t op, const char *name, uint64_t ep, int stamp, char *buf) {
	if (ep == 0)
		return;
	int n = hc_epoch(buf, ep);
	rados_write_op_cmpxattr(op, name, LIBRADOS_CMPXATTR_OP_GTE, buf, n);
	if (stamp)
		rados_write_op_setxattr(op, name, buf, n);
}

// hc_zero makes len bytes from off of an existing object read as zeros,
// freeing their space on the OSDs; guarded by hc_guard.
static int hc_zero(rados_ioctx_t io, const char *oid, uint64_t off, uint64_t len,
                   const char *name, uint64_t ep, int stamp) {
	char eb[24];
	rados_write_op_t op = rados_create_write_op();
	rados_write_op_assert_exists(op);
	hc_guard(op, name, ep, stamp, eb);
	rados_write_op_zero(op, off, len);
	int r = rados_write_op_operate(op, io, oid, NULL, 0);
	rados_release_write_op(op);
	return r;
}

// hc_write_op is the operation of a chunk write: len bytes at off into an
// existing object, guarded by hc_guard (eb is its buffer). Not static: the
// asynchronous writes (aio.go) submit it too.
rados_write_op_t hc_write_op(const char *buf, size_t len, uint64_t off,
                             const char *name, uint64_t ep, int stamp, char *eb) {
	rados_write_op_t op = rados_create_write_op();
	rados_write_op_assert_exists(op);
	hc_guard(op, name, ep, stamp, eb);
	rados_write_op_write(op, buf, len, off);
	return op;
}

// hc_write writes with hc_write_op's operation.
static int hc_write(rados_ioctx_t io, const char *oid, const char *buf, size_t len, uint64_t off,
                    const char *name, uint64_t ep, int stamp) {
	char eb[24];
	rados_write_op_t op = hc_write_op(buf, len, off, name, ep, stamp, eb);
	int r = rados_write_op_operate(op, io, oid, NULL, 0);
	rados_release_write_op(op);
	return r;
}

// hc_stamp stamps an existing object with the epoch ep, unless it carries
// a newer one, or, when floor is not 0, one below floor or none (ECANCELED
// for each), with nothing else in the operation.
static int hc_stamp(rados_ioctx_t io, const char *oid, const char *name, uint64_t ep, uint64_t floor) {
	char eb[24], fb[24];
	rados_write_op_t op = rados_create_write_op();
	rados_write_op_assert_exists(op);
	if (floor != 0) {
		int n = hc_epoch(fb, floor);
		rados_write_op_cmpxattr(op, name, LIBRADOS_CMPXATTR_OP_LTE, fb, n);
	}
	hc_guard(op, name, ep, 1, eb);
	int r = rados_write_op_operate(op, io, oid, NULL, 0);
	rados_release_write_op(op);
	return r;
}

// hc_create_stamped creates oid, stamped with the epoch ep (not 0), in one
// operation: an exclusive create and the xattr name. It fails with EEXIST,
// creating and stamping nothing, when oid exists.
static int hc_create_stamped(rados_ioctx_t io, const char *oid, const char *name, uint64_t ep) {
	char eb[24];
	int n = hc_epoch(eb, ep);
	rados_write_op_t op = rados_create_write_op();
	rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
	rados_write_op_setxattr(op, name, eb, n);
	int r = rados_write_op_operate(op, io, oid, NULL, 0);
	rados_release_write_op(op);
	return r;
}

// hc_read_epoch reads the xattr name of oid into buf (cap bytes) in one read
// operation, which fails with ENOENT when oid does not exist. *n is the
// value's length, 0 when the object has no such xattr; a value longer than
// cap is cut to cap bytes (and *n says its whole length).
static int hc_read_epoch(rados_ioctx_t io, const char *oid, const char *name, char *buf, size_t cap, size_t *n) {
	int rx = 0;
	rados_xattrs_iter_t it = NULL;
	rados_read_op_t op = rados_create_read_op();
	rados_read_op_getxattrs(op, &it, &rx);
	int r = rados_read_op_operate(op, io, oid, 0);
	rados_release_read_op(op);
	if (r == 0 && rx < 0)
		r = rx;
	*n = 0;
	if (r == 0 && it != NULL) {
		for (;;) {
			const char *k = NULL, *v = NULL;
			size_t len = 0;
			if (rados_getxattrs_next(it, &k, &v, &len) < 0 || k == NULL)
				break;
			if (strcmp(k, name) == 0) {
				memcpy(buf, v, len < cap ? len : cap);
				*n = len;
			}
		}
	}
	if (it != NULL)
		rados_getxattrs_end(it);
	return r;
}

// hc_epoch_cas acts on oid only while its xattr name still holds exactly
// the value was (wlen bytes; 0: the object has none): with ep not 0 it
// stamps the object with ep, with ep 0 it removes the object. ECANCELED
// when the value changed meanwhile, ENOENT when the object is gone.
static int hc_epoch_cas(rados_ioctx_t io, const char *oid, const char *name,
                        const char *was, size_t wlen, uint64_t ep) {
	char eb[24];
	rados_write_op_t op = rados_create_write_op();
	rados_write_op_assert_exists(op);
	rados_write_op_cmpxattr(op, name, LIBRADOS_CMPXATTR_OP_EQ, wlen ? was : "", wlen);
	if (ep != 0) {
		int n = hc_epoch(eb, ep);
		rados_write_op_setxattr(op, name, eb, n);
	} else {
		rados_write_op_remove(op);
	}
	int r = rados_write_op_operate(op, io, oid, NULL, 0);
	rados_release_write_op(op);
	return r;
}

enum { HC_ANY = 0, HC_IF_VERSION = 1, HC_IF_ABSENT = 2 };

// hc_write_full replaces the whole object with len bytes (len may be 0), if
// cond holds: HC_IF_VERSION, the object is at version ver; HC_IF_ABSENT, it
// does not exist. *newver is the object's version after the write.
static int hc_write_full(rados_ioctx_t io, const char *oid, const char *buf, size_t len,
                         int cond, uint64_t ver, uint64_t *newver) {
	rados_write_op_t op = rados_create_write_op();
	if (cond == HC_IF_VERSION)
		rados_write_op_assert_version(op, ver);
	else if (cond == HC_IF_ABSENT)
		rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
	rados_write_op_write_full(op, buf, len);
	int r = rados_write_op_operate(op, io, oid, NULL, 0);
	rados_release_write_op(op);
	if (r == 0)
		*newver = rados_get_last_version(io);
	return r;
}

// hc_read_whole reads an object from its start into buf (cap bytes) and its
// size, in one operation, so both come from the same version of it. *n is
// the bytes read; when *size > cap the caller reads again with a larger buf.
static int hc_read_whole(rados_ioctx_t io, const char *oid, char *buf, size_t cap,
                         uint64_t *size, size_t *n, uint64_t *ver) {
	int rs = 0, rr = 0;
	time_t mtime;
	rados_read_op_t op = rados_create_read_op();
	rados_read_op_stat(op, size, &mtime, &rs);
	rados_read_op_read(op, 0, cap, buf, n, &rr);
	int r = rados_read_op_operate(op, io, oid, 0);
	rados_release_read_op(op);
	if (r == 0 && rs < 0)
		r = rs;
	if (r == 0 && rr < 0)
		r = rr;
	if (r == 0)
		*ver = rados_get_last_version(io);
	return r;
}
*/
import "C"

import (
	"syscall"
	"unsafe"

	"github.com/ceph/go-ceph/rados"
)

// errno turns a librados return value into nil or a syscall.Errno.
func errno(r C.int) error {
	if r >= 0 {
		return nil
	}
	return syscall.Errno(-r)
}

func cioctx(io *rados.IOContext) C.rados_ioctx_t { return C.rados_ioctx_t(io.Pointer()) }

func bufPtr(p []byte) *C.char {
	if len(p) == 0 {
		return nil
	}
	return (*C.char)(unsafe.Pointer(&p[0]))
}

// guard is the epoch guard of a chunk operation: none when epoch is 0;
// with stamp, the operation also sets the object's epoch.
type guard struct {
	epoch uint64
	stamp bool
}

// args are the C arguments of hc_guard.
func (g guard) args() (C.uint64_t, C.int) {
	if g.stamp {
		return C.uint64_t(g.epoch), 1
	}
	return C.uint64_t(g.epoch), 0
}

// cEpochXattr is EpochXattr for C, made once and never freed.
var cEpochXattr = C.CString(EpochXattr)

// zero zeroes n bytes from off of the existing object oid, under g.
func zero(io *rados.IOContext, oid string, off, n uint64, g guard) error {
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	ep, stamp := g.args()
	return errno(C.hc_zero(cioctx(io), coid, C.uint64_t(off), C.uint64_t(n), cEpochXattr, ep, stamp))
}

// writeExisting writes p at off into the existing object oid, under g.
func writeExisting(io *rados.IOContext, oid string, p []byte, off uint64, g guard) error {
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	ep, stamp := g.args()
	return errno(C.hc_write(cioctx(io), coid, bufPtr(p), C.size_t(len(p)), C.uint64_t(off), cEpochXattr, ep, stamp))
}

// stamp stamps the existing object oid with epoch (not 0), unless it
// carries a newer one, or, with a floor (not 0), one below it or none: in
// each case it fails with ECANCELED.
func stamp(io *rados.IOContext, oid string, epoch, floor uint64) error {
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	return errno(C.hc_stamp(cioctx(io), coid, cEpochXattr, C.uint64_t(epoch), C.uint64_t(floor)))
}

// createStamped creates oid stamped with epoch (not 0), or fails with
// EEXIST when it exists.
func createStamped(io *rados.IOContext, oid string, epoch uint64) error {
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	return errno(C.hc_create_stamped(cioctx(io), coid, cEpochXattr, C.uint64_t(epoch)))
}

// readEpoch returns the value of oid's epoch xattr, empty when it has
// none; ENOENT when oid does not exist.
func readEpoch(io *rados.IOContext, oid string) (string, error) {
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	buf := make([]byte, 32)
	var n C.size_t
	if err := errno(C.hc_read_epoch(cioctx(io), coid, cEpochXattr, bufPtr(buf), C.size_t(len(buf)), &n)); err != nil {
		return "", err
	}
	return string(buf[:min(int(n), len(buf))]), nil
}

// epochCAS stamps oid with epoch, or removes it when epoch is 0, only
// while its epoch xattr still holds was ("" for none): ECANCELED when it
// changed meanwhile, ENOENT when oid is gone.
func epochCAS(io *rados.IOContext, oid, was string, epoch uint64) error {
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	cwas := C.CString(was)
	defer C.free(unsafe.Pointer(cwas))
	return errno(C.hc_epoch_cas(cioctx(io), coid, cEpochXattr, cwas, C.size_t(len(was)), C.uint64_t(epoch)))
}

// writeCond says when writeFull may write.
type writeCond int

const (
	always   writeCond = C.HC_ANY
	ifAt     writeCond = C.HC_IF_VERSION
	ifAbsent writeCond = C.HC_IF_ABSENT
)

func writeFull(io *rados.IOContext, oid string, p []byte, cond writeCond, ver uint64) (uint64, error) {
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	var nv C.uint64_t
	err := errno(C.hc_write_full(cioctx(io), coid, bufPtr(p), C.size_t(len(p)), C.int(cond), C.uint64_t(ver), &nv))
	return uint64(nv), err
}

// readWhole reads the whole object oid and its version. buf is a first
// guess of its size.
func readWhole(io *rados.IOContext, oid string, buf []byte) ([]byte, uint64, error) {
	coid := C.CString(oid)
	defer C.free(unsafe.Pointer(coid))
	for {
		var size C.uint64_t
		var n C.size_t
		var ver C.uint64_t
		if err := errno(C.hc_read_whole(cioctx(io), coid, bufPtr(buf), C.size_t(len(buf)), &size, &n, &ver)); err != nil {
			return nil, 0, err
		}
		if uint64(size) <= uint64(len(buf)) {
			return buf[:n], uint64(ver), nil
		}
		// Larger than the guess: read again with room for what the stat saw
		// (and a little more, should it grow in between).
		buf = make([]byte, uint64(size)+uint64(size)/8)
	}
}
