// Package cli implements the hostcrypt command line: global options, a
// small registry of GROUP VERB commands, and shared flag and output
// helpers. Each command group lives in its own file and is listed once in
// groups below; groups that talk to hostcryptd over its unix socket are
// added the same way.
package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"

	"github.com/spf13/pflag"

	"hostcrypt/control/api"
	"hostcrypt/keystore/client"
)

// Command is one GROUP VERB of the CLI.
type Command struct {
	Group, Verb string
	Short       string
	Run         func(c *Context, args []string) error
}

// groups lists every command group; a new group is one file and one line here.
var groups = []func() []Command{keyvaultCommands, keyCommands, eventsCommands, identityCommands, diskCommands, diskTransferCommands, vmCommands, desCommands, snapshotCommands, imageCommands, hostCommands}

// Env is what a run of the CLI sees of its process.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

// Context is handed to every command: endpoints, output format, writers.
type Context struct {
	Ctx     context.Context
	Stdout  io.Writer
	Stderr  io.Writer
	Output  string // table or json
	Command string // "group verb", for flag-set names and messages

	keystoreURL, keystoreCA, tokenFile, hostSocket string
	getenv                                         func(string) string
	resolved                                       bool
	ks                                             *client.Client
	hc                                             *api.Client
}

// globalFlags adds the options every command accepts, before or after
// GROUP VERB, as the Azure CLI does.
func (c *Context) globalFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.keystoreURL, "keystore", c.keystoreURL, "key store URL, e.g. https://127.0.0.1:8443 (env HOSTCRYPT_KEYSTORE)")
	fs.StringVar(&c.keystoreCA, "keystore-ca", c.keystoreCA, "CA certificate of the key store (env HOSTCRYPT_KEYSTORE_CA)")
	fs.StringVar(&c.tokenFile, "token-file", c.tokenFile, "file holding the bearer token (env HOSTCRYPT_TOKEN_FILE)")
	fs.StringVar(&c.hostSocket, "host-socket", c.hostSocket, "hostcryptd socket (env HOSTCRYPT_SOCKET)")
	fs.StringVarP(&c.Output, "output", "o", c.Output, "output format: table or json")
}

func (c *Context) checkOutput() error {
	if c.Output != "table" && c.Output != "json" {
		return fmt.Errorf("--output %q is not valid; use table or json", c.Output)
	}
	return nil
}

// Keystore returns a client of the key store the options name.
func (c *Context) Keystore() (*client.Client, error) {
	if c.ks != nil {
		return c.ks, nil
	}
	if err := c.resolveEndpoints(); err != nil {
		return nil, err
	}
	if c.keystoreURL == "" {
		return nil, errors.New("no key store given: pass --keystore URL, or set HOSTCRYPT_KEYSTORE (keystored writes it to DIR/address)")
	}
	if c.tokenFile == "" {
		return nil, errors.New("no token given: pass --token-file FILE, or set HOSTCRYPT_TOKEN_FILE (e.g. DIR/admin.token)")
	}
	ks, err := client.New(c.keystoreURL, c.keystoreCA, c.tokenFile)
	if err != nil {
		return nil, err
	}
	c.ks = ks
	return ks, nil
}

// HostSocket is hostcryptd's socket, for groups that talk to it.
func (c *Context) HostSocket() (string, error) {
	if err := c.resolveEndpoints(); err != nil {
		return "", err
	}
	if c.hostSocket == "" {
		return "", errors.New("no hostcryptd socket given: pass --host-socket PATH, or set HOSTCRYPT_SOCKET")
	}
	return c.hostSocket, nil
}

// Main runs the CLI and returns the process exit status.
func Main(args []string, env Env) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, args, env); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0 // asked for help, got it
		}
		fmt.Fprintln(env.Stderr, "hostcrypt:", describe(err))
		return 1
	}
	return 0
}

func describe(err error) string {
	var ce *client.Error
	if errors.As(err, &ce) {
		code := ce.Code
		if ce.InnerCode != "" {
			code = ce.InnerCode
		}
		return fmt.Sprintf("%s: %s (HTTP %d)", code, ce.Message, ce.Status)
	}
	return err.Error()
}

