package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
		{[]string{"key", "show", "--vault-name", "v"}, "--name is required"},
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
