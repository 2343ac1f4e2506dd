// Package rados is a storage.Backend on a Ceph RADOS pool, optionally inside
// one RADOS namespace of the pool: the store under RBD, so that disks can
// live beside the VM disks a Ceph cluster already serves.
//
// The backend itself needs librados and is built only with the build tags
// `ceph,pacific` (go-ceph's tag for Ceph 16 "Pacific", as Debian 12 ships
// it): `make build-ceph`, or `go build -tags ceph,pacific`. Without them this
// package holds only what callers need to compile against it (Config and the
// errors), and storage/location tells a user of a rados://
// location what to install.
//
// How the contract of package storage maps onto RADOS (docs/RADOS.md has the
// whole story and the measurements):
//
//   - A key is an object name, unchanged, in the pool and namespace of the
//     Config; one object per chunk, written in place at offsets.
//   - Chunk writes are durable when RADOS acknowledges them (the OSDs commit
//     before they answer), so Chunk.Sync has nothing left to do.
//   - PunchHole is a RADOS zero operation, which frees the space on the
//     OSDs; writing zeros would allocate it.
//   - WriteMeta is one full-object write, which RADOS applies atomically.
//   - List reads the whole namespace (RADOS lists in hash order and has no
//     server-side prefix) and filters and sorts here; Usage adds up the
//     logical sizes of the objects List finds, as RADOS reports no
//     allocation per object.
//   - Chunk reads and writes that come together are asynchronous librados
//     calls, waited for without holding an OS thread (aio.go); a read or a
//     write with few others of its kind in flight and every other call are
//     synchronous.
//   - Every call is bounded by Config.Timeout (librados' op timeouts) and a
//     call that runs out reports an error wrapping ErrTimeout. At most
//     MaxInFlight calls of a Backend are in flight; a call waits for its
//     turn at most Config.Timeout too, and then fails the same way.
//   - Compare-and-swap on metadata objects (ReadMetaVersion, WriteMetaIf)
//     uses the object version RADOS keeps: a full write with a version
//     assertion (or an exclusive create), which RADOS applies or refuses
//     atomically.
//   - Chunk writes of a disk's owner are guarded by its ownership epoch
//     (Backend.WithEpoch): each chunk object it creates or writes is
//     stamped with the epoch in an xattr (a new object in the operation
//     that creates it), and each write and zero carries a compare of that
//     xattr, so that a writer of an older epoch nobody fenced is refused
//     by the OSD itself. Below the disk's epoch floor (the epoch of its
//     last takeover from a writer that did not let it go, after which
//     every chunk object was stamped) a chunk object was created since by
//     such a writer: opening it removes it, conditionally on its epoch, and
//     the chunk is absent. The C shim (shim.go) holds these operations:
//     go-ceph binds none of them.
package rados

import (
	"errors"
	"fmt"
	"syscall"
	"time"
)

// DefaultTimeout bounds each RADOS call when Config.Timeout is zero. It is
// the SCSI command timeout a Linux guest uses for its own disks: a call
// taking longer fails the same way a stuck disk would.
const DefaultTimeout = 30 * time.Second

// MaxInFlight is how many calls of one Backend may be in flight at once;
// the others wait for their turn. It keeps the threads held in librados
// (each synchronous call holds one) and what librados queues bounded, so
// that a call's timeout measures the cluster and not a queue in front of
// it. A VM's disks share their Backend: 256 is four mounts' worth of
// FUSE's background requests (fs.DefaultMaxBackground) and far from
// librados' own limit (objecter_inflight_ops, 1024).
const MaxInFlight = 256

// DefaultUser is the cephx user when Config.User is empty.
const DefaultUser = "admin"

// Config says where the objects live and how to reach the cluster.
type Config struct {
	// Pool is the RADOS pool; it must exist.
	Pool string
	// Namespace is the RADOS namespace inside Pool; empty is the pool's
	// default namespace. Backends on different namespaces never see each
	// other's objects.
	Namespace string
	// ConfFile is the ceph.conf naming the monitors and the keyring; empty
	// means librados' own search ($CEPH_CONF, then /etc/ceph/ceph.conf).
	ConfFile string
	// User is the cephx user, without "client." (DefaultUser if empty).
	User string
	// Timeout bounds every RADOS call: connecting, each monitor command and
	// each object operation (DefaultTimeout if zero; at least one second).
	Timeout time.Duration
}

// Check fills in the defaults and tells what is wrong with c.
func (c *Config) Check() error {
	if c.Pool == "" {
		return errors.New("rados: no pool given")
	}
	if c.User == "" {
		c.User = DefaultUser
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Timeout < time.Second {
		return fmt.Errorf("rados: timeout %v is below librados' resolution of one second", c.Timeout)
	}
	return nil
}

var (
	// ErrStaleEpoch is returned, wrapped, by a chunk write or zero of a
	// writer under an ownership epoch older than the one its object was
	// written under since (Backend.WithEpoch), and by a stamping that finds
	// a newer epoch: another host took the disk over. It wraps syscall.EIO, which is what the guest sees; nothing of
	// the refused operation landed.
	ErrStaleEpoch = fmt.Errorf("rados: the disk was taken over under a newer ownership epoch: %w", syscall.EIO)
	// ErrTimeout is returned, wrapped, by a call that got no answer from
	// the cluster within Config.Timeout. A write that timed out may still
	// land later.
	ErrTimeout = errors.New("rados: no answer from the cluster in time")
)