func run(ctx context.Context, args []string, env Env) error {
	c := &Context{Ctx: ctx, Stdout: env.Stdout, Stderr: env.Stderr, Output: "table", getenv: env.Getenv}
	fs := pflag.NewFlagSet("hostcrypt", pflag.ContinueOnError)
	fs.SetOutput(env.Stdout) // only --help writes here
	fs.SetInterspersed(false)
	c.globalFlags(fs)
	cmds := map[string]map[string]Command{}
	for _, g := range groups {
		for _, cmd := range g() {
			if cmds[cmd.Group] == nil {
				cmds[cmd.Group] = map[string]Command{}
			}
			cmds[cmd.Group][cmd.Verb] = cmd
		}
	}
	fs.Usage = func() { usage(env.Stdout, cmds) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w (see hostcrypt --help)", err)
	}
	if err := c.checkOutput(); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		usage(env.Stderr, cmds)
		return errors.New("no command given")
	}
	verbs, ok := cmds[rest[0]]
	if !ok {
		return fmt.Errorf("unknown command group %q; run hostcrypt --help", rest[0])
	}
	// A group with a single verb named like the group (events) takes no verb.
	if cmd, ok := verbs[""]; ok && (len(rest) == 1 || strings.HasPrefix(rest[1], "-")) {
		c.Command = rest[0]
		return cmd.Run(c, rest[1:])
	}
	if len(rest) >= 2 && (rest[1] == "--help" || rest[1] == "-h") {
		usage(env.Stdout, map[string]map[string]Command{rest[0]: verbs})
		return nil
	}
	if len(rest) < 2 {
		return fmt.Errorf("%s needs a verb: %s", rest[0], verbList(verbs))
	}
	// Two-word verbs (vm disk attach) are registered with a space.
	verb, tail := rest[1], rest[2:]
	if len(tail) > 0 {
		if _, ok := verbs[verb+" "+tail[0]]; ok {
			verb, tail = verb+" "+tail[0], tail[1:]
		}
	}
	cmd, ok := verbs[verb]
	if !ok {
		return fmt.Errorf("unknown verb %q for %s; use one of: %s", verb, rest[0], verbList(verbs))
	}
	c.Command = rest[0] + " " + verb
	return cmd.Run(c, tail)
}

func verbList(verbs map[string]Command) string {
	var names []string
	for v := range verbs {
		if v != "" {
			names = append(names, v)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func usage(w io.Writer, cmds map[string]map[string]Command) {
	fmt.Fprintln(w, "usage: hostcrypt [--host-socket PATH] [--keystore URL --keystore-ca FILE --token-file FILE] [-o table|json] GROUP VERB [flags]")
	fmt.Fprintln(w, "       hostcrypt --version                 the version, commit and Go version of this build")
	fmt.Fprintln(w, "       hostcrypt GROUP VERB --help         the flags of one verb")
	var gs []string
	for g := range cmds {
		gs = append(gs, g)
	}
	sort.Strings(gs)
	for _, g := range gs {
		var vs []string
		for v := range cmds[g] {
			vs = append(vs, v)
		}
		sort.Strings(vs)
		for _, v := range vs {
			fmt.Fprintf(w, "  %-32s %s\n", strings.TrimSpace(g+" "+v), cmds[g][v].Short)
		}
	}
}

// resolveEndpoints fills endpoints not given as flags from the environment,
// then from the KEY=VALUE file named by HOSTCRYPT_CONFIG.
func (c *Context) resolveEndpoints() error {
	if c.resolved {
		return nil
	}
	c.resolved = true
	getenv := c.getenv
	file := map[string]string{}
	if path := getenv("HOSTCRYPT_CONFIG"); path != "" {
		var err error
		if file, err = readConfig(path); err != nil {
			return err
		}
	}
	for _, e := range []struct {
		v    *string
		name string
	}{
		{&c.keystoreURL, "HOSTCRYPT_KEYSTORE"},
		{&c.keystoreCA, "HOSTCRYPT_KEYSTORE_CA"},
		{&c.tokenFile, "HOSTCRYPT_TOKEN_FILE"},
		{&c.hostSocket, "HOSTCRYPT_SOCKET"},
	} {
		if *e.v == "" {
			*e.v = getenv(e.name)
		}
		if *e.v == "" {
			*e.v = file[e.name]
		}
	}
	return nil
}

func readConfig(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("HOSTCRYPT_CONFIG: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want KEY=VALUE", path, n)
		}
		out[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	return out, sc.Err()
}
