package integration

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/hostd"
	"hostcrypt/internal/soak"
	"hostcrypt/internal/testenv"
	"hostcrypt/storage"
	"hostcrypt/storage/fault"
)

// The reliability suite: `make soak ROUNDS=100` runs it long, `make test`
// runs it short (the flag's default). Each round disrupts a running host
// while fdatasync'd writers (internal/soak) and fio write its disks, then
// checks every block the writers wrote: every write fdatasync acknowledged
// is there, and every block holds its old or its new content, never a mix
// and never an I/O error.
//
// Two hosts share one keystored:
//   - host A runs the real hostcryptd binary (the host harness, newHost)
//     with a platform-key disk (no host cache) and a customer-key disk
//     (ReadWrite host cache); its rounds kill -9 hostcryptd, kill -9
//     keystored, or stop keystored (SIGSTOP) for seconds while the writers
//     go on under the leased data keys;
//   - host B runs hostd.Run in this process over the fault-injecting
//     storage decorator (storage/fault, through Config.WrapStorage); its
//     rounds fill the storage (ENOSPC) or make its calls fail or stall,
//     then restart the daemon, which reopens the disks a failed sync fenced.
//
// The keystored of both is the keystore harness's (startKeystored, ksProc),
// killed and started again on the same port.
var (
	soakRounds = flag.Int("soak.rounds", 5, "rounds of TestSoak, each disrupting a host once")
	soakSeed   = flag.Uint64("soak.seed", 0, "seed of TestSoak's choices (0: from the clock; printed)")
)

// soakHelperEnv makes the test binary, started again by TestSoak, a writer
// or a reader (soak.Main): I/O on a mount must not come from the process
// that serves it (host B).
const soakHelperEnv = "HOSTCRYPT_SOAK_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(soakHelperEnv) != "" {
		os.Exit(soak.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	// The binaries are built with -race, whose runtime sleeps a second at
	// every exit so that goroutines still running get a last chance to
	// report a race; every CLI call here would pay it. The daemons' races
	// show while they serve, and a CLI call has nothing running at exit.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	os.Exit(m.Run())
}

type soakKind int

const (
	killHostcryptd soakKind = iota
	storageFull
	killKeystored
	storageErrors
	pauseKeystored
	soakKinds
)

func (k soakKind) String() string {
	return [...]string{"kill -9 hostcryptd", "storage full", "kill -9 keystored", "storage errors", "keystored stopped"}[k]
}

// soakWriter is one writer's image, region and model, across rounds; a
// new writer process runs in each round that uses it.
type soakWriter struct {
	name      string
	id        uint32
	img       string
	model     *soak.Model
	direct    bool
	keepGoing bool
	dir       string

	cmd     *exec.Cmd
	logPath string
	out     *testenv.Buffer
	exited  chan struct{}
}

func (w *soakWriter) start(round int, seed uint64) error {
	w.logPath = filepath.Join(w.dir, fmt.Sprintf("writer%d-round%d.log", w.id, round))
	args := []string{"write", "-path", w.img, "-writer", strconv.Itoa(int(w.id)),
		"-first", strconv.FormatInt(w.model.First, 10), "-blocks", strconv.FormatInt(w.model.Blocks, 10),
		"-seq", strconv.FormatUint(w.model.NextSeq(), 10), "-seed", strconv.FormatUint(seed, 10),
		"-batch", "8", "-log", w.logPath}
	if w.direct {
		args = append(args, "-direct")
	}
	if w.keepGoing {
		args = append(args, "-keep-going")
	}
	w.out = &testenv.Buffer{}
	w.cmd = exec.Command(os.Args[0], args...)
	w.cmd.Env = append(os.Environ(), soakHelperEnv+"=1")
	w.cmd.Stdout, w.cmd.Stderr = w.out, w.out
	if err := w.cmd.Start(); err != nil {
		return err
	}
	w.exited = make(chan struct{})
	go func() { w.cmd.Wait(); close(w.exited) }()
	return nil
}

