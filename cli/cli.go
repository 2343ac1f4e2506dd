// Package cli is the hostcrypt command line: groups and verbs close to the
// Azure CLI's, talking to hostcryptd over its unix socket and to keystored
// over TLS. cmd/hostcrypt only calls Main.
//
// A command is registered once in commands() with its path ("disk create",
// "vm disk attach"), its flags and its action. Every flag takes its value
// after a space or '=', booleans included (--enabled false); lists are
// comma-separated; a stray positional argument is an error.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"
)

// Env is what a command runs with: the resolved endpoints and the output.
type Env struct {
	Stdout, Stderr io.Writer
	Output         string // table or json
	HostSocket     string
	KeystoreURL    string
	KeystoreCA     string
	TokenFile      string
}

// Command is one verb of a group.
type Command struct {
	Path  string // words before the flags, e.g. "vm disk attach"
	Short string
	// Setup declares the command's flags on fl and returns its action.
	Setup func(fl *pflag.FlagSet) func(ctx context.Context, e *Env) error
}

// usageError is a mistake on the command line: exit status 2.
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// Main runs the command line args (without the program name) and returns
// the exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &Env{Stdout: stdout, Stderr: stderr}
	err := run(ctx, e, args)
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "hostcrypt: %v\n", err)
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

func globalFlags(fl *pflag.FlagSet, e *Env) {
	fl.StringVar(&e.HostSocket, "host-socket", "", "hostcryptd's control socket (env HOSTCRYPT_SOCKET)")
	fl.StringVar(&e.KeystoreURL, "keystore", "", "key store URL (env HOSTCRYPT_KEYSTORE)")
	fl.StringVar(&e.KeystoreCA, "keystore-ca", "", "CA certificate of the key store (env HOSTCRYPT_KEYSTORE_CA)")
	fl.StringVar(&e.TokenFile, "token-file", "", "file holding the bearer token (env HOSTCRYPT_TOKEN_FILE)")
	fl.StringVarP(&e.Output, "output", "o", "table", "output format: table or json")
}

func run(ctx context.Context, e *Env, args []string) error {
	global := pflag.NewFlagSet("hostcrypt", pflag.ContinueOnError)
	global.SetOutput(io.Discard)
	global.SetInterspersed(false)
	globalFlags(global, e)
	help := global.BoolP("help", "h", false, "")
	if err := global.Parse(args); err != nil {
		return usagef("%v", err)
	}
	rest := global.Args()
	cmds := commands()
	if *help || len(rest) == 0 {
		printUsage(e.Stdout, cmds, "")
		return nil
	}
	cmd, n := match(cmds, rest)
	if cmd == nil {
		prefix := strings.Join(rest[:min(n+1, len(rest))], " ")
		if n > 0 || groupExists(cmds, rest[0]) {
			printUsage(e.Stderr, cmds, strings.Join(rest[:max(n, 1)], " "))
		}
		return usagef("unknown command %q (see hostcrypt --help)", prefix)
	}
	fl := pflag.NewFlagSet("hostcrypt "+cmd.Path, pflag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.SortFlags = false
	action := cmd.Setup(fl)
	// Global flags are accepted after the verb too (hostcrypt disk list -o
	// json). Declaring them again resets their variables, so keep what was
	// given before the group and set it again.
	given := map[string]string{}
	global.Visit(func(f *pflag.Flag) { given[f.Name] = f.Value.String() })
	globalFlags(fl, e)
	for name, v := range given {
		fl.Set(name, v)
	}
	cmdHelp := fl.BoolP("help", "h", false, "show this help")
	if err := fl.Parse(rest[n:]); err != nil {
		return usagef("%s: %v", cmd.Path, err)
	}
	if *cmdHelp {
		fmt.Fprintf(e.Stdout, "hostcrypt %s — %s\n\nFlags:\n%s", cmd.Path, cmd.Short, fl.FlagUsages())
		return nil
	}
	if fl.NArg() > 0 {
		return usagef("%s: unexpected argument %q (every value goes after a --flag)", cmd.Path, fl.Arg(0))
	}
	if e.Output != "table" && e.Output != "json" {
		return usagef("--output %q: use table or json", e.Output)
	}
	if err := resolveEndpoints(e); err != nil {
		return err
	}
	return action(ctx, e)
}

// match finds the command whose path is the longest prefix of args; n is
// the number of words it used (or, with no match, that matched a group).
func match(cmds []Command, args []string) (*Command, int) {
	var best *Command
	bestN := 0
	for i := range cmds {
		words := strings.Fields(cmds[i].Path)
		if len(words) > len(args) || len(words) <= bestN {
			continue
		}
		ok := true
		for j, w := range words {
			if args[j] != w {
				ok = false
				break
			}
		}
		if ok {
			best, bestN = &cmds[i], len(words)
		}
	}
	if best == nil {
		for len(args) > 0 && groupExists(cmds, strings.Join(args, " ")) {
			return nil, len(args)
		}
		return nil, 0
	}
	return best, bestN
}

func groupExists(cmds []Command, group string) bool {
	for _, c := range cmds {
		if strings.HasPrefix(c.Path, group+" ") {
			return true
		}
	}
	return false
}

func printUsage(w io.Writer, cmds []Command, group string) {
	fmt.Fprintln(w, "usage: hostcrypt [--host-socket PATH] [--keystore URL --keystore-ca FILE --token-file FILE] [-o table|json] GROUP VERB [flags]")
	fmt.Fprintln(w)
	sorted := append([]Command(nil), cmds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	for _, c := range sorted {
		if group == "" || strings.HasPrefix(c.Path, group+" ") {
			fmt.Fprintf(w, "  %-28s %s\n", c.Path, c.Short)
		}
	}
	fmt.Fprintln(w, "\nRun 'hostcrypt GROUP VERB --help' for a command's flags.")
}

// resolveEndpoints fills what the flags left empty from the environment, then
// from the KEY=VALUE file named by HOSTCRYPT_CONFIG.
func resolveEndpoints(e *Env) error {
	file := map[string]string{}
	if path := os.Getenv("HOSTCRYPT_CONFIG"); path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("HOSTCRYPT_CONFIG: %w", err)
		}
		for i, line := range strings.Split(string(raw), "\n") {
			line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "export "))
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return fmt.Errorf("%s line %d: want KEY=VALUE, got %q", path, i+1, line)
			}
			file[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	for _, f := range []struct {
		dst *string
		key string
	}{
		{&e.HostSocket, "HOSTCRYPT_SOCKET"}, {&e.KeystoreURL, "HOSTCRYPT_KEYSTORE"},
		{&e.KeystoreCA, "HOSTCRYPT_KEYSTORE_CA"}, {&e.TokenFile, "HOSTCRYPT_TOKEN_FILE"},
	} {
		if *f.dst == "" {
			*f.dst = os.Getenv(f.key)
		}
		if *f.dst == "" {
			*f.dst = file[f.key]
		}
	}
	return nil
}
