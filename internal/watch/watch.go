// Package watch tells when files change: the config file, certificates
// and keys that operators and tools such as certbot replace in place.
package watch

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"
)

// Options tune a watch.
type Options struct {
	// Debounce is the quiet time after the last event before contents
	// are compared, so that a burst of writes is one change.
	Debounce time.Duration
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
// that cannot be read for a moment (mid-rename) is not a change.
func Files(ctx context.Context, paths []string, o Options, log hclog.Logger, onChange func()) error {
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
	go func() {
		defer w.Close()
		var timer *time.Timer
		var fire, poll <-chan time.Time
		if o.Poll > 0 {
			t := time.NewTicker(o.Poll)
			defer t.Stop()
			poll = t.C
		}
		check := func() {
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
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				// Any event in the folder may concern a file (a symlink
				// swap names no file we know); contents decide.
				if timer == nil {
					timer = time.NewTimer(o.Debounce)
				} else {
					timer.Reset(o.Debounce)
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
