// Package version holds lb's version, stamped in at build time with
// -ldflags "-X github.com/offloadlb/lb/internal/version.Version=v1.2.3
// -X github.com/offloadlb/lb/internal/version.Commit=abc123".
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Stamped at build time; see the package comment.
var (
	Version = "dev"
	Commit  = ""
)

// String is the one-line version report of lb -version.
func String() string {
	commit := Commit
	if commit == "" {
		commit = vcsRevision()
	}
	if commit == "" {
		commit = "unknown"
	}
	return fmt.Sprintf("lb %s (commit %s, %s, %s/%s)", Version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func vcsRevision() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	rev, dirty := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" && dirty {
		rev += "-dirty"
	}
	return rev
}
