package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// show prints v as JSON (-o json) or as a table with the given columns,
// one row per item; a single resource is a one-row table.
func (c *Context) show(v any, header []string, rows [][]string) error {
	if c.Output == "json" {
		enc := json.NewEncoder(c.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(c.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// showList is show for list verbs: JSON prints an array, never null.
func showList[T any](c *Context, items []T, header []string, row func(*T) []string) error {
	if items == nil {
		items = []T{}
	}
	rows := make([][]string, 0, len(items))
	for i := range items {
		rows = append(rows, row(&items[i]))
	}
	return c.show(items, header, rows)
}

func unixTime(u *int64) string {
	if u == nil {
		return "-"
	}
	return time.Unix(*u, 0).UTC().Format(time.RFC3339)
}

func boolStr(b *bool) string {
	if b == nil {
		return "-"
	}
	return strconv.FormatBool(*b)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// warnf prints a warning on stderr, in yellow on a terminal; it never asks
// anything.
func (c *Context) warnf(format string, args ...any) {
	msg := fmt.Sprintf("WARNING: "+format, args...)
	if c.colour(c.Stderr) {
		msg = "\033[1;33m" + msg + "\033[0m"
	}
	fmt.Fprintln(c.Stderr, msg)
}

// colour says whether w takes ANSI colours: a terminal, unless NO_COLOR is
// set (no-color.org) or TERM is dumb.
func (c *Context) colour(w io.Writer) bool {
	if c.getenv != nil && (c.getenv("NO_COLOR") != "" || c.getenv("TERM") == "dumb") {
		return false
	}
	return isTerminal(w)
}

// deleted says what a delete removed, in table output; JSON output of a
// delete stays empty.
func (c *Context) deleted(format string, args ...any) {
	if c.Output == "table" {
		fmt.Fprintf(c.Stdout, "deleted "+format+"\n", args...)
	}
}
