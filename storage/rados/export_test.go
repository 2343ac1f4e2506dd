//go:build ceph

package rados

// ReadPaths tells how many chunk reads of b were synchronous and how many
// asynchronous.
func ReadPaths(b *Backend) (sync, async uint64) {
	return b.aio.syncReads.Load(), b.aio.asyncReads.Load()
}
