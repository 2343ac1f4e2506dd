package fs

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
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

// BenchmarkFio measures the FUSE layer alone: fio (direct I/O, in a
// subprocess) against an image that reads zeros and drops writes. It reports
// MiB/s, IOPS and the CPU this process spent per I/O. Each job runs for
// HOSTCRYPT_BENCH_RUNTIME (default 5s); HOSTCRYPT_BENCH_MAXBG sets
// Options.MaxBackground and HOSTCRYPT_BENCH_LATENCY (a duration) adds that
// much to every ReadAt and WriteAt, like an engine waiting on storage: the
// setting where the queue depth the kernel allows shows.
//
//	go test -run '^$' -bench Fio -benchtime 1x ./fs/
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
	var img Image = &nullImage{size: 1 << 30}
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
