package units

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"512M": 512 << 20, "8G": 8 << 30, "1T": 1 << 40, "64K": 64 << 10, "1048576": 1 << 20,
		"2GiB": 2 << 30, "3Gi": 3 << 30, "0": 0, "16m": 16 << 20, "4gib": 4 << 30, "512B": 512, " 1M ": 1 << 20,
		"8388607T": 8388607 << 40, "9223372036854775807": 1<<63 - 1,
	} {
		got, err := ParseSize(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for in, msg := range map[string]string{
		"":                     "whole number",
		"lots":                 "whole number",
		"-1G":                  "whole number",
		"1.5G":                 "whole number",
		"G":                    "whole number",
		"1 G":                  "whole number",
		"1P":                   `unit "P" is not known`,
		"1GB":                  "GB is ambiguous; write 1G (or 1GiB)",
		"1gb":                  "gb is ambiguous",
		"5MB":                  "write 5M",
		"8388608T":             "too large",
		"99999999999999999T":   "too large",
		"99999999999999999999": "too large",
		"9223372036854775808":  "too large",
	} {
		_, err := ParseSize(in)
		require.Error(t, err, in)
		assert.Contains(t, err.Error(), msg, in)
	}
}

func TestFormatSize(t *testing.T) {
	assert.Equal(t, "512M", FormatSize(512<<20))
	assert.Equal(t, "1536M", FormatSize(1536<<20))
	assert.Equal(t, "32767G", FormatSize(32767<<30))
	assert.Equal(t, "1000", FormatSize(1000))
}
