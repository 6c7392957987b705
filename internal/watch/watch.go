// Package watch tells when files change: the config file, certificates
// and keys that operators and tools such as certbot replace in place.
package watch

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"
)

// Options tune a watch. The zero value compares contents as soon as an
// event arrives and never polls.
type Options struct {
	// Debounce is the quiet time after the last event before contents
	// are compared, so that a burst of writes is one change.
	Debounce time.Duration
	// MaxWait bounds the time from the first event of a burst to the
	// comparison, so that a file written without pause is still seen;
	// zero means four times Debounce.
	MaxWait time.Duration
	// Poll, when positive, also compares contents this often, for file
	// systems that send no events (NFS, some container mounts).
	Poll time.Duration
	// What names the files in log lines ("the config file").
	What string
}

// Files calls onChange after the content of any of paths changes, until
// ctx is done. It watches the files' folders rather than the files, so
// that it sees tools that write a new file and rename it over the old one
// (vim, sed -i, certbot's symlink updates, Kubernetes secret and
// ConfigMap swaps) as well as writes in place; it compares contents, so
// that touching a file or rewriting it unchanged does nothing. A file
// that cannot be read for a moment (mid-rename) is not a change. Events
// for other files in those folders (an access log beside the config) are
// ignored, so they can neither delay a change nor cost a read.
func Files(ctx context.Context, paths []string, o Options, log hclog.Logger, onChange func()) error {
	if o.MaxWait <= 0 {
		o.MaxWait = 4 * o.Debounce
	}
	paths = cleaned(paths)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, p := range paths {
		dir := filepath.Dir(p)
		if seen[dir] {
			continue
		}
		seen[dir] = true
		if err := w.Add(dir); err != nil {
			w.Close()
			return err
		}
	}
	last, _ := sum(paths)
	relevant := names(paths)
	go func() {
		defer w.Close()
		var timer *time.Timer
		var fire, poll <-chan time.Time
		var burst time.Time // first event of the pending burst
		if o.Poll > 0 {
			t := time.NewTicker(o.Poll)
			defer t.Stop()
			poll = t.C
		}
		check := func() {
			// A swap may have pointed a symlink somewhere new.
			relevant = names(paths)
			s, ok := sum(paths)
			if !ok || s == last {
				return
			}
			last = s
			onChange()
		}
		for {
			select {
			case <-ctx.Done():
				if timer != nil {
					timer.Stop()
				}
				return
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("watching "+o.What, "error", err)
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if !relevant[filepath.Clean(ev.Name)] {
					continue
				}
				// Wait for the burst to end, but never past MaxWait
				// from its start: a file written without pause is
				// still compared.
				now := time.Now()
				if fire == nil {
					burst = now
				}
				wait := min(o.Debounce, o.MaxWait-now.Sub(burst))
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Stop()
					timer.Reset(wait)
				}
				fire = timer.C
			case <-fire:
				fire = nil
				check()
			case <-poll:
				if fire == nil { // not in the middle of a burst
					check()
				}
			}
		}
	}()
	return nil
}

// names returns the folder entries whose events may change what paths
// read: each file itself and, where it is a symlink, each name its
// target passes through in a watched folder. A Kubernetes ConfigMap or
// Secret mount makes lb.toml a symlink to ..data/lb.toml and updates it
// by renaming a new symlink over ..data, an event that names only
// ..data; certbot renames a new symlink over the file itself.
func names(paths []string) map[string]bool {
	dirs := map[string]bool{}
	for _, p := range paths {
		dirs[filepath.Dir(p)] = true
	}
	out := map[string]bool{}
	for _, p := range paths {
		out[p] = true
		cur := p
		// A bounded walk: a symlink loop ends it, as it ends os.Open.
		for range 16 {
			target, err := os.Readlink(cur)
			if err != nil {
				break
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(cur), target)
			}
			cur = filepath.Clean(target)
			for d := range dirs {
				rel, err := filepath.Rel(d, cur)
				// "..data" is inside d; ".." and "../x" are not.
				if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
					continue
				}
				first, _, _ := strings.Cut(rel, string(filepath.Separator))
				out[filepath.Join(d, first)] = true
			}
		}
	}
	return out
}

func cleaned(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Clean(p)
	}
	return out
}

// sum hashes the contents of every path; ok is false when one cannot be
// read.
func sum(paths []string) (s [sha256.Size]byte, ok bool) {
	h := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return s, false
		}
		h.Write(b)
		h.Write([]byte{0})
	}
	copy(s[:], h.Sum(nil))
	return s, true
}
