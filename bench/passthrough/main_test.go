package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		tuned   bool
		wantErr bool
	}{
		{name: "tuned by default", args: []string{"--backing", "b", "--mount", "m"}, tuned: true},
		{name: "stock", args: []string{"--backing", "b", "--mount", "m", "--options", "stock"}},
		{name: "hostcrypt", args: []string{"--backing", "b", "--mount", "m", "--options", "hostcrypt"}, tuned: true},
		{name: "unknown options", args: []string{"--backing", "b", "--mount", "m", "--options", "fast"}, wantErr: true},
		{name: "no mount", args: []string{"--backing", "b"}, wantErr: true},
		{name: "stray argument", args: []string{"--backing", "b", "--mount", "m", "x"}, wantErr: true},
		{name: "negative sync interval", args: []string{"--backing", "b", "--mount", "m", "--sync-interval", "-1s"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags(tt.args)
			if tt.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.tuned, cfg.tuned)
			assert.Equal(t, tt.name == "hostcrypt", cfg.hostcrypt)
		})
	}
	o := mountOptions(true)
	withHostcryptOptions(o)
	assert.Contains(t, o.MountOptions.Options, "default_permissions")
	require.NotNil(t, o.NegativeTimeout)
	assert.Equal(t, *o.EntryTimeout, *o.NegativeTimeout)
}

// TestMountedBinary runs the real binary as the harness does and checks the
// three things the reference is for: every read and write reaches the daemon
// (no kernel passthrough), opens get parallel direct I/O, and SIGTERM leaves
// no mount behind.
func TestMountedBinary(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the binary with")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "passthrough")
	build := exec.Command(goCmd, "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)

	backing, mnt, ready := filepath.Join(dir, "backing"), filepath.Join(dir, "mnt"), filepath.Join(dir, "ready")
	require.NoError(t, os.Mkdir(backing, 0o755))
	require.NoError(t, os.Mkdir(mnt, 0o755))
	var log bytes.Buffer
	cmd := exec.Command(bin, "--backing", backing, "--mount", mnt, "--ready-file", ready, "--debug")
	cmd.Stdout, cmd.Stderr = &log, &log
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if mounted(t, mnt) {
			_ = exec.Command("fusermount3", "-u", "-z", mnt).Run()
		}
		_ = cmd.Process.Kill()
	})
	require.Eventually(t, func() bool { _, err := os.Stat(ready); return err == nil },
		10*time.Second, 20*time.Millisecond, "never ready: %s", &log)

	// One aligned direct write and read of 64 KiB, as fio does.
	data := alignedBuffer(64 << 10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	path := filepath.Join(mnt, "img")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_DIRECT, 0o644)
	require.NoError(t, err)
	_, err = f.WriteAt(data, 0)
	require.NoError(t, err)
	got := alignedBuffer(len(data))
	_, err = f.ReadAt(got, 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	assert.Equal(t, data, got)
	onDisk, err := os.ReadFile(filepath.Join(backing, "img"))
	require.NoError(t, err)
	assert.Equal(t, data, onDisk)

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait())
	assert.False(t, mounted(t, mnt), "still mounted after SIGTERM")

	trace := log.String()
	assert.Contains(t, trace, "ready")
	assert.Regexp(t, `rx \d+: WRITE `, trace, "the write did not reach the daemon")
	assert.Regexp(t, `rx \d+: READ `, trace, "the read did not reach the daemon")
	assert.Contains(t, trace, "DIRECT,PARALLEL_DIRECT_WRITES", "open did not ask for parallel direct I/O")
	assert.NotRegexp(t, `(?m)tx \d+: .*\{Fh \d+ [^}]*PASSTHROUGH`, trace, "an open used kernel passthrough")
	assert.NotContains(t, trace, "GETXATTR i", "GETXATTR was forwarded")
}

// alignedBuffer returns n bytes aligned for O_DIRECT.
func alignedBuffer(n int) []byte {
	const align = 4096
	b := make([]byte, n+align)
	off := align - int(uintptr(unsafe.Pointer(&b[0]))%align)
	return b[off%align : off%align+n]
}

func mounted(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	return false
}

// With a sync interval, every open file is fdatasynced that often, and a
// released file no longer is.
func TestSyncEvery(t *testing.T) {
	fd, err := syscall.Open(filepath.Join(t.TempDir(), "f"), syscall.O_RDWR|syscall.O_CREAT, 0o600)
	require.NoError(t, err)
	open := &openFiles{files: map[*file]struct{}{}}
	f := &file{LoopbackFile: fs.NewLoopbackFile(fd).(*fs.LoopbackFile), open: open}
	open.files[f] = struct{}{}
	_, errno := f.Write(t.Context(), []byte("written"), 0)
	require.Zero(t, errno)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { open.syncEvery(5*time.Millisecond, stop); close(done) }()
	require.Eventually(t, func() bool { return open.syncs.Load() >= 2 }, 10*time.Second, 5*time.Millisecond)
	require.Zero(t, f.Release(t.Context()))
	close(stop)
	<-done
	require.Empty(t, open.files)
	n := open.syncs.Load()
	require.NoError(t, f.datasync())
	require.Equal(t, n, open.syncs.Load(), "a released file is not synced")
}