// acked counts the batches this round's process has had acknowledged.
func (w *soakWriter) acked() int {
	raw, _ := os.ReadFile(w.logPath)
	n := 0
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "A ") {
			n++
		}
	}
	return n
}

// stop asks the writer to finish its batch and exit; one that does not
// within d is killed, and stop says so.
func (w *soakWriter) stop(sig syscall.Signal, d time.Duration) error {
	w.cmd.Process.Signal(sig)
	select {
	case <-w.exited:
		return nil
	case <-time.After(d):
		w.cmd.Process.Kill()
		<-w.exited
		return fmt.Errorf("writer %s did not exit within %v of %v: its I/O hung (killed)", w.name, d, sig)
	}
}

// collect adds this round's log to the model.
func (w *soakWriter) collect() (soak.LogStats, error) {
	f, err := os.Open(w.logPath)
	if err != nil {
		return soak.LogStats{}, err
	}
	defer f.Close()
	return w.model.Apply(f)
}

// verify reads the writer's region back from another process and checks
// every block against the model.
func (w *soakWriter) verify() (soak.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "read", "-path", w.img,
		"-first", strconv.FormatInt(w.model.First, 10), "-blocks", strconv.FormatInt(w.model.Blocks, 10))
	cmd.Env = append(os.Environ(), soakHelperEnv+"=1")
	stderr := &testenv.Buffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return soak.Result{}, err
	}
	if err := cmd.Start(); err != nil {
		return soak.Result{}, err
	}
	res, cerr := w.model.CheckStream(stdout)
	if cerr != nil {
		cmd.Process.Kill()
	}
	werr := cmd.Wait()
	if cerr != nil || werr != nil {
		return res, fmt.Errorf("reading back %s (%s): %v %v %s", w.name, w.img, cerr, werr, stderr.String())
	}
	return res, nil
}

// soakFio is one fio job with verification, as load and as a second
// checker of what it writes.
type soakFio struct {
	cmd    *exec.Cmd
	out    *testenv.Buffer
	exited chan struct{}
}

func startSoakFio(img string, seed uint32) (*soakFio, error) {
	f := &soakFio{out: &testenv.Buffer{}, exited: make(chan struct{})}
	f.cmd = exec.Command("fio", "--name=soak", "--filename="+img, "--direct=1", "--ioengine=libaio", "--iodepth=4",
		"--rw=randwrite", "--bs=4k", "--size=32M", "--verify=crc32c", "--verify_backlog=256", "--verify_fatal=1",
		"--verify_state_save=0", "--time_based", "--runtime=600", "--rate_iops=200",
		"--randseed="+strconv.FormatUint(uint64(seed), 10))
	f.cmd.Stdout, f.cmd.Stderr = f.out, f.out
	if err := f.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { f.cmd.Wait(); close(f.exited) }()
	return f, nil
}

// fioVerifyFailure matches what fio prints when data it reads back is not
// what it wrote.
var fioVerifyFailure = regexp.MustCompile(`(?i)verify failed|bad magic|bad header|verify: bad|crc32c: verify`)

// fioIssued is fio's count of the I/Os it issued: reads, writes, ...
var fioIssued = regexp.MustCompile(`issued rwts: total=(\d+),(\d+),`)

// stop interrupts fio (it exits on SIGINT, reporting as usual) and tells
// how many blocks it wrote, whether it saw an I/O error and whether it
// read back data it had not written.
func (f *soakFio) stop() (writes int, ioErr, badData bool) {
	f.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-f.exited:
	case <-time.After(60 * time.Second):
		f.cmd.Process.Kill()
		<-f.exited
		return 0, true, false
	}
	out := f.out.String()
	if m := fioIssued.FindStringSubmatch(out); m != nil {
		writes, _ = strconv.Atoi(m[2])
	}
	return writes, !strings.Contains(out, "err= 0"), fioVerifyFailure.MatchString(out)
}

// vmListMeter calls `hostcrypt vm list` every 200 ms and keeps the longest
// call and any failure.
type vmListMeter struct {
	h       *host
	stopped chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	calls   int
	longest time.Duration
	failure string
}

