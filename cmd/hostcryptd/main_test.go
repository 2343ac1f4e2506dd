package main

import "testing"

func TestProcs(t *testing.T) {
	for _, c := range []struct {
		env     string
		current int
		want    int
	}{
		{"", 1, minProcs},            // one CPU, or a container's limit of one
		{"", 2, minProcs},            // the small machine the setting is for
		{"", minProcs - 1, minProcs}, // still fewer
		{"", minProcs, 0},            // as many CPUs: the runtime's choice
		{"", 16, 0},                  // more CPUs: the runtime's choice
		{"2", 2, 0},                  // the operator's setting wins
		{"1", 1, 0},                  // also when lower
		{"8", 8, 0},                  // and when higher
		{"bogus", 2, 0},              // set, even if the runtime ignored it
	} {
		if got := procs(c.env, c.current); got != c.want {
			t.Errorf("procs(%q, %d) = %d, want %d", c.env, c.current, got, c.want)
		}
	}
}
