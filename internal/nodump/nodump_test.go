package nodump_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"hostcrypt/internal/nodump"
	"hostcrypt/internal/nodump/dumptest"
)

// TestProtectLeavesNoCore crashes two copies of this test binary with
// SIGABRT under GOTRACEBACK=crash: the unprotected one dumps core, the one
// that called Protect does not.
func TestProtectLeavesNoCore(t *testing.T) {
	dumptest.Helper(nodump.Protect)
	dir := dumptest.Prepare(t)
	ctl := dumptest.Control(t, t.TempDir(), "TestProtectLeavesNoCore")
	dumptest.RequireControlDumped(t, ctl)

	got := dumptest.Protected(t, dir, "TestProtectLeavesNoCore")
	require.False(t, got.Dumped, "the kernel dumped the protected process's core")
	require.Empty(t, got.Files)
}
