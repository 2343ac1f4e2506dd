package cli

import (
	"fmt"
	"strconv"
	"strings"
)

// sizeValue is a size in bytes written with binary units: 512M is 512 MiB,
// 8G is 8 GiB; K, M, G, T (optionally followed by "i" and/or "B") or plain
// bytes.
type sizeValue struct{ v int64 }

func (s *sizeValue) String() string {
	if s.v == 0 {
		return ""
	}
	return formatSize(s.v)
}

func (s *sizeValue) Set(str string) error {
	n, err := parseSize(str)
	if err != nil {
		return err
	}
	s.v = n
	return nil
}

func (s *sizeValue) Type() string { return "size" }

func (f *flags) size(name, usage string) *sizeValue {
	v := &sizeValue{}
	f.Var(v, name, usage)
	return v
}

func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "B"), "i")
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
