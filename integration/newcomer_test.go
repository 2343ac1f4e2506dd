package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// hintRE finds a command a message suggests: hostcrypt (optional) GROUP
// VERB [VERB] and its flags with their values (a list value has commas),
// up to a closing parenthesis, a semicolon, a comma and a space, or the end.
var hintRE = regexp.MustCompile("(?:hostcrypt )?((?:vm|disk|des|keyvault|key|snapshot|image)(?: [a-z-]+){1,2}(?: --[a-z-]+ [^ ;)`]*[^ ,;)`])+)")

// runHint runs the command a message suggests, which must exist and work.
func (h *host) runHint(t *testing.T, msg string) string {
	t.Helper()
	m := hintRE.FindStringSubmatch(msg)
	require.NotNil(t, m, "the message suggests a command: %s", msg)
	return h.ok(strings.Fields(m[1])...)
}

// refused runs the CLI, expects a refusal and returns its message.
func (h *host) refused(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := h.run(args...)
	require.NotEqual(t, 0, code, "hostcrypt %s should fail:\n%s", strings.Join(args, " "), out)
	return errOut
}

// TestNewcomerHintsWork follows every hint a newcomer meets on the way to a
// customer-key disk and back by running it: a disk encryption set whose
// identity has no access yet, an export over an existing file, deleting what
// is in use.
func TestNewcomerHintsWork(t *testing.T) {
	h := newHost(t, startKeystore(t), "--rotation-interval", "1s")
	h.ok("keyvault", "create", "--name", "vault1")
	var key struct {
		Key struct {
			Kid string `json:"kid"`
		} `json:"key"`
	}
	h.json(&key, "key", "create", "--vault-name", "vault1", "--name", "k1")
	out, errOut, code := h.run("des", "create", "--name", "des1", "--key-url", key.Key.Kid)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, errOut, "WARNING: disk encryption set des1: ")
	require.Regexp(t, `(?m)^des1 .*  no$`, out, "KEY-ACCESS says no, the reason is in the warning")

	// Before the grant: a 403-class refusal with one short message and one fix.
	msg := h.refused(t, "disk", "create", "--name", "cmk1", "--size", "16M", "--disk-encryption-set", "des1")
	require.Contains(t, msg, "KeyVaultAccessForbidden: ")
	require.NotContains(t, msg, "InternalError")
	require.Equal(t, 1, strings.Count(msg, "set-policy"), "one fix: %s", msg)
	require.Less(t, len(msg), 300, "one short message: %s", msg)
	show := h.refusedOrShow(t, "des", "show", "--name", "des1")
	require.Equal(t, 1, strings.Count(show, "set-policy"), show)
	h.runHint(t, msg)
	out, errOut, code = h.run("des", "show", "--name", "des1")
	require.Equal(t, 0, code, errOut)
	require.NotContains(t, errOut, "WARNING")
	require.Regexp(t, `(?m)^des1 .*  ok$`, out)
	h.ok("disk", "create", "--name", "cmk1", "--size", "16M", "--disk-encryption-set", "des1")

	// Auto-rotation says when it looks next and what it found.
	out = h.ok("des", "update", "--name", "des1", "--enable-auto-key-rotation", "true")
	require.Regexp(t, `auto-rotation: next look for a new key version \d{4}-\d\d-\d\dT`, out)
	waitFor(t, 20*time.Second, "a look for a new key version", func() bool {
		return strings.Contains(h.ok("des", "show", "--name", "des1"), "auto-rotation: last looked at")
	})
	require.Contains(t, h.ok("des", "show", "--name", "des1"), "found "+key.Key.Kid+" (the active version)")
	var newKey struct {
		Key struct {
			Kid string `json:"kid"`
		} `json:"key"`
	}
	h.json(&newKey, "key", "create", "--vault-name", "vault1", "--name", "k1")
	waitFor(t, 20*time.Second, "the new version to be found", func() bool {
		return strings.Contains(h.ok("des", "show", "--name", "des1"), "found "+newKey.Key.Kid+" (the active version)")
	})

	// An export over an existing file: the hint's --force true works.
	h.ok("vm", "create", "--name", "vm1", "--os-disk-size", "8M", "--data-disks", "cmk1")
	target := filepath.Join(t.TempDir(), "cmk1.raw")
	msg = h.refused(t, "disk", "export", "--name", "cmk1", "--target", target)
	require.Contains(t, msg, "which is running", "stop the VM first")
	h.runHint(t, msg)
	require.NoError(t, os.WriteFile(target, []byte("old"), 0o600))
	msg = h.refused(t, "disk", "export", "--name", "cmk1", "--target", target)
	require.Contains(t, msg, "pass --force true")
	out = h.ok("disk", "export", "--name", "cmk1", "--target", target, "--force", "true")
	require.Contains(t, out, "wrote the plaintext of disk cmk1 to "+target)
	st, err := os.Stat(target)
	require.NoError(t, err)
	require.EqualValues(t, 16<<20, st.Size())

	// A key disabled under a running VM stops it; the reason says how to
	// enable the key again.
	h.ok("vm", "start", "--name", "vm1")
	h.ok("key", "set-attributes", "--vault-name", "vault1", "--name", "k1", "--enabled", "false")
	var vm vmState
	waitFor(t, 60*time.Second, "vm1 to stop for its disabled key", func() bool {
		h.json(&vm, "vm", "show", "--name", "vm1")
		return vm.PowerState == "stopped"
	})
	require.Contains(t, vm.Reason, "--enabled true")
	h.runHint(t, vm.Reason)
	h.ok("vm", "start", "--name", "vm1")

	// Using what is in use: each refusal's hint frees it.
	msg = h.refused(t, "image", "create", "--name", "img1", "--source", "cmk1")
	h.runHint(t, msg) // a snapshot, named as the hint names it
	h.ok("image", "create", "--name", "img1", "--source", "S")
	msg = h.refused(t, "disk", "delete", "--name", "cmk1")
	require.Contains(t, msg, "detach it first")
	h.runHint(t, msg)
	msg = h.refused(t, "vm", "update", "--name", "vm1", "--encryption-at-host", "false")
	h.runHint(t, msg)
	h.ok("vm", "update", "--name", "vm1", "--encryption-at-host", "false")
	h.ok("vm", "start", "--name", "vm1")
	msg = h.refused(t, "vm", "delete", "--name", "vm1")
	h.runHint(t, msg)
	out = h.ok("vm", "delete", "--name", "vm1")
	require.Contains(t, out, "deleted VM vm1; its disks stay, unattached: vm1_OsDisk (")
	out = h.ok("disk", "delete", "--name", "cmk1")
	require.Contains(t, out, "deleted disk cmk1")
}

