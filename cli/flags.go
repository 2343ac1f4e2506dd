package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// flags is a verb's flag set plus what it needs to check its input.
type flags struct {
	*pflag.FlagSet
	c        *Context
	required []string
}

func newFlags(c *Context) *flags {
	fs := pflag.NewFlagSet("hostcrypt "+c.Command, pflag.ContinueOnError)
	fs.SetOutput(c.Stdout) // only --help writes here: usage is output asked for
	c.globalFlags(fs)
	return &flags{FlagSet: fs, c: c}
}

// parse parses args; stray positional arguments and missing required
// flags are errors.
func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%s: %w (see hostcrypt %s --help)", f.c.Command, err, f.c.Command)
	}
	if err := f.c.checkOutput(); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q (every value is given with a flag)", f.c.Command, f.Arg(0))
	}
	for _, name := range f.required {
		if !f.Changed(name) {
			return fmt.Errorf("%s: --%s is required", f.c.Command, name)
		}
	}
	return nil
}

func (f *flags) requiredString(name, usage string) *string {
	f.required = append(f.required, name)
	return f.String(name, "", usage+" (required)")
}

// tristate is a true|false flag that takes its value after a space or
// '=' (unlike a plain pflag bool) and remembers whether it was given.
type tristate struct {
	set, val bool
}

func (t *tristate) String() string {
	if !t.set {
		return ""
	}
	return strconv.FormatBool(t.val)
}

func (t *tristate) Set(s string) error {
	switch s {
	case "true":
		t.val = true
	case "false":
		t.val = false
	default:
		return fmt.Errorf("want true or false, not %q", s)
	}
	t.set = true
	return nil
}

func (t *tristate) Type() string { return "true|false" }

// ptr returns nil when the flag was not given.
func (t *tristate) ptr() *bool {
	if !t.set {
		return nil
	}
	v := t.val
	return &v
}

func (f *flags) boolValue(name, usage string) *tristate {
	t := &tristate{}
	f.Var(t, name, usage)
	return t
}

// list splits a comma-separated flag value; empty items are errors.
func list(name, s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
		if parts[i] == "" {
			return nil, fmt.Errorf("--%s %q has an empty item", name, s)
		}
	}
	return parts, nil
}

// tags parses k=v,k2=v2.
func tags(s string) (map[string]string, error) {
	items, err := list("tags", s)
	if err != nil || items == nil {
		return nil, err
	}
	out := map[string]string{}
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--tags item %q is not key=value", it)
		}
		out[k] = v
	}
	return out, nil
}

// timeArg parses an RFC 3339 time, a date, or Unix seconds.
func timeArg(name, s string) (*int64, error) {
	if s == "" {
		return nil, nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			u := t.Unix()
			return &u, nil
		}
	}
	if u, err := strconv.ParseInt(s, 10, 64); err == nil {
		return &u, nil
	}
	return nil, fmt.Errorf("--%s %q is not a time; use e.g. 2030-01-31T00:00:00Z or 2030-01-31", name, s)
}
