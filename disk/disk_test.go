package disk

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/internal/leakscan"
	"hostcrypt/internal/zeros"
	"hostcrypt/storage/local"
)

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestUnwrittenReadsZeros(t *testing.T) {
	td := newTestDisk(t, 8<<20, 1, 0)
	buf := bytes.Repeat([]byte{0xAA}, 12345)
	n, err := td.ReadAt(buf, 1000)
	require.NoError(t, err)
	require.Equal(t, len(buf), n)
	require.True(t, zeros.Is(buf))
}

func TestReadWriteShapes(t *testing.T) {
	for _, tc := range formatsAndLayers() {
		layers := tc.layers
		td := newTestDiskFormat(t, tc.format, 4<<20, layers, 8) // 32 KiB chunks: requests cross chunks
		model := make([]byte, td.Size())
		for _, w := range []struct{ off, n int64 }{
			{0, 4096}, {512, 512}, {4000, 200}, {1000, 70000}, {32768 - 100, 200},
			{4<<20 - 512, 512}, {1 << 20, 1 << 20}, {12345, 1},
		} {
			p := randBytes(int(w.n))
			n, err := td.WriteAt(p, w.off)
			require.NoError(t, err)
			require.EqualValues(t, w.n, n)
			copy(model[w.off:], p)
		}
		got := make([]byte, td.Size())
		_, err := td.ReadAt(got, 0)
		require.NoError(t, err)
		require.True(t, bytes.Equal(model, got), "format %d layers=%d", tc.format, layers)
	}
}

type formatLayers struct{ format, layers int }

// formatsAndLayers is every format version with single and double encryption.
func formatsAndLayers() []formatLayers {
	var out []formatLayers
	for _, f := range formats {
		out = append(out, formatLayers{f, 1}, formatLayers{f, 2})
	}
	return out
}

func TestBounds(t *testing.T) {
	td := newTestDisk(t, 1<<20, 1, 0)
	_, err := td.WriteAt(make([]byte, 10), td.Size()-5)
	require.ErrorIs(t, err, ErrRange)
	_, err = td.WriteAt(make([]byte, 10), -1)
	require.ErrorIs(t, err, ErrRange)
	buf := make([]byte, 10)
	n, err := td.ReadAt(buf, td.Size()-4)
	require.Equal(t, 4, n)
	require.ErrorIs(t, err, io.EOF)
	n, err = td.ReadAt(buf, td.Size())
	require.Equal(t, 0, n)
	require.ErrorIs(t, err, io.EOF)
	require.ErrorIs(t, td.Discard(td.Size()-4096, 8192), ErrRange)
}

// TestDifferential runs random writes, discards and reads, aligned and not,
// against a plain byte-slice model, for single and double encryption, with
// reopen in between.
func TestDifferential(t *testing.T) {
	for _, tc := range formatsAndLayers() {
		seed := uint64(time.Now().UnixNano())
		t.Logf("format %d layers=%d seed=%d", tc.format, tc.layers, seed)
		runOps(t, tc.format, tc.layers, mrand.New(mrand.NewPCG(seed, 7)), 400)
	}
}

func runOps(t *testing.T, format, layers int, r *mrand.Rand, ops int) {
	td := newTestDiskFormat(t, format, 3<<20, layers, 16)
	size := td.Size()
	model := make([]byte, size)
	pick := func() (int64, int64) {
		switch r.IntN(4) {
		case 0: // sector aligned, 512-byte units
			off := r.Int64N(size/512) * 512
			return off, min(size-off, int64(1+r.IntN(24))*512)
		case 1: // block aligned
			off := r.Int64N(size/4096) * 4096
			return off, min(size-off, int64(1+r.IntN(80))*4096)
		default: // anywhere
			off := r.Int64N(size)
			return off, min(size-off, 1+r.Int64N(200000))
		}
	}
	// A sequential reader in long requests, read ahead by the engine,
	// between the other operations.
	stream, streamAt := int64(aheadMin+r.IntN(2)*32<<10), int64(0)
	aheads := uint64(0)
	for i := 0; i < ops; i++ {
		off, n := pick()
		switch op := r.IntN(12); {
		case op >= 10: // a few reads of the stream in a row
			for k := 1 + r.IntN(4); k > 0; k-- {
				if streamAt+stream > size {
					streamAt = 0
				}
				p := make([]byte, stream)
				got, release, err := td.ReadLent(p, streamAt)
				require.NoError(t, err)
				require.True(t, bytes.Equal(model[streamAt:streamAt+stream], got), "op %d stream read %d@%d", i, stream, streamAt)
				if release != nil {
					release()
				}
				streamAt += stream
			}
		case op < 5:
			p := make([]byte, n)
			if r.IntN(5) == 0 {
				clear(p) // zeros are stored as holes
			} else {
				for j := range p {
					p[j] = byte(r.Uint32())
				}
			}
			_, err := td.WriteAt(p, off)
			require.NoError(t, err)
			copy(model[off:], p)
		case op < 7:
			require.NoError(t, td.Discard(off, n))
			clear(model[off : off+n])
		case op == 7 && r.IntN(2) == 0:
			require.NoError(t, td.Sync())
		case op < 9:
			got := make([]byte, n)
			_, err := td.ReadAt(got, off)
			require.NoError(t, err)
			require.True(t, bytes.Equal(model[off:off+n], got), "op %d read %d@%d", i, n, off)
		default:
			aheads += td.Stats().ReadAheads
			td.reopen(t)
		}
	}
	got := make([]byte, size)
	_, err := td.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(model, got))
	t.Logf("%d reads served from a read-ahead", aheads+td.Stats().ReadAheads)
}

// FuzzDiskOps drives the differential test from the fuzzer's seed bytes.
func FuzzDiskOps(f *testing.F) {
	f.Add(uint64(1), uint64(2), false, false)
	f.Add(uint64(99), uint64(3), true, false)
	f.Add(uint64(5), uint64(8), false, true)
	f.Add(uint64(13), uint64(21), true, true)
	f.Fuzz(func(t *testing.T, a, b uint64, double, v1 bool) {
		layers, format := 1, FormatVersion
		if double {
			layers = 2
		}
		if v1 {
			format = formatV1
		}
		runOps(t, format, layers, mrand.New(mrand.NewPCG(a, b)), 60)
	})
}

