package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// table is what a resource looks like in table output.
type table struct {
	headers []string
	rows    [][]string
}

// print writes v as JSON (as the API returned it) or as the table.
func (e *Env) print(v any, t table) error {
	if e.Output == "json" {
		enc := json.NewEncoder(e.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return writeTable(e.Stdout, t)
}

func writeTable(w io.Writer, t table) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(t.headers, "\t"))
	dashes := make([]string, len(t.headers))
	for i, h := range t.headers {
		dashes[i] = strings.Repeat("-", len(h))
	}
	fmt.Fprintln(tw, strings.Join(dashes, "\t"))
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// warn prints a warning on stderr; it never asks anything.
func (e *Env) warn(format string, args ...any) {
	fmt.Fprintf(e.Stderr, "WARNING: "+format+"\n", args...)
}
