package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"
)

// WatchFile calls onChange after path's content changes, until ctx is
// done. It watches the file's folder rather than the file, so that it
// sees editors and tools that write a new file and rename it over the
// old one (vim, sed -i, Kubernetes ConfigMap symlink swaps) as well as
// writes in place; it compares contents, so that touching the file or
// rewriting it unchanged does nothing; and it waits for debounce of quiet
// after the last event, so that a burst of writes is one change.
func WatchFile(ctx context.Context, path string, debounce time.Duration, log hclog.Logger, onChange func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		w.Close()
		return err
	}
	last := fileSum(path)
	go func() {
		defer w.Close()
		var timer *time.Timer
		var fire <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("watching the config file", "error", err)
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				// Any event in the folder may concern the file (a
				// symlink swap names no file we know); contents decide.
				if timer == nil {
					timer = time.NewTimer(debounce)
				} else {
					timer.Reset(debounce)
				}
				fire = timer.C
			case <-fire:
				fire = nil
				sum := fileSum(path)
				if sum == nil || bytes.Equal(sum, last) {
					continue // gone for a moment (mid-rename), or unchanged
				}
				last = sum
				onChange()
			}
		}
	}()
	return nil
}

func fileSum(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	s := sha256.Sum256(b)
	return s[:]
}