func TestReopenAfterSync(t *testing.T) {
	for _, tc := range formatsAndLayers() {
		layers := tc.layers
		td := newTestDiskFormat(t, tc.format, 16<<20, layers, 0)
		p := randBytes(3 << 20)
		_, err := td.WriteAt(p, 5<<20+512)
		require.NoError(t, err)
		require.NoError(t, td.Sync())
		td.reopen(t)
		got := make([]byte, len(p))
		_, err = td.ReadAt(got, 5<<20+512)
		require.NoError(t, err)
		require.True(t, bytes.Equal(p, got))
		require.Equal(t, layers, td.Layers())
	}
}

// TestConcurrentWriters: many goroutines write disjoint ranges (checked
// exactly) and overlapping ranges (checked for torn blocks: every 512-byte
// sector must hold one writer's bytes whole).
func TestConcurrentWriters(t *testing.T) {
	for _, f := range formats {
		t.Run(fmt.Sprintf("v%d", f), func(t *testing.T) { testConcurrentWriters(t, f) })
	}
}

func testConcurrentWriters(t *testing.T, format int) {
	td := newTestDiskFormat(t, format, 8<<20, 1, 64)
	const writers = 8
	var wg sync.WaitGroup
	// Syncs run all along, so that writes meet Syncs in flight.
	stopSync, syncs := make(chan struct{}), make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stopSync:
				syncs <- n
				return
			default:
			}
			assert.NoError(t, td.Sync())
			n++
		}
	}()
	region := td.Size() / 2 / writers
	want := make([][]byte, writers)
	for w := 0; w < writers; w++ {
		want[w] = randBytes(int(region))
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(uint64(w), 1))
			base := int64(w) * region
			// Disjoint: own region, random pieces, then the whole to be sure.
			for i := 0; i < 50; i++ {
				off := r.Int64N(region - 9000)
				n := 1 + r.Int64N(9000)
				_, err := td.WriteAt(want[w][off:off+n], base+off)
				assert.NoError(t, err)
			}
			_, err := td.WriteAt(want[w], base)
			assert.NoError(t, err)
			// Overlapping: the second half of the disk, sector-aligned,
			// each write filled with one value.
			half := td.Size() / 2
			for i := 0; i < 60; i++ {
				off := half + r.Int64N(half/512-40)*512
				n := int64(1+r.IntN(32)) * 512
				_, err := td.WriteAt(bytes.Repeat([]byte{byte(w*60 + i + 1)}, int(n)), off)
				assert.NoError(t, err)
				got := make([]byte, n)
				_, err = td.ReadAt(got, off)
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	close(stopSync)
	t.Logf("%d Syncs during the writes", <-syncs)
	for w := 0; w < writers; w++ {
		got := make([]byte, region)
		_, err := td.ReadAt(got, int64(w)*region)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want[w], got), "writer %d", w)
	}
	half := make([]byte, td.Size()/2)
	_, err := td.ReadAt(half, td.Size()/2)
	require.NoError(t, err)
	for s := 0; s < len(half); s += 512 {
		sector := half[s : s+512]
		require.Equal(t, bytes.Repeat(sector[:1], 512), sector, "torn sector at %d", s)
	}
	// What the last Sync persisted is what the disk shows: a crash now
	// (another instance opening the backend) reads the same bytes.
	require.NoError(t, td.Sync())
	live := make([]byte, td.Size())
	_, err = td.ReadAt(live, 0)
	require.NoError(t, err)
	crashed, err := Open(context.Background(), td.be, td.name, td.ring)
	require.NoError(t, err)
	defer crashed.Close()
	got := make([]byte, td.Size())
	_, err = crashed.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(live, got), "the reopened disk differs from the synced one")
}

// TestWritersToDifferentBlocksRunInParallel proves there is no per-disk lock
// on the write path: two writers to different blocks must both be inside the
// backend's WriteAt at the same moment, or the test times out.
func TestWritersToDifferentBlocksRunInParallel(t *testing.T) {
	dir := t.TempDir()
	lb, err := local.Open(dir)
	require.NoError(t, err)
	hb := &hookBackend{Backend: lb}
	ring := keyring{newKEK("k/1")}
	d, err := Create(context.Background(), hb, "d", CreateOptions{Size: 8 << 20, Layers: wrappers(ring)})
	require.NoError(t, err)
	defer d.Close()
	// Create both chunks first so that only data writes are watched.
	_, err = d.WriteAt(randBytes(4096), 0)
	require.NoError(t, err)
	_, err = d.WriteAt(randBytes(4096), 1<<20)
	require.NoError(t, err)

	b := newBarrier(2)
	var once sync.Once
	hb.onWrite = func(p []byte, off int64) (bool, int, error) {
		if len(p) < BlockSize {
			return false, 0, nil // selectors
		}
		b.arrive()
		select {
		case <-b.ch:
			return false, 0, nil
		case <-time.After(10 * time.Second):
			once.Do(func() {
				t.Error("the second writer never reached the backend while the first was inside it: writes are serialised")
			})
			return false, 0, nil
		}
	}
	var wg sync.WaitGroup
	for _, off := range []int64{8192, 1<<20 + 8192} {
		wg.Go(func() {
			_, err := d.WriteAt(randBytes(4096), off)
			assert.NoError(t, err)
		})
	}
	wg.Wait()
}

// TestSyncLetsWritersOn: while a Sync is making a chunk durable (held here
// inside its first fsync), reads and writes of the chunk go on, except a
// write to a block whose both slots hold versions a crash must find: the one
// persisted and the one the Sync is persisting. That write waits for the Sync.
// A crash during the Sync finds the versions synced before it, and a crash
// after it the versions it persisted, whatever was written meanwhile.
func TestSyncLetsWritersOn(t *testing.T) {
	for _, format := range formats {
		t.Run(fmt.Sprintf("v%d", format), func(t *testing.T) { testSyncLetsWritersOn(t, format) })
	}
}

