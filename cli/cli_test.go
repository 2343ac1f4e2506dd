package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
)

func runCLI(t *testing.T, env map[string]string, args ...string) (string, string, error) {
	var out, errb bytes.Buffer
	err := run(context.Background(), args, Env{Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }})
	return out.String(), errb.String(), err
}

func TestArgumentErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{}, "no command"},
		{[]string{"nosuch"}, "unknown command group"},
		{[]string{"key"}, "needs a verb"},
		{[]string{"key", "fly"}, "unknown verb"},
		{[]string{"key", "show", "--vault-name", "v", "--name", "k", "stray"}, "unexpected argument \"stray\""},
		{[]string{"key", "list-versions", "--vault-name", "v"}, "--name is required"},
		{[]string{"key", "show", "--vault-name", "v"}, "--vault-name and --name, or with --id"},
		{[]string{"key", "show", "--id", "https://h:1/vaults/v/secrets/s"}, "not a key id"},
		{[]string{"key", "show", "--id", "https://h:1/vaults/v/keys/k", "--name", "k"}, "not both"},
		{[]string{"key", "set-attributes", "--vault-name", "v", "--name", "k", "--enabled", "yes"}, "want true or false"},
		{[]string{"key", "set-attributes", "--vault-name", "v", "--name", "k"}, "nothing to change"},
		{[]string{"key", "create", "--vault-name", "v", "--name", "k", "--expires", "soon"}, "not a time"},
		{[]string{"keyvault", "set-policy", "--name", "v", "--object-id", "o", "--key-permissions", "get,,wrapKey"}, "empty item"},
		{[]string{"-o", "yaml", "keyvault", "list"}, "--output"},
		{[]string{"keyvault", "list", "-o", "xml"}, "--output"},
		{[]string{"keyvault", "list"}, "no key store given"},
	}
	for _, c := range cases {
		_, _, err := runCLI(t, nil, c.args...)
		require.Error(t, err, "%v", c.args)
		assert.Contains(t, err.Error(), c.want, "%v", c.args)
	}
}

func TestBoolValueForms(t *testing.T) {
	for _, args := range [][]string{{"--enabled", "false"}, {"--enabled=false"}} {
		c := &Context{Command: "t", Stderr: &bytes.Buffer{}, Output: "table"}
		f := newFlags(c)
		b := f.boolValue("enabled", "")
		require.NoError(t, f.parse(args))
		require.NotNil(t, b.ptr())
		assert.False(t, *b.ptr())
	}
}

func TestEndpointResolution(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config")
	require.NoError(t, os.WriteFile(cfg, []byte("# comment\nexport HOSTCRYPT_KEYSTORE=https://file:1\nHOSTCRYPT_TOKEN_FILE=\"/file/token\"\n"), 0o600))
	env := map[string]string{"HOSTCRYPT_CONFIG": cfg, "HOSTCRYPT_KEYSTORE_CA": "/env/ca.pem", "HOSTCRYPT_TOKEN_FILE": "/env/token"}
	c := &Context{getenv: func(k string) string { return env[k] }, tokenFile: "/flag/token"}
	require.NoError(t, c.resolveEndpoints())
	assert.Equal(t, "https://file:1", c.keystoreURL)
	assert.Equal(t, "/env/ca.pem", c.keystoreCA)
	assert.Equal(t, "/flag/token", c.tokenFile)
}

func TestUnknownFlagPointsToHelp(t *testing.T) {
	_, _, err := runCLI(t, nil, "--frob")
	require.ErrorContains(t, err, "unknown flag: --frob (see hostcrypt --help)")
	_, _, err = runCLI(t, nil, "disk", "create", "--frob")
	require.ErrorContains(t, err, "disk create: unknown flag: --frob (see hostcrypt disk create --help)")
}

// Help is output the user asked for: it goes to stdout at every level, so
// that it can be paged or searched.
func TestHelpGoesToStdout(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"disk", "--help"}, {"disk", "create", "--help"}} {
		out, stderr, err := runCLI(t, nil, args...)
		if err != nil {
			require.ErrorIs(t, err, pflag.ErrHelp, "%v", args)
		}
		assert.Contains(t, out, "disk create", "%v", args)
		assert.Empty(t, stderr, "%v", args)
	}
	out, _, _ := runCLI(t, nil, "disk", "create", "--help")
	assert.Contains(t, out, "--size")
	out, _, _ = runCLI(t, nil, "--help")
	assert.Contains(t, out, "hostcrypt --version", "the top-level help names --version")
}

func TestShowVMKeyWarning(t *testing.T) {
	vm := &api.VM{Name: "v1", PowerState: api.PowerRunning}
	vm.SecurityProfile.EncryptionAtHost = true
	var out, stderr bytes.Buffer
	c := &Context{Stdout: &out, Stderr: &stderr, Output: "table"}
	require.NoError(t, c.showVM(vm))
	assert.Empty(t, stderr.String(), "no warning while the key store answers")

	vm.KeyWarning = "key store unreachable at 2026-01-01T00:00:00Z (connection refused); I/O continues until the data key lease ends"
	out.Reset()
	require.NoError(t, c.showVM(vm))
	assert.Equal(t, "WARNING: VM \"v1\": "+vm.KeyWarning+"\n", stderr.String())
	assert.Contains(t, out.String(), "v1")
}
