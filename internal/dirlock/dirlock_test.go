package dirlock

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSecondLockerInProcessIsRefused(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir)
	require.NoError(t, err)
	_, err = Acquire(dir)
	require.ErrorIs(t, err, ErrLocked)
	require.Contains(t, err.Error(), dir)
	require.Contains(t, err.Error(), fmt.Sprintf("pid %d", os.Getpid()))

	require.NoError(t, l.Release())
	l2, err := Acquire(dir)
	require.NoError(t, err, "a released lock can be taken again")
	require.NoError(t, l2.Release())
}

// TestHolderInAnotherProcess: the lock holds across processes, the refusal
// names the holder, and the holder's death (kill -9) frees the directory.
func TestHolderInAnotherProcess(t *testing.T) {
	if os.Getenv("DIRLOCK_HOLD") != "" {
		hold(os.Getenv("DIRLOCK_HOLD"))
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHolderInAnotherProcess$")
	cmd.Env = append(os.Environ(), "DIRLOCK_HOLD="+dir)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "locked\n", line)

	_, err = Acquire(dir)
	require.ErrorIs(t, err, ErrLocked)
	require.Contains(t, err.Error(), dir)
	require.Contains(t, err.Error(), "pid "+strconv.Itoa(cmd.Process.Pid))
	require.Contains(t, err.Error(), filepath.Base(os.Args[0])[:min(len(filepath.Base(os.Args[0])), 15)], "the holder's program")

	require.NoError(t, cmd.Process.Kill())
	cmd.Wait()
	l, err := Acquire(dir)
	require.NoError(t, err, "a killed holder frees the directory")
	require.NoError(t, l.Release())
}

func hold(dir string) {
	if _, err := Acquire(dir); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("locked")
	select {}
}

func TestLinkAtLockFileIsRefused(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	target := filepath.Join(outside, "target")
	require.NoError(t, os.Symlink(target, filepath.Join(dir, FileName)))
	_, err := Acquire(dir)
	require.Error(t, err)
	_, err = os.Lstat(target)
	require.True(t, os.IsNotExist(err), "nothing is created through the link")
}