func testSyncLetsWritersOn(t *testing.T, format int) {
	ctx := context.Background()
	lb, err := local.Open(t.TempDir())
	require.NoError(t, err)
	hb := &hookBackend{Backend: lb}
	ring := keyring{newKEK("k/1")}
	// No background Sync: this test decides when to sync.
	defer func(every time.Duration) { flushEvery = every }(flushEvery)
	flushEvery = time.Hour
	d, err := Create(ctx, hb, "d", CreateOptions{Size: 4 << 20, Layers: wrappers(ring), Format: format})
	require.NoError(t, err)
	defer d.Close()

	write := func(off int64, b []byte) {
		t.Helper()
		_, err := d.WriteAt(b, off)
		require.NoError(t, err)
	}
	read := func(dd *Disk, off int64) []byte {
		t.Helper()
		b := make([]byte, BlockSize)
		_, err := dd.ReadAt(b, off)
		require.NoError(t, err)
		return b
	}
	const busy, fresh, other = 0, 4 * BlockSize, 8 * BlockSize
	v1, v2, v3 := randBytes(BlockSize), randBytes(BlockSize), randBytes(BlockSize)
	f1, f2 := randBytes(BlockSize), randBytes(BlockSize)
	o1, o2 := randBytes(BlockSize), randBytes(BlockSize)
	write(busy, v1)
	write(other, o1)
	require.NoError(t, d.Sync()) // persisted: busy v1, other o1
	write(busy, v2)              // changed since: the next Sync persists v2 ...
	write(fresh, f1)             // ... and f1, in a block never persisted

	entered, release := make(chan struct{}), make(chan struct{})
	var once, released sync.Once
	hb.onSync = func() {
		once.Do(func() {
			close(entered)
			<-release
		})
	}
	let := func() { released.Do(func() { close(release) }) }
	defer let() // also when the test fails while the Sync is held
	synced := make(chan error, 1)
	go func() { synced <- d.Sync() }()
	<-entered

	// Held inside the Sync: a block the Sync does not change is written
	// at once, and so is the never-persisted block (into its other slot).
	for _, w := range []struct {
		off int64
		b   []byte
	}{{other, o2}, {fresh, f2}} {
		done := make(chan error, 1)
		go func() { _, err := d.WriteAt(w.b, w.off); done <- err }()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("a write at %d waited for the Sync in flight", w.off)
		}
	}
	require.Equal(t, o2, read(d, other))
	require.Equal(t, f2, read(d, fresh))
	require.Equal(t, v2, read(d, busy))
	// The busy block has no free slot: its write waits for the Sync.
	wrote := make(chan error, 1)
	go func() { _, err := d.WriteAt(v3, busy); wrote <- err }()
	select {
	case err := <-wrote:
		t.Fatalf("a write into a slot the Sync in flight is persisting went through (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	// afterCrash opens the disk as a restart after a crash would, from
	// what is in the backend now, and checks the three blocks.
	afterCrash := func(wantBusy, wantOther, wantFresh []byte) {
		t.Helper()
		crashed, err := Open(ctx, lb, "d", ring)
		require.NoError(t, err)
		require.Equal(t, wantBusy, read(crashed, busy))
		require.Equal(t, wantOther, read(crashed, other))
		require.Equal(t, wantFresh, read(crashed, fresh))
		require.NoError(t, crashed.Close())
	}
	// A crash now finds the versions of the Sync before.
	afterCrash(v1, o1, make([]byte, BlockSize))

	let()
	require.NoError(t, <-synced)
	require.NoError(t, <-wrote)
	require.Equal(t, v3, read(d, busy))
	// A crash after it finds what the Sync persisted: the writes made
	// during it (o2, f2, v3) went to other slots and harmed nothing.
	afterCrash(v2, o1, f1)
	// And the next Sync persists those.
	require.NoError(t, d.Sync())
	afterCrash(v3, o2, f2)
}

// TestFlushInterval: an open disk persists writes by itself at the interval
// it was given, without a Sync from the guest.
func TestFlushInterval(t *testing.T) {
	ctx := context.Background()
	defer func(every time.Duration) { flushEvery = every }(flushEvery)
	flushEvery = time.Hour
	td := newTestDisk(t, 4<<20, 1, 0)
	data := randBytes(BlockSize)
	_, err := td.WriteAt(data, 0)
	require.NoError(t, err)
	persisted := func() bool {
		other, err := Open(ctx, td.be, td.name, td.ring)
		require.NoError(t, err)
		defer other.Close()
		got := make([]byte, BlockSize)
		_, err = other.ReadAt(got, 0)
		require.NoError(t, err)
		return bytes.Equal(got, data)
	}
	time.Sleep(300 * time.Millisecond)
	require.False(t, persisted(), "persisted before any Sync")
	td.SetFlushInterval(100 * time.Millisecond)
	require.Eventually(t, persisted, 10*time.Second, 50*time.Millisecond, "never persisted by the background Sync")
}

// TestShortReadsReadTheirWindow: in format 2 a read of a few blocks reads
// the aligned window of readWindow pages of its slot around them, one call,
// so that the neighbours are cached (as a disk just opened does, until its
// reads show that the window does not pay: window_test.go); a longer read
// reads just what it needs.
func TestShortReadsReadTheirWindow(t *testing.T) {
	ctx := context.Background()
	lb, err := local.Open(t.TempDir())
	require.NoError(t, err)
	hb := &hookBackend{Backend: lb}
	ring := keyring{newKEK("k/1")}
	d, err := Create(ctx, hb, "d", CreateOptions{Size: 4 << 20, Layers: wrappers(ring)})
	require.NoError(t, err)
	want := randBytes(32 * BlockSize)
	_, err = d.WriteAt(want, 0) // blocks 0..31, all in slot A
	require.NoError(t, err)
	require.NoError(t, d.Close())
	d, err = Open(ctx, hb, "d", ring)
	require.NoError(t, err)
	defer d.Close()

	type read struct {
		n   int
		off int64
	}
	var mu sync.Mutex
	var reads []read
	hb.onRead = func(n int, off int64) {
		mu.Lock()
		reads = append(reads, read{n, off})
		mu.Unlock()
	}
	check := func(off int64, n int, saw ...read) {
		t.Helper()
		reads = nil
		got := make([]byte, n)
		_, err := d.ReadAt(got, off)
		require.NoError(t, err)
		require.Equal(t, want[off:off+int64(n)], got)
		require.Equal(t, saw, reads)
	}
	page := func(i int) int64 { return d.lay.pageOffset(0, i) }
	_, err = d.ReadAt(make([]byte, 1), 0) // the chunk's own load, not watched below
	require.NoError(t, err)
	check(3*BlockSize, BlockSize, read{readWindow * BlockSize, page(0)})
	check(12*BlockSize+100, 2*BlockSize, read{readWindow * BlockSize, page(8)})
	check(7*BlockSize, 2*BlockSize, read{2 * BlockSize, page(7)}) // crosses a window
	check(16*BlockSize, 12*BlockSize, read{12 * BlockSize, page(16)})
}

// TestTornWriteKeepsOldVersion: a data write cut short (as by a crash) never
// damages the current version of a block.
func TestTornWriteKeepsOldVersion(t *testing.T) {
	for _, tc := range formatsAndLayers() {
		t.Run(fmt.Sprintf("v%d/layers=%d", tc.format, tc.layers), func(t *testing.T) {
			testTornWrite(t, tc.format, tc.layers)
		})
	}
}

func testTornWrite(t *testing.T, format, layers int) {
	dir := t.TempDir()
	lb, err := local.Open(dir)
	require.NoError(t, err)
	hb := &hookBackend{Backend: lb}
	ring := keyring{newKEK("k/1")}
	if layers == 2 {
		ring = append(ring, newKEK("k/2"))
	}
	d, err := Create(context.Background(), hb, "d", CreateOptions{Size: 4 << 20, Layers: wrappers(ring), Format: format})
	require.NoError(t, err)
	old := randBytes(64 << 10)
	_, err = d.WriteAt(old, 0)
	require.NoError(t, err)
	require.NoError(t, d.Sync())
	// A write after the Sync that is never synced ...
	_, err = d.WriteAt(randBytes(64<<10), 0)
	require.NoError(t, err)
	// ... and then a data write that stops half-way through and fails: the
	// blocks fall back to their last durable version, never to torn data.
	hb.onWrite = func(p []byte, off int64) (bool, int, error) {
		if len(p) >= BlockSize {
			return true, len(p) / 2, errInjected
		}
		return false, 0, nil
	}
	_, err = d.WriteAt(randBytes(64<<10), 0)
	require.ErrorIs(t, err, errInjected)
	hb.onWrite = nil
	got := make([]byte, len(old))
	_, err = d.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(old, got), "the open disk serves the durable version")
	require.NoError(t, d.Close())
	d, err = Open(context.Background(), lb, "d", ring)
	require.NoError(t, err)
	defer d.Close()
	clear(got)
	_, err = d.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(old, got))
}

