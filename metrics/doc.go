// Package metrics is what hostcryptd shows Prometheus (docs/OBSERVABILITY.md
// lists every metric): each attached disk's I/O, counted on the data path
// without a lock or an allocation, and what its engine, host cache and key
// lease say, read when scraped; the key checks, rotations and long copies
// of the control plane; and a short history of each disk's IOPS and latency
// for the web console (Recent).
//
// A scrape takes this package's own lock to list the open disks, and for a
// moment each host cache's lock and the table of copies in progress, none
// of them held across I/O: it never waits behind the control lock, a copy
// or a key store call.
//
// Labels are the VM's and the disk's names (and, for copies and rotations,
// the resource's): never an offset, a key or guest data.
package metrics
