//go:build ceph

package rados

// ReadPaths tells how many chunk reads of b were synchronous and how many
// asynchronous.
func ReadPaths(b *Backend) (sync, async uint64) {
	return b.aio.reads.syncs.Load(), b.aio.reads.asyncs.Load()
}

// WritePaths tells how many chunk writes of b were synchronous and how
// many asynchronous.
func WritePaths(b *Backend) (sync, async uint64) {
	return b.aio.writes.syncs.Load(), b.aio.writes.asyncs.Load()
}

// AsyncWrites makes every chunk write of b asynchronous, however few are
// in flight.
func AsyncWrites(b *Backend) { b.aio.writes.syncBelow.Store(0) }
