// Package cache is the host cache of a disk: a storage.Backend decorator
// that keeps pages of the chunk objects in a directory on the host.
//
// It sits below the disk engine, so everything it holds is what the engine
// hands to storage: sealed blocks and selector bytes, already encrypted
// with the disk's data key. The cache has no key of its own; a customer-key
// disk's cache is protected by the customer key and a platform-key disk's
// by the platform key, as the disk's storage is.
//
// # Modes
//
//   - None: New returns a Cache whose chunks are the remote's own; the data
//     path costs nothing.
//   - ReadOnly: reads are served from cached pages; a missing page is
//     fetched whole from the remote and kept. Writes go to the remote first
//     and then update the cached pages they cover, so the cache is never
//     stale. Sync is the remote's Sync.
//   - ReadWrite (write-back): writes land in the cache (a page not cached is
//     first filled from the remote unless the write covers it; the two
//     partial pages at the ends of a write are read in one call) and mark
//     pages dirty. Dirty pages go back to the remote in the background
//     (every Options.FlushInterval), on Flush, on Close, and when the cache
//     needs their room. Chunk.Sync makes completed writes durable in the
//     cache, not in the remote: that is what a guest's fsync waits for.
//     On storage shared with other hosts (Options.SharedStorage), a host
//     that dies takes its cache with it while another host carries on
//     with the disk, so Chunk.Sync writes the object's dirty pages back
//     and syncs the remote chunk before it returns, as ReadOnly's does;
//     between syncs, writes still land in the cache and coalesce there.
//
// # What goes through the cache
//
// A cache in front of a store as fast as itself only adds work, so the
// cache takes in only I/O it can help, decided from what it observes,
// never from what the remote is:
//
//   - Sequential cut-off (as bcache's): an I/O of a sequential stream on a
//     chunk object, once the stream has reached Options.SequentialCutoff
//     bytes (512 KiB by default), or a single I/O that large, goes around
//     the cache. Each object follows its last four streams.
//   - The remote's latency: every remote read and write of at most 64 KiB
//     is timed, and the fastest of the last one or two windows of 32 such
//     calls is the remote's latency (queueing makes calls slower, never
//     faster, so the fastest is what the store itself costs). Random I/O
//     is cached while it is at least Options.SlowStorage (250 µs by
//     default), and goes around the cache again once it falls below half
//     of that. Until the remote has been measured, I/O goes around.
//
// A read around the cache goes to the remote; in ReadWrite, an object
// with cached pages is read page by page, so that dirty pages are served
// from the cache, and what is missing is read from the remote without
// being taken in. A write around the cache goes to the remote first and
// then updates the pages it covers (a clean page is dropped in ReadWrite,
// a dirty one takes the new bytes and stays dirty), while write-back of
// the object waits, so the remote never receives an older image of a page
// after a newer write. The remote chunk is then synced by the next
// Chunk.Sync. Stats say how many I/Os went around, the measured latency,
// and whether random I/O is being cached.
//
// The unit is a page: PageSize bytes of a chunk object, aligned in the
// object (not to the engine's slots). PunchHole goes to the remote and
// drops the pages it covers, dirty ones too (a dirty page it covers in
// part is zeroed there). Delete drops the object's pages and deletes it in
// the remote. ReadMeta, WriteMeta, List and Usage pass through; in
// ReadWrite, Usage, and ReadMeta of a chunk with dirty pages, write back
// first so they see what was written.
//
// # Bound
//
// Options.MaxBytes, at least MinBytes, is divided into slots of one page
// in a data file; a cached page always occupies a slot, so CachedBytes and
// the data file never exceed MaxBytes (rounded down to pages), with no
// slack. The dirty-page index beside it adds 16 bytes per dirty page plus
// each object's key. When no slot is free, the least recently used clean
// page that no request is using is evicted; when only dirty pages are left,
// a write waits for a flush to make room. If a write still finds no room
// (every slot busy with requests in flight), it goes straight to the remote
// and is synced there by the next Chunk.Sync.
//
// # Layout of the cache directory
//
//	data          slot s (page-sized) at offset s*PageSize; no header
//	dirty.idx     the dirty-page index, ReadWrite only, absent when nothing is dirty
//	dirty.idx.tmp the next index while it is being written
//
// dirty.idx is "HCCIDX01", a big-endian uint32 count of objects, then per
// object: uint16 key length, the key, uint32 page count, and per page its
// uint64 page number, uint32 slot and the uint16 start and end of the bytes
// written in it (write-back and recovery write only those, so an object
// never grows past what was written); last a CRC-32C (Castagnoli) of all
// the bytes before it.
//
// # Crash safety
//
// Chunk.Sync (and every flush) commits, unless nothing changed since the
// last commit (the engine syncs each chunk it wrote in turn; only the
// first of those commits). A commit notes the slots of all dirty
// pages, fsyncs the data file, writes the new index to dirty.idx.tmp,
// fsyncs it, renames it over dirty.idx and fsyncs the directory. The
// rename is atomic, so after a crash dirty.idx is one whole committed
// index, and since the data was fsynced before, every slot it names held
// its page's data (as of that commit or newer) on disk before the index
// did. A slot named by the committed index is never given to another page
// until a later index that no longer names it is committed: it can only
// receive newer writes to its own page. So the index never points at
// another page's bytes. A page leaves the index only when a commit happens
// after its write-back to the remote was synced, or after PunchHole or
// Delete dropped it (Delete commits before it deletes in the remote, so
// recovery cannot bring a deleted object back).
//
// A clean Close removes the data file. New on a directory holding
// dirty.idx writes each named slot back to its
// object in the remote, syncs the remote chunks, removes the index, and
// starts with an empty cache (clean pages of an earlier run are not
// trusted: the disk may have been written without this cache since). A
// crash during recovery repeats it. Hence every write that a Chunk.Sync
// acknowledged is in the remote after recovery, and only writes after the
// last commit, which nobody was told were durable, can be lost or, within a
// page, partly applied; they never change another page.
//
// # Concurrency
//
// Many goroutines may call ReadAt and WriteAt at once. One mutex guards the
// in-memory maps and lists and is never held across I/O; each page has a
// read-write lock that requests hold shared while they read or write its
// slot, and that eviction takes exclusively (only with TryLock), so a slot
// is never reused under I/O. Write-back of an object's pages excludes
// PunchHole on that object and writes around the cache to it; it keeps up to 16 remote writes in flight per
// object and writes 4 objects at once, since round trips, not bandwidth,
// bound a remote. Only write-back rounds (Flush) are serialised with each
// other. A page filled from the remote is installed only if the remote did
// not change meanwhile (a write-through, a punch, a write-back); otherwise
// the image is dropped, since it may be older than the cache's view.
package cache
