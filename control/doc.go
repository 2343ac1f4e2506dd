// Package control is hostcryptd's control plane: the resources of a host —
// managed disks, VMs, disk encryption sets, snapshots and images — with
// their rules (Azure's restrictions on customer-managed keys, encryption at
// host and double encryption), the running VMs' disks shown in the FUSE
// tree, the enforcement of key states, rotation, and the HTTP API that
// hostcrypt and other clients speak (package control/api).
//
// Its parts, each in the package or file that owns it:
//
//   - records: what survives a restart, in a transactional store
//     (control/store); every rule that spans records (unique names, the
//     limit of disk encryption sets, one VM per disk) is checked inside the
//     transaction that commits it;
//   - keys: one key service interface (control/keys), implemented over the
//     key store by keystore/hostkeys and in memory by control/keys/keystest;
//   - running disks: one volume each (package volume), which owns the
//     stack of caches, freeze and engine;
//   - the API's view of a resource (control/api) is made from its record and
//     its volume's counters (view.go).
//
// Concurrency. The Host's mutex guards only what is in memory — which VMs
// run with which volumes, and which resources a long operation has claimed
// — and is never held across storage, key store or store I/O. A long
// operation (a snapshot, an image, a copy from a source, a conversion, an
// import or export, a re-wrap) claims its resources and records an intent
// in one transaction, does its I/O with no lock held, and records the
// result in another; a request that needs a claimed resource is refused
// with a Conflict naming the operation, and reads never wait. Every key
// store call is bounded (keys.DefaultTimeout), so no request waits on the
// key store beyond that.
package control
