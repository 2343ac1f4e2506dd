package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The CLI speaks to hostcryptd through control/api alone: it links neither
// the disk engine nor FUSE nor the control plane itself.
func TestCLILinksNoDaemon(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case strings.Contains(dep, "go-fuse"),
			dep == "hostcrypt/disk", dep == "hostcrypt/fs", dep == "hostcrypt/cache", dep == "hostcrypt/control",
			strings.HasPrefix(dep, "hostcrypt/storage"), strings.HasPrefix(dep, "hostcrypt/keystore/server"):
			t.Errorf("the CLI links %s", dep)
		}
	}
}