func meterVMList(h *host) *vmListMeter {
	m := &vmListMeter{h: h, stopped: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		for {
			start := time.Now()
			out, errOut, code := h.run("vm", "list")
			d := time.Since(start)
			m.mu.Lock()
			m.calls++
			m.longest = max(m.longest, d)
			if code != 0 && m.failure == "" {
				m.failure = fmt.Sprintf("vm list failed (status %d): %s%s", code, out, errOut)
			}
			m.mu.Unlock()
			select {
			case <-m.stopped:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return m
}

func (m *vmListMeter) stop() (calls int, longest time.Duration, failure string) {
	close(m.stopped)
	<-m.done
	return m.calls, m.longest, m.failure
}

// inprocHost is host B: hostd.Run in this process over storage/fault.
type inprocHost struct {
	t    *testing.T
	cfg  hostd.Config
	seed uint64
	cli  *host // the CLI against its socket; its start and stop are not used
	// logs holds what every run logged, the engine's lines too (it logs
	// to slog's default logger, which TestSoak points here).
	logs   *testenv.Buffer
	fb     *fault.Backend
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func (p *inprocHost) start() {
	p.t.Helper()
	p.cfg.Log = slog.New(slog.NewTextHandler(p.logs, nil)).With("run", p.seed)
	var fb *fault.Backend
	p.cfg.WrapStorage = func(b storage.Backend) storage.Backend {
		p.seed++
		fb = fault.New(b, p.seed)
		return fb
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	p.done, p.cancel, p.err = make(chan struct{}), cancel, nil
	go func() {
		defer close(p.done)
		p.err = hostd.Run(ctx, p.cfg, func() { close(ready) })
	}()
	select {
	case <-ready:
	case <-p.done:
		p.t.Fatalf("hostcryptd (in-process) did not start: %v\n%s", p.err, p.logs.String())
	case <-time.After(60 * time.Second):
		p.t.Fatalf("hostcryptd (in-process) not ready after 60s:\n%s", p.logs.String())
	}
	p.fb = fb
}

// stop ends the daemon cleanly and returns Run's error: a disk that a
// failed sync fenced cannot be flushed, and says so.
func (p *inprocHost) stop() error {
	if p.cancel == nil {
		return nil
	}
	p.cancel()
	p.cancel = nil
	select {
	case <-p.done:
		return p.err
	case <-time.After(2 * time.Minute):
		p.t.Fatalf("hostcryptd (in-process) did not stop within 2 minutes:\n%s", tail(p.logs.String(), 40))
		return nil
	}
}

// soakTotals are the figures the suite prints.
type soakTotals struct {
	rounds             int
	perKind            [soakKinds]int
	lost, torn, rdErrs int
	integrity          int
	writeFailures      int // writes that failed (or were cut off) and were not acknowledged
	fioRuns, fioBad    int
	fenced             int // rounds after which a disk reported itself fenced
	rotations          int // new key versions the customer-key disk was re-wrapped to
	vmListCalls        int
	vmListLongest      time.Duration
	vmListWhere        string
}

type soakRun struct {
	t      *testing.T
	rnd    *rand.Rand
	ksBin  string
	ksDir  string
	ksAddr string
	kp     *ksProc
	ksLogs []string // output of the keystored processes killed so far
	a      *host
	aLogs  []string // logs of the hostcryptd processes killed so far
	b      *inprocHost
	wa, wb []*soakWriter
	// latestKid is the newest version of host A's customer key.
	latestKid string
	tot       soakTotals
	start     time.Time
}

// TestSoak is the reliability suite; see the comment at the top of the file.
func TestSoak(t *testing.T) {
	if *soakRounds <= 0 {
		t.Skip("-soak.rounds=0")
	}
	requireFUSE(t)
	// A binary built with -race sleeps a second when it exits, to let
	// late reports through: each `vm list` would then take a second more
	// than it does.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	seed := *soakSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("soak: %d rounds, -soak.seed=%d", *soakRounds, seed)
	s := &soakRun{t: t, rnd: rand.New(rand.NewPCG(seed, 0x50a6)), start: time.Now()}
	defer s.report()
	s.setUp()
	for r := 1; r <= *soakRounds; r++ {
		kind := soakKind((r - 1) % int(soakKinds))
		s.round(r, kind)
	}
	require.NoError(t, s.b.stop(), "host B's clean stop after the last round")
}

func (s *soakRun) setUp() {
	t := s.t
	s.ksBin = filepath.Join(bins(t), "keystored")
	s.ksDir = filepath.Join(t.TempDir(), "ks")
	s.kp = startKeystored(t, s.ksBin, s.ksDir)
	// Later starts listen on the same address: the hosts keep their URL.
	s.ksAddr = strings.TrimPrefix(s.kp.url, "https://")
	ks := &ksProc{t: t, dir: s.ksDir, url: s.kp.url}

	// Host A. The key check runs every second, so that it meets the key
	// store stopped or gone; the lease outlasts any outage of a round.
	// The disk encryption set follows new key versions: each kill -9
	// round makes one, so that the kill can meet a re-wrap.
	a := newHost(t, ks, "--key-check-interval", "1s", "--dek-lease", "5m", "--rotation-interval", "2s")
	s.a = a
	a.ok("keyvault", "create", "--name", "soakvault")
	var key struct {
		Key struct {
			Kid string `json:"kid"`
		} `json:"key"`
	}
	a.json(&key, "key", "create", "--vault-name", "soakvault", "--name", "k1", "--size", "2048")
	var des struct {
		Identity struct {
			PrincipalID string `json:"principalId"`
		} `json:"identity"`
	}
	s.latestKid = key.Key.Kid
	out, errOut, code := a.run("-o", "json", "des", "create", "--name", "des1", "--key-url", key.Key.Kid, "--enable-auto-key-rotation", "true")
	require.Equal(t, 0, code, errOut)
	require.NoError(t, json.Unmarshal([]byte(out), &des))
	a.ok("keyvault", "set-policy", "--name", "soakvault", "--object-id", des.Identity.PrincipalID, "--key-permissions", "get,wrapKey,unwrapKey")
	a.ok("disk", "create", "--name", "pmk", "--size", "64M")
	a.ok("disk", "create", "--name", "cmk", "--size", "64M", "--disk-encryption-set", "des1")
	a.ok("vm", "create", "--name", "soak", "--os-disk-size", "64M", "--data-disks", "pmk,cmk:ReadWrite")

	// Host B. The engine logs to slog's default logger: in this process
	// that must be host B's log, where its integrity alarms are counted.
	root := t.TempDir()
	s.b = &inprocHost{t: t, seed: s.rnd.Uint64(), logs: &testenv.Buffer{}, cfg: hostd.Config{
		StateDir: filepath.Join(root, "state"), StorageDir: filepath.Join(root, "storage"),
		HostDir: filepath.Join(root, "host"), MountDir: filepath.Join(root, "mnt"),
		KeystoreURL: s.kp.url, KeystoreCA: filepath.Join(s.ksDir, "ca.pem"), TokenFile: filepath.Join(s.ksDir, "platform.token"),
	}}
	defaultLog := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(s.b.logs, nil)))
	t.Cleanup(func() { slog.SetDefault(defaultLog) })
	s.b.cli = &host{t: t, ks: ks, state: s.b.cfg.StateDir, storage: s.b.cfg.StorageDir, hostDir: s.b.cfg.HostDir, mount: s.b.cfg.MountDir}
	s.b.start()
	t.Cleanup(func() { s.b.stop() })
	s.b.cli.ok("disk", "create", "--name", "d1", "--size", "128M")
	s.b.cli.ok("vm", "create", "--name", "faulty", "--os-disk-size", "64M", "--data-disks", "d1")

	logs := t.TempDir()
	s.wa = []*soakWriter{
		{name: "A pmk (O_DIRECT)", id: 1, img: a.img("soak", "data-0.img"), model: soak.NewModel(1, 0, 8192), direct: true, dir: logs},
		{name: "A cmk ReadWrite-cached (buffered)", id: 2, img: a.img("soak", "data-1.img"), model: soak.NewModel(2, 0, 8192), dir: logs},
	}
	s.wb = []*soakWriter{
		{name: "B d1 (O_DIRECT)", id: 3, img: filepath.Join(s.b.cfg.MountDir, "faulty", "data-0.img"), model: soak.NewModel(3, 0, 32768), direct: true, keepGoing: true, dir: logs},
	}
}

// between sleeps a random time in [lo, hi).
func (s *soakRun) between(lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(s.rnd.Int64N(int64(hi-lo))))
}

// failf ends the run with the evidence: the round, what went wrong, and
// the tails of the daemons' logs.
func (s *soakRun) failf(round int, kind soakKind, format string, args ...any) {
	s.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "soak round %d (%v): %s\n", round, kind, fmt.Sprintf(format, args...))
	if len(s.aLogs) > 0 {
		fmt.Fprintf(&b, "--- host A, hostcryptd killed last:\n%s\n", tail(s.aLogs[len(s.aLogs)-1], 30))
	}
	if s.a.logs != nil {
		fmt.Fprintf(&b, "--- host A, hostcryptd now:\n%s\n", tail(s.a.logs.String(), 30))
	}
	fmt.Fprintf(&b, "--- host B, hostcryptd (in-process):\n%s\n", tail(s.b.logs.String(), 30))
	fmt.Fprintf(&b, "--- keystored:\n%s\n", tail(s.kp.output.String(), 15))
	s.t.Fatal(b.String())
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// daemonTrouble finds what must never be in a daemon's output.
var daemonTrouble = regexp.MustCompile(`(?m)^panic:|^fatal error:|WARNING: DATA RACE|http: panic serving`)

func (s *soakRun) checkLogs(round int, kind soakKind) {
	s.t.Helper()
	check := func(who, text string) {
		if loc := daemonTrouble.FindStringIndex(text); loc != nil {
			s.failf(round, kind, "%s: %q in its output:\n%s", who, text[loc[0]:loc[1]], tail(text[loc[0]:], 60))
		}
	}
	for _, l := range s.aLogs {
		check("hostcryptd (host A, killed)", l)
	}
	check("hostcryptd (host A)", s.a.logs.String())
	for _, l := range s.ksLogs {
		check("keystored (killed)", l)
	}
	check("keystored", s.kp.output.String())
	check("hostcryptd (host B)", s.b.logs.String())
	select {
	case <-s.a.exited:
		s.failf(round, kind, "hostcryptd (host A) exited by itself: %v", s.a.cmd.ProcessState)
	case <-s.kp.exited:
		s.failf(round, kind, "keystored exited by itself: %v", s.kp.cmd.ProcessState)
	default:
	}
}

// unreachableWarning is what hostcryptd logs when a key check cannot reach
// the key store and keeps the leased keys.
const unreachableWarning = "key store unreachable; keeping the leased data keys"

// integrityAlarms counts the engine's alarms (a block that failed
// authentication) in every log of both hosts so far.
func (s *soakRun) integrityAlarms() int {
	logs := append(append([]string(nil), s.aLogs...), s.a.logs.String(), s.b.logs.String())
	n := 0
	for _, l := range logs {
		n += strings.Count(l, "integrity alarm")
	}
	return n
}

func (s *soakRun) round(r int, kind soakKind) {
	t := s.t
	t.Helper()
	began := time.Now()
	s.tot.rounds++
	s.tot.perKind[kind]++
	onA := kind == killHostcryptd || kind == killKeystored || kind == pauseKeystored
	h, writers, fioImg := s.a, s.wa, s.a.img("soak", "os.img")
	if !onA {
		h, writers, fioImg = s.b.cli, s.wb, filepath.Join(s.b.cfg.MountDir, "faulty", "os.img")
	}
	fio, err := startSoakFio(fioImg, s.rnd.Uint32())
	require.NoError(t, err)
	s.tot.fioRuns++
	for _, w := range writers {
		require.NoError(t, w.start(r, s.rnd.Uint64()))
	}
	if kind == killHostcryptd {
		// A new key version: within the rotation interval hostcryptd
		// re-wraps the customer-key disk to it, while the writers write,
		// perhaps when the kill comes.
		var kb struct {
			Key struct {
				Kid string `json:"kid"`
			} `json:"key"`
		}
		s.a.json(&kb, "key", "rotate", "--vault-name", "soakvault", "--name", "k1")
		s.latestKid = kb.Key.Kid
		s.tot.rotations++
	}
	meter := meterVMList(h)
	var meterCalls int
	var meterLongest time.Duration
	var meterFailure string
	stopMeter := func() {
		if meter != nil {
			meterCalls, meterLongest, meterFailure = meter.stop()
			meter = nil
		}
	}
	defer stopMeter()

	// Let every writer get going: a writer that makes no progress at all
	// is an outage of its own.
	s.between(time.Second, 2500*time.Millisecond)
	deadline := time.Now().Add(60 * time.Second)
	for _, w := range writers {
		for w.acked() == 0 {
			if time.Now().After(deadline) {
				s.failf(r, kind, "writer %s had no write acknowledged within 60s: %s", w.name, w.out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// The disruption.
	expectErrors := false // writers and fio may fail: the host went down, or its storage
	var notes []string
	switch kind {
	case killHostcryptd:
		expectErrors = true
		stopMeter()
		s.aLogs = append(s.aLogs, "")
		s.a.stop(syscall.SIGKILL)
		s.aLogs[len(s.aLogs)-1] = s.a.logs.String()
		// The writers' next call fails (the connection to the mount is
		// aborted): they exit by themselves.
		for _, w := range writers {
			if err := w.stop(syscall.Signal(0), 30*time.Second); err != nil {
				s.failf(r, kind, "%v", err)
			}
		}
		fio.stop()  // it exits by itself too, having failed
		s.a.start() // cleans the dead mount, brings the VM back
	case killKeystored, pauseKeystored:
		warned := strings.Count(s.a.logs.String(), unreachableWarning)
		if kind == killKeystored {
			s.ksLogs = append(s.ksLogs, s.kp.output.String())
			s.kp.kill()
			s.between(2*time.Second, 4*time.Second)
			s.kp = startKeystored(t, s.ksBin, s.ksDir, "--listen", s.ksAddr)
		} else {
			// Longer than the key check's 10 s timeout: a check hangs on
			// the stopped key store, then gives up.
			require.NoError(t, s.kp.cmd.Process.Signal(syscall.SIGSTOP))
			s.between(11*time.Second, 13*time.Second)
			require.NoError(t, s.kp.cmd.Process.Signal(syscall.SIGCONT))
		}
		s.between(time.Second, 2*time.Second)
		// The outage was seen: the key check found the key store
		// unreachable and kept the leased keys. A stopped key store
		// holds a check until its 10 s timeout, and longer when the check
		// waits behind the control lock that a key store call holds (the
		// rotation's does): the figure of vm list shows that; here it is
		// only noted.
		if strings.Count(s.a.logs.String(), unreachableWarning) == warned {
			if kind == killKeystored {
				s.failf(r, kind, "hostcryptd's key check never found the key store unreachable while it was down")
			}
			notes = append(notes, "no key check ended while the key store was stopped")
		}
	case storageFull:
		expectErrors = true
		if s.tot.perKind[storageFull]%2 == 0 {
			// As a file system that allocates at write-back (ext4's
			// delayed allocation) says so: at fsync.
			s.b.fb.Arm(fault.Rule{Ops: fault.Sync, Err: syscall.ENOSPC, Probability: 0.2})
			notes = append(notes, "and sync ENOSPC")
		}
		s.b.fb.SetFull(true)
		s.between(2*time.Second, 3*time.Second)
		s.b.fb.SetFull(false)
		s.b.fb.DisarmAll()
		s.between(time.Second, 2*time.Second)
	case storageErrors:
		expectErrors = true
		notes = append(notes, s.armStorageFaults(s.tot.perKind[storageErrors]))
		s.between(2*time.Second, 3*time.Second)
		s.b.fb.DisarmAll()
		s.between(time.Second, 2*time.Second)
	}

	// The writers stop (those of a killed host have already), and what
	// each acknowledged goes into its model.
	for _, w := range writers {
		if err := w.stop(syscall.SIGTERM, 60*time.Second); err != nil {
			s.failf(r, kind, "%v", err)
		}
	}
	fioWrites, ioErr, badData := fio.stop()
	stopMeter()
	if meterFailure != "" {
		s.failf(r, kind, "%s", meterFailure)
	}
	s.tot.vmListCalls += meterCalls
	if meterLongest > s.tot.vmListLongest {
		s.tot.vmListLongest, s.tot.vmListWhere = meterLongest, fmt.Sprintf("round %d, %v", r, kind)
	}
	if fioWrites == 0 {
		s.failf(r, kind, "fio wrote nothing:\n%s", tail(fio.out.String(), 40))
	}
	if badData {
		s.tot.fioBad++
		s.failf(r, kind, "fio read back data it did not write:\n%s", tail(fio.out.String(), 40))
	}
	if ioErr && !expectErrors {
		s.failf(r, kind, "fio saw an I/O error while only the key store was down or stopped:\n%s", tail(fio.out.String(), 40))
	}
	acked, unacked := 0, 0
	for _, w := range writers {
		st, err := w.collect()
		if err != nil {
			s.failf(r, kind, "writer %s: %v", w.name, err)
		}
		acked += st.Acked
		unacked += st.Unacked
		s.tot.writeFailures += st.Unacked
		if len(st.Failures) > 0 && !expectErrors {
			s.failf(r, kind, "writer %s: %d writes failed while only the key store was down or stopped (I/O must go on under the leased keys); first: %s",
				w.name, len(st.Failures), st.Failures[0])
		}
	}

	// Host B's daemon restarts: a disk fenced by a failed sync is opened
	// again and reads back what storage holds.
	if !onA {
		var d struct {
			diskJSON
			Fenced string `json:"fenced"`
		}
		s.b.cli.json(&d, "disk", "show", "--name", "d1")
		if d.IntegrityErrors != 0 {
			s.failf(r, kind, "disk d1 counts %d integrity errors", d.IntegrityErrors)
		}
		if d.Fenced != "" {
			s.tot.fenced++
			notes = append(notes, "d1 fenced")
		}
		if err := s.b.stop(); err != nil {
			notes = append(notes, "clean stop failed: "+firstLine(err.Error()))
		}
		s.b.start()
	}

	// Every block of every writer.
	for _, w := range writers {
		res, err := w.verify()
		if err != nil {
			s.failf(r, kind, "%v", err)
		}
		s.tot.lost += res.Lost
		s.tot.torn += res.Torn
		s.tot.rdErrs += res.ReadErrors
		if !res.OK() {
			var b strings.Builder
			fmt.Fprintf(&b, "writer %s, image %s: %d blocks checked, %d lost acknowledged writes, %d neither old nor new, %d read errors:",
				w.name, w.img, res.Blocks, res.Lost, res.Torn, res.ReadErrors)
			for _, f := range res.Findings {
				fmt.Fprintf(&b, "\n  %v", f)
			}
			s.failf(r, kind, "%s", b.String())
		}
	}
	// The host's own count of blocks that failed authentication, and its VM.
	for _, disk := range map[bool][]string{true: {"pmk", "cmk"}, false: {"d1"}}[onA] {
		var d diskJSON
		h.json(&d, "disk", "show", "--name", disk)
		if d.IntegrityErrors != 0 {
			s.failf(r, kind, "disk %s counts %d integrity errors", disk, d.IntegrityErrors)
		}
	}
	if onA {
		s.waitRotated(r, kind)
	}
	var vm vmJSON
	h.json(&vm, "vm", "show", "--name", map[bool]string{true: "soak", false: "faulty"}[onA])
	if vm.PowerState != "running" {
		s.failf(r, kind, "VM %s is %s after the round, not running", vm.Name, vm.PowerState)
	}
	s.checkLogs(r, kind)
	if n := s.integrityAlarms(); n > s.tot.integrity {
		s.tot.integrity = n
		s.failf(r, kind, "%d integrity alarms in the daemons' logs: a block failed authentication", n)
	}
	t.Logf("round %3d %-19v %5d writes acknowledged, %4d not; vm list longest %v; %v %s",
		r, kind, acked, unacked, meterLongest.Round(time.Millisecond), time.Since(began).Round(100*time.Millisecond), strings.Join(notes, "; "))
}

// waitRotated waits until host A's disk encryption set and its disk are
// on the newest key version, with no re-wrap left: a kill -9 in the middle
// of one must leave it to be finished, not lost or stuck.
func (s *soakRun) waitRotated(round int, kind soakKind) {
	s.t.Helper()
	var des struct {
		ActiveKey struct {
			KeyURL string `json:"keyUrl"`
		} `json:"activeKey"`
		PreviousKeys         []any  `json:"previousKeys"`
		AutoKeyRotationError string `json:"autoKeyRotationError"`
	}
	var d diskJSON
	deadline := time.Now().Add(90 * time.Second)
	for {
		s.a.json(&des, "des", "show", "--name", "des1")
		s.a.json(&d, "disk", "show", "--name", "cmk")
		if des.ActiveKey.KeyURL == s.latestKid && len(des.PreviousKeys) == 0 && d.KeyID == s.latestKid {
			return
		}
		if time.Now().After(deadline) {
			s.failf(round, kind, "the customer-key disk did not reach key version %s within 90s: the set is on %s with %d previous keys (error %q), the disk on %s",
				s.latestKid, des.ActiveKey.KeyURL, len(des.PreviousKeys), des.AutoKeyRotationError, d.KeyID)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// armStorageFaults arms one of three kinds of storage trouble on host B,
// in turn: failed syncs, failed writes and reads, or a slow device. It
// returns what it armed.
func (s *soakRun) armStorageFaults(n int) string {
	fb := s.b.fb
	switch n % 3 {
	case 1:
		fb.Arm(fault.Rule{Ops: fault.Sync, Err: syscall.EIO, Probability: 0.3})
		return "sync EIO"
	case 2:
		fb.Arm(fault.Rule{Ops: fault.WriteAt, Err: syscall.EIO, Probability: 0.05})
		fb.Arm(fault.Rule{Ops: fault.ReadAt, Err: syscall.EIO, Probability: 0.05})
		return "write and read EIO"
	default:
		fb.Arm(fault.Rule{Ops: fault.Sync | fault.WriteAt | fault.ReadAt, Delay: 150 * time.Millisecond, Probability: 0.2})
		return "slow device"
	}
}

// firstLine shortens a message to its first line, at most 100 bytes.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	if len(line) > 100 {
		line = line[:100] + "..."
	}
	return line
}

func (s *soakRun) report() {
	t, tot := s.t, s.tot
	var acked int64
	for _, w := range append(append([]*soakWriter(nil), s.wa...), s.wb...) {
		acked += w.model.Acked
	}
	var kinds []string
	for k := range soakKinds {
		kinds = append(kinds, fmt.Sprintf("%v %d", k, tot.perKind[k]))
	}
	t.Logf("soak: %d rounds in %v (%s)", tot.rounds, time.Since(s.start).Round(time.Second), strings.Join(kinds, ", "))
	t.Logf("soak: writes acknowledged by fdatasync %d; lost %d; blocks neither old nor new %d; read errors %d; integrity errors %d",
		acked, tot.lost, tot.torn, tot.rdErrs, tot.integrity)
	t.Logf("soak: writes failed or cut off (never acknowledged) %d; rounds ending with a fenced disk %d; key versions re-wrapped to %d; fio runs %d, with wrong data %d",
		tot.writeFailures, tot.fenced, tot.rotations, tot.fioRuns, tot.fioBad)
	t.Logf("soak: vm list called %d times, longest %v (%s)", tot.vmListCalls, tot.vmListLongest.Round(time.Millisecond), tot.vmListWhere)
}
