package version

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFormat(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "hostcrypt", Version: "(devel)"},
		Deps:      []*debug.Module{{Path: "golang.org/x/sys", Version: "v0.50.0"}, {Path: fuseModule, Version: "v2.12.1"}},
		Settings:  []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}},
	}
	for _, tc := range []struct {
		name, version, commit, want string
		bi                          *debug.BuildInfo
	}{
		{"from the build info", "", "", "hostcryptd devel (commit abc123-dirty, go1.26.8, go-fuse v2.12.1)", bi},
		{"from the Makefile", "v1.2.0-3-gdef", "def456", "hostcryptd v1.2.0-3-gdef (commit def456, go1.26.8, go-fuse v2.12.1)", bi},
		{"no go-fuse linked", "", "", "keystored devel (commit unknown, go1.26.8, no go-fuse)", &debug.BuildInfo{GoVersion: "go1.26.8"}},
		{"no build info", "", "", "hostcryptd devel (commit unknown, unknown Go, go-fuse unknown)", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			Version, Commit = tc.version, tc.commit
			defer func() { Version, Commit = "", "" }()
			prog := strings.Fields(tc.want)[0]
			require.Equal(t, tc.want, format(prog, tc.bi))
		})
	}
}