func chunkFile(td *testDisk, idx int) string {
	return filepath.Join(td.dir, filepath.FromSlash(chunkKey(td.name, int64(idx))))
}

// patch changes bytes of a chunk file in place, as an attacker with access to
// the backing directory would.
func patch(t *testing.T, path string, off int64, fn func(b []byte)) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 4096+200)
	n, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		require.NoError(t, err)
	}
	fn(b[:n])
	_, err = f.WriteAt(b[:n], off)
	require.NoError(t, err)
}

// swap exchanges the n bytes at a and at b of raw (ranges that do not
// overlap).
func swap(raw []byte, a, b, n int64) {
	x := bytes.Clone(raw[a : a+n])
	copy(raw[a:a+n], raw[b:b+n])
	copy(raw[b:b+n], x)
}

func requireIntegrity(t *testing.T, td *testDisk, off int64, plain []byte) {
	t.Helper()
	got := make([]byte, BlockSize)
	n, err := td.ReadAt(got, off)
	require.Error(t, err)
	require.ErrorIs(t, err, ErrIntegrity)
	require.ErrorIs(t, err, syscall.EIO)
	require.NotErrorIs(t, err, ErrWrongKey)
	require.Zero(t, n)
	if plain != nil {
		require.False(t, bytes.Contains(got, plain[:64]), "tampered read returned data")
	}
}

func TestTamper(t *testing.T) {
	const cb = 16
	for _, tc := range formatsAndLayers() {
		format, layers := tc.format, tc.layers
		setup := func(t *testing.T) (*testDisk, []byte) {
			td := newTestDiskFormat(t, format, 2<<20, layers, cb)
			data := randBytes(8 * BlockSize)
			_, err := td.WriteAt(data, 0)
			require.NoError(t, err)
			require.NoError(t, td.Sync())
			td.reopen(t)
			return td, data
		}
		// edit changes the raw bytes of chunk 0 and opens the disk again.
		edit := func(t *testing.T, td *testDisk, fn func(raw []byte)) {
			f := chunkFile(td, 0)
			raw, err := os.ReadFile(f)
			require.NoError(t, err)
			fn(raw)
			require.NoError(t, os.WriteFile(f, raw, 0o600))
			td.reopen(t)
		}
		name := func(s string) string { return fmt.Sprintf("v%d/layers=%d/%s", format, layers, s) }
		t.Run(name("bitflip"), func(t *testing.T) {
			td, data := setup(t)
			// A flipped bit in the ciphertext is found without reopening
			// (it is read from the backend every time) ...
			patch(t, chunkFile(td, 0), td.lay.unitOffset(0, 3, 100), func(b []byte) { b[0] ^= 0x04 })
			requireIntegrity(t, td, 3*BlockSize, data[3*BlockSize:])
			// Neighbours are unaffected.
			got := make([]byte, BlockSize)
			_, err := td.ReadAt(got, 2*BlockSize)
			require.NoError(t, err)
			require.Equal(t, data[2*BlockSize:3*BlockSize], got)
			require.EqualValues(t, 1, td.Stats().IntegrityErrors)
			// ... and in every other byte of a sealed unit: nonces and
			// tags included.
			for _, j := range []int{0, 23, 30, td.lay.slotSize - 17, td.lay.slotSize - 1} {
				edit(t, td, func(raw []byte) { raw[td.lay.unitOffset(0, 4, j)] ^= 0x80 })
				requireIntegrity(t, td, 4*BlockSize, data[4*BlockSize:])
				edit(t, td, func(raw []byte) { raw[td.lay.unitOffset(0, 4, j)] ^= 0x80 })
			}
		})
		t.Run(name("swap"), func(t *testing.T) {
			td, data := setup(t)
			edit(t, td, func(raw []byte) {
				a, b := storedUnit(td.lay, raw, 0, 1), storedUnit(td.lay, raw, 0, 2)
				putUnit(td.lay, raw, 0, 1, b)
				putUnit(td.lay, raw, 0, 2, a)
			})
			requireIntegrity(t, td, 1*BlockSize, data[BlockSize:])
			requireIntegrity(t, td, 2*BlockSize, data[2*BlockSize:])
		})
		if format != formatV1 {
			// Blocks 1 and 2 trade their nonces and tags (the pages stay),
			// or their pages (the entries stay).
			for _, part := range []struct {
				what string
				at   func(l layout, i int) (off, n int64)
			}{
				{"entries", func(l layout, i int) (int64, int64) { return l.entryOffset(0, i), int64(l.entrySize) }},
				{"pages", func(l layout, i int) (int64, int64) { return l.pageOffset(0, i), BlockSize }},
			} {
				t.Run(name("swap "+part.what), func(t *testing.T) {
					td, data := setup(t)
					edit(t, td, func(raw []byte) {
						a, n := part.at(td.lay, 1)
						b, _ := part.at(td.lay, 2)
						swap(raw, a, b, n)
					})
					requireIntegrity(t, td, 1*BlockSize, data[BlockSize:])
					requireIntegrity(t, td, 2*BlockSize, data[2*BlockSize:])
				})
			}
			t.Run(name("entry of the other slot"), func(t *testing.T) {
				// Block 3 has a version in each slot; slot A's page with
				// slot B's entry does not open.
				td, _ := setup(t)
				v2 := randBytes(BlockSize)
				_, err := td.WriteAt(v2, 3*BlockSize)
				require.NoError(t, err)
				require.NoError(t, td.Sync())
				es := int64(td.lay.entrySize)
				edit(t, td, func(raw []byte) {
					a := raw[td.lay.entryOffset(0, 3) : td.lay.entryOffset(0, 3)+es]
					b := raw[td.lay.entryOffset(1, 3) : td.lay.entryOffset(1, 3)+es]
					copy(b, bytes.Clone(a))
				})
				requireIntegrity(t, td, 3*BlockSize, v2)
			})
		}
		t.Run(name("copied from another disk"), func(t *testing.T) {
			td, data := setup(t)
			other, _ := setup(t)
			// The same block of another disk (same keys would not help: the
			// volume id is bound into every block).
			src, err := os.ReadFile(chunkFile(other, 0))
			require.NoError(t, err)
			edit(t, td, func(raw []byte) { putUnit(td.lay, raw, 0, 5, storedUnit(td.lay, src, 0, 5)) })
			requireIntegrity(t, td, 5*BlockSize, data[5*BlockSize:])
			// A whole chunk object from another disk is refused by its header.
			require.NoError(t, os.WriteFile(chunkFile(td, 0), src, 0o600))
			td.reopen(t)
			requireIntegrity(t, td, 0, data)
		})
		t.Run(name("selector flip"), func(t *testing.T) {
			td, data := setup(t)
			off := td.lay.selOffset(4)
			if format >= formatV3 {
				raw, err := os.ReadFile(chunkFile(td, 0))
				require.NoError(t, err)
				off = newestStateOffset(t, td, raw) + 16 + 4
			}
			patch(t, chunkFile(td, 0), off, func(b []byte) { b[0] ^= 0x10 })
			td.reopen(t)
			requireIntegrity(t, td, 4*BlockSize, data[4*BlockSize:])
		})
		t.Run(name("chunk moved to another index"), func(t *testing.T) {
			td := newTestDiskFormat(t, format, 2<<20, layers, cb)
			data := randBytes(2 * cb * BlockSize)
			_, err := td.WriteAt(data, 0)
			require.NoError(t, err)
			require.NoError(t, td.Sync())
			c0, err := os.ReadFile(chunkFile(td, 0))
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(chunkFile(td, 1), c0, 0o600))
			td.reopen(t)
			requireIntegrity(t, td, int64(cb*BlockSize), data[cb*BlockSize:])
		})
		t.Run(name("chunk header of another version"), func(t *testing.T) {
			td, data := setup(t)
			patch(t, chunkFile(td, 0), 8, func(b []byte) { b[1] ^= 3 }) // version 1 <-> 2
			td.reopen(t)
			requireIntegrity(t, td, 0, data)
		})
	}
}

