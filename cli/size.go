package cli

import "hostcrypt/internal/units"

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
	n, err := units.ParseSize(str)
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

func parseSize(s string) (int64, error) { return units.ParseSize(s) }

func formatSize(n int64) string { return units.FormatSize(n) }
