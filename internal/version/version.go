// Package version says which build a binary is: the version and commit the
// Makefile sets with -ldflags, else what the Go toolchain recorded (the
// module version, the VCS revision), the Go version and go-fuse's version.
package version

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Set by the Makefile: -X hostcrypt/internal/version.Version=… and .Commit=….
var (
	Version = ""
	Commit  = ""
)

const fuseModule = "github.com/hanwen/go-fuse/v2"

// String is the line --version prints for the program prog, e.g.
// "hostcryptd v0.4.0-3-gabc1234 (commit abc1234…, go1.26.8, go-fuse v2.12.1)";
// keystored and the CLI, which link no FUSE, say "no go-fuse".
func String(prog string) string {
	bi, _ := debug.ReadBuildInfo()
	return format(prog, bi)
}

func format(prog string, bi *debug.BuildInfo) string {
	version, commit, goVersion, fuse := Version, Commit, "unknown Go", "go-fuse unknown"
	modified := false
	if bi != nil {
		goVersion, fuse = bi.GoVersion, "no go-fuse"
		if version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if commit == "" {
					commit = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		for _, d := range bi.Deps {
			if d.Path == fuseModule {
				fuse = "go-fuse " + d.Version
				if d.Replace != nil {
					fuse = "go-fuse " + d.Replace.Version + " (replaced)"
				}
			}
		}
	}
	if version == "" {
		version = "devel"
	}
	if commit == "" {
		commit = "unknown"
	} else if modified && !strings.HasSuffix(commit, "-dirty") && Commit == "" {
		commit += "-dirty"
	}
	return fmt.Sprintf("%s %s (commit %s, %s, %s)", prog, version, commit, goVersion, fuse)
}