func TestWrongKey(t *testing.T) {
	td := newTestDisk(t, 1<<20, 1, 0)
	_, err := td.WriteAt(randBytes(4096), 0)
	require.NoError(t, err)
	require.NoError(t, td.Disk.Close())
	// A ring whose key has the right id but other bytes: the wrap does not open.
	wrong := keyring{newKEK(td.ring[0].id)}
	_, err = Open(context.Background(), td.be, td.name, wrong)
	require.ErrorIs(t, err, ErrWrongKey)
	require.NotErrorIs(t, err, ErrIntegrity)
	// A wrap that opens but holds another disk's key: the key check catches it.
	m, err := ReadMetadata(context.Background(), td.be, td.name)
	require.NoError(t, err)
	foreign, err := td.ring[0].WrapKey(context.Background(), randBytes(32))
	require.NoError(t, err)
	m.Layers[0].WrappedKeys = []WrappedKey{foreign}
	require.NoError(t, writeMetadata(context.Background(), td.be, td.name, m))
	_, err = Open(context.Background(), td.be, td.name, td.ring)
	require.ErrorIs(t, err, ErrWrongKey)
}

func TestNoPlaintextAtRest(t *testing.T) {
	for _, tc := range formatsAndLayers() {
		td := newTestDiskFormat(t, tc.format, 8<<20, tc.layers, 0)
		pattern := randBytes(1 << 20)
		_, err := td.WriteAt(pattern, 1<<20)
		require.NoError(t, err)
		_, err = td.WriteAt(pattern[:100000], 3<<20+7) // unaligned too
		require.NoError(t, err)
		require.NoError(t, td.Disk.Close())
		hits, err := leakscan.Scan(td.dir, pattern, 16)
		require.NoError(t, err)
		require.Empty(t, hits, "plaintext found at rest")
	}
}

func TestDiscardAndSparse(t *testing.T) {
	for _, f := range formats {
		t.Run(fmt.Sprintf("v%d", f), func(t *testing.T) { testDiscardAndSparse(t, f) })
	}
}

func testDiscardAndSparse(t *testing.T, format int) {
	td := newTestDiskFormat(t, format, 1<<30, 1, 0)
	ctx := context.Background()
	used0, err := td.be.Usage(ctx, "")
	require.NoError(t, err)
	_, err = td.WriteAt(randBytes(1<<20), 512<<20)
	require.NoError(t, err)
	_, err = td.WriteAt(randBytes(4096), 1<<30-4096)
	require.NoError(t, err)
	require.NoError(t, td.Sync())
	used1, err := td.be.Usage(ctx, "")
	require.NoError(t, err)
	// 1 MiB + 4 KiB written to a 1 GiB disk: storage stays near that; in
	// version 3 near twice that (a block's first write reserves its other
	// slot), plus the two chunks' selector state and entries.
	if format >= formatV3 {
		want := 2*int64(1<<20+4096) + 2*td.lay.entriesEnd()
		require.GreaterOrEqual(t, used1-used0, want, "storage use %d: the other slots are not reserved", used1-used0)
		require.Less(t, used1-used0, want+64<<10, "storage use %d", used1-used0)
	} else {
		require.Less(t, used1-used0, int64(2<<20), "storage use %d", used1-used0)
	}

	require.NoError(t, td.Discard(512<<20, 1<<20))
	require.NoError(t, td.Sync())
	used2, err := td.be.Usage(ctx, "")
	require.NoError(t, err)
	require.Less(t, used2, used1-(512<<10), "discard gave back no space")
	got := make([]byte, 1<<20)
	_, err = td.ReadAt(got, 512<<20)
	require.NoError(t, err)
	require.True(t, zeros.Is(got))

	// Zero writes cost nothing.
	_, err = td.WriteAt(make([]byte, 4<<20), 100<<20)
	require.NoError(t, err)
	used3, err := td.be.Usage(ctx, "")
	require.NoError(t, err)
	require.Equal(t, used2, used3)
}

