package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// boolValue is a boolean that always takes a value, true or false, after a
// space or '=' (a plain pflag bool would swallow "--enabled false" as
// "--enabled" plus a stray "false").
type boolValue struct {
	v   *bool
	set bool
}

func (b *boolValue) String() string {
	if b.v == nil {
		return "false"
	}
	return strconv.FormatBool(*b.v)
}

func (b *boolValue) Set(s string) error {
	switch s {
	case "true":
		*b.v = true
	case "false":
		*b.v = false
	default:
		return fmt.Errorf("%q is not true or false", s)
	}
	b.set = true
	return nil
}

func (b *boolValue) Type() string { return "true|false" }

// optBool declares a true|false flag; the returned func says whether it was
// given and its value.
func optBool(fl *pflag.FlagSet, name string, def bool, usage string) func() (value, given bool) {
	v := def
	bv := &boolValue{v: &v}
	fl.Var(bv, name, usage)
	return func() (bool, bool) { return v, bv.set }
}

// sizeValue is a size in bytes written with binary units: 512M is 512 MiB,
// 8G is 8 GiB; K, M, G, T (with an optional "i" and "B") or plain bytes.
type sizeValue struct{ v *int64 }

func (s sizeValue) String() string {
	if s.v == nil || *s.v == 0 {
		return ""
	}
	return formatSize(*s.v)
}

func (s sizeValue) Set(str string) error {
	n, err := parseSize(str)
	if err != nil {
		return err
	}
	*s.v = n
	return nil
}

func (s sizeValue) Type() string { return "size" }

func sizeFlag(fl *pflag.FlagSet, name, usage string) *int64 {
	var v int64
	fl.Var(sizeValue{&v}, name, usage)
	return &v
}

func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	shift := 0
	if t != "" {
		switch t[len(t)-1] {
		case 'K', 'k':
			shift = 10
		case 'M', 'm':
			shift = 20
		case 'G', 'g':
			shift = 30
		case 'T', 't':
			shift = 40
		}
		if shift > 0 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: use a whole number with a binary unit, e.g. 512M (MiB) or 8G (GiB)", s)
	}
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n << shift, nil
}

func formatSize(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{40, "T"}, {30, "G"}, {20, "M"}, {10, "K"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.name)
		}
	}
	return strconv.FormatInt(n, 10)
}

// splitList splits a comma-separated flag value, refusing empty items.
func splitList(flag, s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
		if parts[i] == "" {
			return nil, usagef("--%s %q: an empty item in the comma-separated list", flag, s)
		}
	}
	return parts, nil
}

// need reports a missing required flag.
func need(flag, v string) error {
	if v == "" {
		return usagef("--%s is required", flag)
	}
	return nil
}
