package fs

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/cache"
	"hostcrypt/disk"
	"hostcrypt/storage"
	"hostcrypt/storage/local"
)

// benchJobs are the jobs of the project's fio comparison suite, so the
// numbers here can be set beside the engine's and the peers'.
var benchJobs = []struct {
	name string
	args []string
}{
	{"seq-write-1M", []string{"--rw=write", "--bs=1M", "--ioengine=psync"}},
	{"seq-read-1M", []string{"--rw=read", "--bs=1M", "--ioengine=psync"}},
	{"rand-write-4k", []string{"--rw=randwrite", "--bs=4k", "--ioengine=libaio", "--iodepth=32"}},
	{"rand-read-4k", []string{"--rw=randread", "--bs=4k", "--ioengine=libaio", "--iodepth=32"}},
	{"rand-rw-4k", []string{"--rw=randrw", "--rwmixread=70", "--bs=4k", "--ioengine=libaio", "--iodepth=16", "--numjobs=2", "--group_reporting"}},
}

// BenchmarkFio measures the FUSE layer: fio (direct I/O, in a subprocess)
// against an image served by a tree in this process. It reports MiB/s, IOPS
// and the CPU this process spent per I/O. Each job runs for
// HOSTCRYPT_BENCH_RUNTIME (default 5s); HOSTCRYPT_BENCH_MAXBG sets
// Options.MaxBackground and HOSTCRYPT_BENCH_LATENCY (a duration) adds that
// much to every ReadAt and WriteAt, like an engine waiting on storage: the
// setting where the queue depth the kernel allows shows.
//
// HOSTCRYPT_BENCH_IMAGE chooses what serves the I/O, so that the tree's
// share and the engine's can be told apart on the same mount:
//
//   - null (the default): reads zeros and drops writes, the FUSE layer alone;
//   - file: one plain file, like an unencrypted passthrough behind the tree;
//   - disk: the disk engine, one layer, on local storage, with
//     HOSTCRYPT_BENCH_FLUSH (a duration; default 5s, hostcryptd's) as its
//     background flush interval, and HOSTCRYPT_BENCH_CACHE (None, ReadOnly
//     or ReadWrite; default none at all) a host cache between the engine
//     and the store with hostcryptd's defaults, as under a disk with
//     encryption at host.
//
// file and disk live in HOSTCRYPT_BENCH_DIR (default a temporary directory),
// are written in full before the first job, and, as root, have the page
// cache dropped before each job, as the fio harness does.
//
//	go test -run '^$' -bench Fio -benchtime 1x ./fs/
//	HOSTCRYPT_BENCH_IMAGE=disk HOSTCRYPT_BENCH_DIR=/var/tmp go test -run '^$' -bench 'Fio/rand' -benchtime 1x ./fs/
func BenchmarkFio(b *testing.B) {
	requireTool(b, "fio")
	runtime := os.Getenv("HOSTCRYPT_BENCH_RUNTIME")
	if runtime == "" {
		runtime = "5s"
	}
	var opts Options
	if v := os.Getenv("HOSTCRYPT_BENCH_MAXBG"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatalf("HOSTCRYPT_BENCH_MAXBG: %v", err)
		}
		opts.MaxBackground = n
	}
	tree := mountTree(b, opts)
	img := benchImage(b, 1<<30)
	if v := os.Getenv("HOSTCRYPT_BENCH_LATENCY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("HOSTCRYPT_BENCH_LATENCY: %v", err)
		}
		img = &slowImage{Image: img, delay: d}
	}
	if err := tree.AddImage("vm", "data-0.img", img); err != nil {
		b.Fatal(err)
	}
	path := imgPath(tree, "vm", "data-0.img")
	for _, job := range benchJobs {
		b.Run(job.name, func(b *testing.B) {
			dropCaches(b, img)
			args := append([]string{"--name=" + job.name, "--filename=" + path, "--size=1G",
				"--direct=1", "--time_based", "--runtime=" + runtime}, job.args...)
			cpu0 := cpuTime()
			start := time.Now()
			var res fioJob
			for range b.N {
				res = fioRun(b, args...)
			}
			elapsed := time.Since(start)
			cpu := cpuTime() - cpu0
			total := fioDir{BW: res.Read.BW + res.Write.BW, IOPS: res.Read.IOPS + res.Write.IOPS}
			b.ReportMetric(total.BW/mib, "MiB/s")
			b.ReportMetric(total.IOPS, "IOPS")
			if ops := total.IOPS * elapsed.Seconds(); ops > 0 {
				b.ReportMetric(float64(cpu.Microseconds())/ops, "cpu-us/io")
			}
			b.Logf("%s: read %v, write %v", job.name, res.Read, res.Write)
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(fmt.Sprint("getrusage: ", err))
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// slowImage delays every read and write of the image it wraps.
type slowImage struct {
	Image
	delay time.Duration
}

func (s *slowImage) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(s.delay)
	return s.Image.ReadAt(p, off)
}

func (s *slowImage) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(s.delay)
	return s.Image.WriteAt(p, off)
}

// benchImage returns the image HOSTCRYPT_BENCH_IMAGE names, written in full
// unless it is the null image.
func benchImage(b *testing.B, size int64) Image {
	dir := os.Getenv("HOSTCRYPT_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	} else {
		d, err := os.MkdirTemp(dir, "fs-bench-")
		require.NoError(b, err)
		b.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	var img Image
	switch kind := os.Getenv("HOSTCRYPT_BENCH_IMAGE"); kind {
	case "", "null":
		return &nullImage{size: size}
	case "file":
		f, err := os.OpenFile(filepath.Join(dir, "image"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		require.NoError(b, err)
		b.Cleanup(func() { f.Close() })
		img = &fileImage{File: f, size: size}
	case "disk":
		var be storage.Backend
		be, err := local.Open(dir)
		require.NoError(b, err)
		if mode := os.Getenv("HOSTCRYPT_BENCH_CACHE"); mode != "" {
			m, err := cache.ParseMode(mode)
			require.NoError(b, err, "HOSTCRYPT_BENCH_CACHE")
			// 256 MiB: hostcryptd's default --cache-size.
			c, err := cache.New(context.Background(), be, cache.Options{Mode: m, Dir: filepath.Join(dir, "cache"), MaxBytes: 256 << 20})
			require.NoError(b, err)
			b.Cleanup(func() { c.Close() })
			be = c
		}
		d, err := disk.Create(context.Background(), be, "bench", disk.CreateOptions{
			Size: size, Layers: []disk.KeyWrapper{plainWrapper{}}})
		require.NoError(b, err)
		b.Cleanup(func() { d.Close() })
		if v := os.Getenv("HOSTCRYPT_BENCH_FLUSH"); v != "" {
			every, err := time.ParseDuration(v)
			require.NoError(b, err, "HOSTCRYPT_BENCH_FLUSH")
			d.SetFlushInterval(every)
		}
		img = d
	default:
		b.Fatalf("HOSTCRYPT_BENCH_IMAGE=%q: want null, file or disk", kind)
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		rand.Read(buf)
		_, err := img.WriteAt(buf, off)
		require.NoError(b, err)
	}
	require.NoError(b, img.Sync())
	return img
}

// dropCaches syncs img and, as root, empties the page cache, so that each
// job starts cold like the harness's.
func dropCaches(b *testing.B, img Image) {
	require.NoError(b, img.Sync())
	if os.Geteuid() == 0 {
		require.NoError(b, os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0))
	}
}

// fileImage serves an image from one plain file, as an unencrypted
// passthrough would.
type fileImage struct {
	*os.File
	size int64
}

func (f *fileImage) Discard(off, n int64) error { return nil }
func (f *fileImage) Sync() error                { return f.File.Sync() }
func (f *fileImage) Size() int64                { return f.size }

// plainWrapper "wraps" a data key by copying it, in the clear, into the
// metadata of a disk that lives in a temporary directory for one benchmark
// and is never reopened. Never a pattern for a disk that is kept.
type plainWrapper struct{}

func (plainWrapper) WrapKey(_ context.Context, dek []byte) (disk.WrappedKey, error) {
	return disk.WrappedKey{KeyID: "bench", Algorithm: "none", Value: append([]byte(nil), dek...)}, nil
}