func TestSeekDataHole(t *testing.T) {
	td := newTestDisk(t, 64<<20, 1, 0)
	_, err := td.WriteAt(randBytes(8192), 10<<20)
	require.NoError(t, err)
	off, err := td.SeekData(0)
	require.NoError(t, err)
	require.EqualValues(t, 10<<20, off)
	off, err = td.SeekHole(10 << 20)
	require.NoError(t, err)
	require.EqualValues(t, 10<<20+8192, off)
	off, err = td.SeekHole(0)
	require.NoError(t, err)
	require.EqualValues(t, 0, off)
	off, err = td.SeekData(10<<20 + 100)
	require.NoError(t, err)
	require.EqualValues(t, 10<<20+100, off)
	_, err = td.SeekData(10<<20 + 8192)
	require.ErrorIs(t, err, syscall.ENXIO)
}

func TestResize(t *testing.T) {
	td := newTestDisk(t, 4<<20, 1, 0)
	p := randBytes(1 << 20)
	_, err := td.WriteAt(p, 3<<20)
	require.NoError(t, err)
	ctx := context.Background()
	require.Error(t, td.Resize(ctx, 2<<20), "shrinking must be refused")
	require.Error(t, td.Resize(ctx, 10<<20+1), "not a sector multiple")
	require.NoError(t, td.Resize(ctx, 10<<20))
	require.EqualValues(t, 10<<20, td.Size())
	_, err = td.WriteAt(p, 9<<20)
	require.NoError(t, err)
	td.reopen(t)
	require.EqualValues(t, 10<<20, td.Size())
	for _, off := range []int64{3 << 20, 9 << 20} {
		got := make([]byte, len(p))
		_, err = td.ReadAt(got, off)
		require.NoError(t, err)
		require.True(t, bytes.Equal(p, got))
	}
}

func TestCreateRefusesBadGeometry(t *testing.T) {
	dir := t.TempDir()
	be, err := local.Open(dir)
	require.NoError(t, err)
	ring := keyring{newKEK("k")}
	for _, c := range []struct {
		size   int64
		sector int
	}{{0, 512}, {1<<20 + 100, 512}, {1<<20 + 512, 4096}, {512 << 10, 512}, {1 << 20, 1024}} {
		_, err := Create(context.Background(), be, "x", CreateOptions{Size: c.size, SectorSize: c.sector, Layers: wrappers(ring)})
		require.Error(t, err, "%+v", c)
	}
	list, err := be.List(context.Background(), "")
	require.NoError(t, err)
	require.Empty(t, list, "a refused create left objects behind")
	_, err = Create(context.Background(), be, "x", CreateOptions{Size: 1 << 20, Layers: wrappers(ring)})
	require.NoError(t, err)
	_, err = Create(context.Background(), be, "x", CreateOptions{Size: 1 << 20, Layers: wrappers(ring)})
	require.Error(t, err, "duplicate")
}

func TestRewrap(t *testing.T) {
	ctx := context.Background()
	td := newTestDisk(t, 2<<20, 2, 0)
	p := randBytes(100000)
	_, err := td.WriteAt(p, 777)
	require.NoError(t, err)
	require.NoError(t, td.Disk.Close())

	k2 := newKEK("test/kek1/v2")
	both := append(keyring{k2}, td.ring...)
	w, err := Rewrap(ctx, td.be, td.name, 1, both, k2)
	require.NoError(t, err)
	require.Equal(t, k2.id, w.KeyID)
	m, err := ReadMetadata(ctx, td.be, td.name)
	require.NoError(t, err)
	require.Len(t, m.Layers[0].WrappedKeys, 1)
	require.Equal(t, k2.id, m.Layers[0].WrappedKeys[0].KeyID)

	// The old key alone no longer opens the disk; the new one does.
	_, err = Open(ctx, td.be, td.name, td.ring)
	require.Error(t, err)
	td.ring = keyring{k2, td.ring[1]}
	d, err := Open(ctx, td.be, td.name, td.ring)
	require.NoError(t, err)
	got := make([]byte, len(p))
	_, err = d.ReadAt(got, 777)
	require.NoError(t, err)
	require.True(t, bytes.Equal(p, got))
	require.NoError(t, d.Close())

	// A crash between the two metadata writes leaves both wraps, and either opens.
	k3 := newKEK("test/kek1/v3")
	fb := &failingMeta{Backend: td.be, failAfter: 1}
	_, err = Rewrap(ctx, fb, td.name, 1, td.ring, k3)
	require.ErrorIs(t, err, errInjected)
	m, err = ReadMetadata(ctx, td.be, td.name)
	require.NoError(t, err)
	require.Len(t, m.Layers[0].WrappedKeys, 2)
	for _, ring := range []keyring{{k3, td.ring[1]}, {k2, td.ring[1]}} {
		d, err := Open(ctx, td.be, td.name, ring)
		require.NoError(t, err)
		require.NoError(t, d.Close())
	}
}

func TestDestroy(t *testing.T) {
	ctx := context.Background()
	td := newTestDisk(t, 8<<20, 1, 0)
	_, err := td.WriteAt(randBytes(5<<20), 0)
	require.NoError(t, err)
	require.NoError(t, td.Disk.Close())
	m, err := ReadMetadata(ctx, td.be, td.name)
	require.NoError(t, err)
	wrapped := m.Layers[0].WrappedKeys[0].Value

	// Keys first: even if removing the chunks fails, the wrapped key is gone.
	fb := &failingDelete{Backend: td.be}
	require.Error(t, Destroy(ctx, fb, td.name))
	raw, err := td.be.ReadMeta(ctx, metaKey(td.name))
	require.NoError(t, err)
	require.False(t, bytes.Contains(raw, []byte(b64(wrapped))))
	_, err = Open(ctx, td.be, td.name, td.ring)
	require.ErrorIs(t, err, ErrNotFound)

	require.NoError(t, Destroy(ctx, td.be, td.name))
	left, err := td.be.List(ctx, td.name)
	require.NoError(t, err)
	require.Empty(t, left)
}