// refusedOrShow runs a command that succeeds but warns, and returns both.
func (h *host) refusedOrShow(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := h.run(args...)
	require.Equal(t, 0, code, errOut)
	return out + errOut
}

// TestNewcomerOutput checks the lists and reports a newcomer reads first:
// the event table, the encryption report's locations, and that a VM without
// encryption at host leaves no cache directory behind once deleted.
func TestNewcomerOutput(t *testing.T) {
	h := newHost(t, startKeystore(t))
	h.ok("keyvault", "create", "--name", "vault1")
	h.ok("key", "create", "--vault-name", "vault1", "--name", "k1")
	h.ok("keyvault", "set-policy", "--name", "vault1", "--object-id", "00000000-0000-0000-0000-000000000001", "--key-permissions", "get")

	out := h.ok("events", "--follow", "false", "--vault-name", "vault1")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	require.GreaterOrEqual(t, len(lines), 3, out)
	col := strings.Index(lines[0], "KEY")
	require.Positive(t, col)
	var policy, created string
	for _, l := range lines[1:] {
		switch {
		case strings.Contains(l, "VaultAccessPolicyChanged"):
			policy = l
		case strings.Contains(l, "KeyNewVersionCreated"):
			created = l
		}
	}
	require.NotEmpty(t, policy, out)
	require.NotEmpty(t, created, out)
	require.Equal(t, "-", strings.Fields(policy[col:])[0], "a vault event names no key:\n%s", out)
	require.Equal(t, "k1", strings.Fields(created[col:])[0], "columns line up:\n%s", out)

	h.ok("disk", "create", "--name", "d1", "--size", "16M")
	h.ok("vm", "create", "--name", "plain", "--os-disk-size", "8M", "--data-disks", "d1:ReadWrite", "--temp-disk-size", "8M", "--encryption-at-host", "false")
	h.ok("disk", "create", "--name", "d2", "--size", "16M")
	h.ok("vm", "create", "--name", "sealed", "--os-disk-size", "8M", "--data-disks", "d2", "--temp-disk-size", "8M")
	for _, vm := range []string{"plain", "sealed"} {
		var rep struct {
			Entries []struct {
				Layer, Location, Caching string
			} `json:"entries"`
		}
		h.json(&rep, "vm", "encryption-report", "--name", vm)
		for _, e := range rep.Entries {
			if e.Caching == "None" {
				require.Empty(t, e.Location, "%s %s: no host cache, no location", vm, e.Layer)
				continue
			}
			require.Regexp(t, `^(storage|host): [a-z-]+/[^/]+$`, e.Location, "%s %s: side: key under that side's root", vm, e.Layer)
		}
	}

	cacheDir := filepath.Join(h.hostDir, "cache")
	ents, err := os.ReadDir(cacheDir)
	require.NoError(t, err)
	require.NotEmpty(t, ents, "the running VMs' caches are there")
	h.ok("vm", "stop", "--name", "plain")
	h.ok("vm", "stop", "--name", "sealed")
	h.ok("vm", "delete", "--name", "plain")
	h.ok("vm", "delete", "--name", "sealed")
	ents, err = os.ReadDir(cacheDir)
	require.NoError(t, err)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	require.Empty(t, left, "no cache directory is left behind")
}