func TestCloseWipesAndRefuses(t *testing.T) {
	td := newTestDisk(t, 1<<20, 1, 0)
	require.NoError(t, td.Disk.Close())
	_, err := td.ReadAt(make([]byte, 10), 0)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, err, syscall.EIO)
	_, err = td.WriteAt(make([]byte, 10), 0)
	require.ErrorIs(t, err, ErrClosed)
}

func TestLease(t *testing.T) {
	td := newTestDisk(t, 1<<20, 1, 0)
	p := randBytes(4096)
	td.SetLease(time.Now().Add(time.Hour))
	_, err := td.WriteAt(p, 0)
	require.NoError(t, err)
	td.SetLease(time.Now().Add(-time.Second))
	_, err = td.ReadAt(make([]byte, 4096), 0)
	require.ErrorIs(t, err, ErrLeaseExpired)
	require.ErrorIs(t, err, syscall.EIO)
	_, err = td.WriteAt(p, 4096)
	require.ErrorIs(t, err, ErrLeaseExpired)
	require.ErrorIs(t, td.Discard(0, 4096), ErrLeaseExpired)
	td.SetLease(time.Time{})
	got := make([]byte, 4096)
	_, err = td.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, p, got)
}

// The lease runs on the monotonic clock: a step of the wall clock, forward
// or back, neither cuts it nor extends it.
func TestLeaseIgnoresWallClockSteps(t *testing.T) {
	td := newTestDisk(t, 1<<20, 1, 0)
	wall := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	mono := 5 * time.Second
	td.wall = func() time.Time { return wall }
	td.mono = func() time.Duration { return mono }
	read := func() error {
		_, err := td.ReadAt(make([]byte, 512), 0)
		return err
	}
	td.SetLease(wall.Add(time.Minute))
	wall = wall.Add(2 * time.Hour) // stepped forward: the lease is not cut
	require.NoError(t, read())
	mono += 59 * time.Second
	wall = wall.Add(-4 * time.Hour) // stepped back: the lease is not extended
	require.NoError(t, read())
	mono += 2 * time.Second
	require.ErrorIs(t, read(), ErrLeaseExpired)
	// A new lease counts from now, whatever the wall clock said before.
	td.SetLease(wall.Add(time.Minute))
	require.NoError(t, read())
	mono += 61 * time.Second
	require.ErrorIs(t, read(), ErrLeaseExpired)
	// A lease far in the future does not wrap around into the past.
	td.SetLease(wall.AddDate(5000, 0, 0))
	require.NoError(t, read())
}

// TestDoubleLayersSeparate: for a double-encrypted block, removing layer 2
// with the infrastructure key leaves bytes with no plaintext in them that
// layer 1 (the data key) then opens; the data key alone opens nothing.
func TestDoubleLayersSeparate(t *testing.T) {
	for _, f := range formats {
		t.Run(fmt.Sprintf("v%d", f), func(t *testing.T) { testDoubleLayersSeparate(t, f) })
	}
}

func testDoubleLayersSeparate(t *testing.T, format int) {
	td := newTestDiskFormat(t, format, 1<<20, 2, 8)
	plain := randBytes(BlockSize)
	_, err := td.WriteAt(plain, 3*BlockSize)
	require.NoError(t, err)
	require.NoError(t, td.Sync())
	raw, err := os.ReadFile(chunkFile(td, 0))
	require.NoError(t, err)
	slot := storedUnit(td.lay, raw, 0, 3)

	var ad [adLen]byte
	// The data key's layer cannot open the stored slot by itself.
	_, err = td.layers[0].Open(nil, slot, blockAD(&ad, &td.vol, 3, 1))
	require.ErrorIs(t, err, ErrIntegrity)
	// The infrastructure key removes layer 2 ...
	inner, err := td.layers[1].Open(nil, slot, blockAD(&ad, &td.vol, 3, 2))
	require.NoError(t, err)
	require.Len(t, inner, BlockSize+td.layers[0].Overhead())
	for i := 0; i+16 <= len(plain); i++ {
		require.False(t, bytes.Contains(inner, plain[i:i+16]), "plaintext under layer 1")
	}
	// ... and the data key opens what is left.
	got, err := td.layers[0].Open(nil, inner, blockAD(&ad, &td.vol, 3, 1))
	require.NoError(t, err)
	require.Equal(t, plain, got)
}

func TestCopyChunksResumes(t *testing.T) {
	src := newTestDisk(t, 4<<20, 1, 16) // 64 KiB chunks
	data := randBytes(1 << 20)
	_, err := src.WriteAt(data, 1<<20)
	require.NoError(t, err)
	_, err = src.WriteAt(data[:5000], 3<<20+100)
	require.NoError(t, err)
	dstRing := keyring{newKEK("a"), newKEK("b")}
	dst, err := Create(context.Background(), src.be, "disks/d2", CreateOptions{Size: 4 << 20, ChunkBlocks: 16, Layers: wrappers(dstRing)})
	require.NoError(t, err)
	defer dst.Close()
	// Stop after a few chunks, as a crash would, then resume.
	stopAt := int64(20)
	var next int64
	err = CopyChunks(context.Background(), src.Disk, dst, 0, func(n int64) error {
		next = n
		if n == stopAt {
			return errInjected
		}
		return nil
	})
	require.ErrorIs(t, err, errInjected)
	require.NoError(t, CopyChunks(context.Background(), src.Disk, dst, next, func(n int64) error { next = n; return nil }))
	require.Equal(t, src.ChunkCount(), next)
	want := make([]byte, 4<<20)
	got := make([]byte, 4<<20)
	_, err = src.ReadAt(want, 0)
	require.NoError(t, err)
	_, err = dst.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
	require.Equal(t, 2, dst.Layers())
}

// TestCrashKeepsSyncedVersion: what a Sync acknowledged survives a crash;
// a later write that was never synced may be lost, and never reads as
// damaged data.
func TestCrashKeepsSyncedVersion(t *testing.T) {
	for _, tc := range formatsAndLayers() {
		t.Run(fmt.Sprintf("v%d/layers=%d", tc.format, tc.layers), func(t *testing.T) {
			testCrashKeepsSyncedVersion(t, tc.format, tc.layers)
		})
	}
}

func testCrashKeepsSyncedVersion(t *testing.T, format, layers int) {
	td := newTestDiskFormat(t, format, 2<<20, layers, 0)
	// Two synced versions, so that the one that counts is in slot B, then
	// one that is never synced.
	_, err := td.WriteAt(randBytes(32<<10), 8192)
	require.NoError(t, err)
	require.NoError(t, td.Sync())
	synced := randBytes(32 << 10)
	_, err = td.WriteAt(synced, 8192)
	require.NoError(t, err)
	require.NoError(t, td.Sync())
	_, err = td.WriteAt(randBytes(32<<10), 8192)
	require.NoError(t, err)
	// The crash: the first instance just stops; nothing of it is flushed.
	close(td.Disk.stop)
	d2, err := Open(context.Background(), td.be, td.name, td.ring)
	require.NoError(t, err)
	defer d2.Close()
	got := make([]byte, len(synced))
	_, err = d2.ReadAt(got, 8192)
	require.NoError(t, err)
	require.Equal(t, synced, got)
	td.Disk.closeOnce.Do(func() {}) // the crashed instance is never closed
}

// TestV2WritesWholePages: from format 2 on every write the data path sends
// to the backend is whole, aligned pages; only Sync writes anything smaller
// (the entries and selectors).
func TestV2WritesWholePages(t *testing.T) {
	for _, fl := range formatsAndLayers()[2:] {
		format, layers := fl.format, fl.layers
		dir := t.TempDir()
		lb, err := local.Open(dir)
		require.NoError(t, err)
		hb := &hookBackend{Backend: lb}
		ring := keyring{newKEK("k/1"), newKEK("k/2")}[:layers]
		d, err := Create(context.Background(), hb, "d", CreateOptions{Size: 8 << 20, Layers: wrappers(ring), Format: format})
		require.NoError(t, err)
		// The first write creates the chunk (and its header).
		_, err = d.WriteAt(randBytes(4096), 0)
		require.NoError(t, err)
		var bad []string
		hb.onWrite = func(p []byte, off int64) (bool, int, error) {
			if off%BlockSize != 0 || len(p)%BlockSize != 0 {
				bad = append(bad, fmt.Sprintf("%d bytes at %d", len(p), off))
			}
			return false, 0, nil
		}
		r := mrand.New(mrand.NewPCG(1, 2))
		for i := 0; i < 200; i++ {
			off := r.Int64N(8<<20/512-16) * 512
			_, err := d.WriteAt(randBytes(512*(1+r.IntN(16))), off)
			require.NoError(t, err)
		}
		_, err = d.WriteAt(randBytes(1<<20), 3<<20)
		require.NoError(t, err)
		require.Empty(t, bad, "layers=%d: unaligned writes on the data path", layers)
		hb.onWrite = nil
		require.NoError(t, d.Close())
	}
}

// TestObjectBytes: a chunk object never extends past ObjectBytes, and reaches
// it once slot B of its last block is written; a snapshot copies that far.
func TestObjectBytes(t *testing.T) {
	for _, tc := range formatsAndLayers() {
		td := newTestDiskFormat(t, tc.format, 1<<20, tc.layers, 16)
		last := int64(15 * BlockSize)
		for range 2 { // slot A, then slot B
			_, err := td.WriteAt(randBytes(BlockSize), last)
			require.NoError(t, err)
			require.NoError(t, td.Sync())
		}
		fi, err := os.Stat(chunkFile(td, 0))
		require.NoError(t, err)
		require.Equal(t, td.ObjectBytes(), fi.Size(), "format %d layers=%d", tc.format, tc.layers)
	}
}

// TestBlankChunk: a chunk object whose header is all zeros was made by a
// creation that never wrote its header (the process was killed between the
// two, or the header never reached the disk before a power loss). It holds
// no persisted block: it reads as zeros without an alarm, and the next write
// takes it over, whatever its selector table held.
func TestBlankChunk(t *testing.T) {
	const cb = 16
	for _, tc := range formatsAndLayers() {
		t.Run(fmt.Sprintf("v%d/layers=%d", tc.format, tc.layers), func(t *testing.T) {
			td := newTestDiskFormat(t, tc.format, 2<<20, tc.layers, cb)
			ctx := context.Background()
			blank := func(idx int64, selectors []byte) {
				obj, err := td.be.OpenChunk(ctx, chunkKey(td.name, idx), true)
				require.NoError(t, err)
				if selectors != nil {
					_, err = obj.WriteAt(selectors, td.lay.selOffset(0))
					require.NoError(t, err)
				}
				require.NoError(t, obj.Sync())
				require.NoError(t, obj.Close())
			}
			// Chunk 3: an empty object. Chunk 5: a zero header over a
			// selector table of garbage (blank up to version 2; from
			// version 3 on, a chunk is blank only if nothing at all is
			// in it: see TestZeroedChunkIsNotBlank).
			blank(3, nil)
			garbage := bytes.Repeat([]byte{0xa7}, cb)
			blank(5, garbage)
			td.reopen(t)
			if tc.format >= formatV3 {
				requireIntegrity(t, td, 5*cb*BlockSize, nil)
				require.NoError(t, os.Remove(chunkFile(td, 5)))
				blank(5, nil)
				td.reopen(t)
			}

			for _, idx := range []int64{3, 5} {
				got := make([]byte, cb*BlockSize)
				_, err := td.ReadAt(got, idx*cb*BlockSize)
				require.NoError(t, err)
				require.True(t, zeros.Is(got), "chunk %d", idx)
			}
			require.Zero(t, td.Stats().IntegrityErrors)

			data := randBytes(BlockSize)
			for _, idx := range []int64{3, 5} {
				_, err := td.WriteAt(data, (idx*cb+2)*BlockSize)
				require.NoError(t, err)
			}
			require.NoError(t, td.Sync())
			td.reopen(t)
			for _, idx := range []int64{3, 5} {
				got := make([]byte, cb*BlockSize)
				_, err := td.ReadAt(got, idx*cb*BlockSize)
				require.NoError(t, err, "chunk %d", idx)
				require.Equal(t, data, got[2*BlockSize:3*BlockSize])
				clear(got[2*BlockSize : 3*BlockSize])
				require.True(t, zeros.Is(got), "chunk %d: a block never written reads as zeros", idx)
			}
			require.Zero(t, td.Stats().IntegrityErrors)

			// A header that is damaged, not blank, is still an integrity error.
			patch(t, chunkFile(td, 3), 0, func(b []byte) { clear(b[:headerSize]); b[100] = 1 })
			td.reopen(t)
			requireIntegrity(t, td, (3*cb+2)*BlockSize, data)
		})
	}
}
