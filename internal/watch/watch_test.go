package watch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// busyNeighbour appends to a file beside the watched one every 20 ms until
// the test ends, as an access log next to lb.toml does.
func busyNeighbour(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "access.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				fmt.Fprintf(f, "GET /%d 200\n", i)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		f.Close()
	})
}

// watchOne watches path with the config file's debounce and no polling
// (polling would hide a watch that never fires) and returns a channel
// that receives once per change.
func watchOne(t *testing.T, path string) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	changed := make(chan struct{}, 16)
	opts := Options{Debounce: 250 * time.Millisecond, What: "the config file"}
	if err := Files(ctx, []string{path}, opts, hclog.NewNullLogger(), func() { changed <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	return changed
}

func waitChange(t *testing.T, changed <-chan struct{}, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-changed:
		return time.Since(start)
	case <-time.After(within):
		t.Fatalf("no change seen within %v", within)
		return 0
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestChangeSeenInBusyFolder edits the config three ways while another
// file in its folder is written every 20 ms: every edit is applied within
// a bounded time, and the neighbour's writes alone change nothing.
func TestChangeSeenInBusyFolder(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, path string)
	}{
		{"in place", func(t *testing.T, path string) { write(t, path, "v2") }},
		{"renamed over", func(t *testing.T, path string) {
			tmp := path + ".swp"
			write(t, tmp, "v2")
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink renamed over, as certbot does", func(t *testing.T, path string) {
			// live/lb.toml -> ../archive/lb1.toml becomes -> ../archive/lb2.toml.
			archive := filepath.Join(filepath.Dir(filepath.Dir(path)), "archive")
			write(t, filepath.Join(archive, "lb2.toml"), "v2")
			tmp := path + ".new"
			if err := os.Symlink("../archive/lb2.toml", tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "live")
			os.Mkdir(dir, 0o755)
			os.Mkdir(filepath.Join(root, "archive"), 0o755)
			path := filepath.Join(dir, "lb.toml")
			if strings.HasPrefix(tc.name, "symlink") {
				write(t, filepath.Join(root, "archive", "lb1.toml"), "v1")
				if err := os.Symlink("../archive/lb1.toml", path); err != nil {
					t.Fatal(err)
				}
			} else {
				write(t, path, "v1")
			}
			busyNeighbour(t, dir)
			changed := watchOne(t, path)
			tc.edit(t, path)
			took := waitChange(t, changed, 3*time.Second)
			t.Logf("change applied after %v with a neighbour written every 20 ms", took)
			select {
			case <-changed:
				t.Fatal("a second change reported for one edit")
			case <-time.After(500 * time.Millisecond):
			}
		})
	}
}

// TestKubernetesConfigMapSwap updates a ConfigMap-style mount: lb.toml is
// a symlink to ..data/lb.toml, and ..data is a symlink swapped (by rename)
// to a new timestamped folder, with a busy neighbour in the folder.
func TestKubernetesConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name, "lb.toml"), content)
	}
	version("..2026_01_01_00_00_00.1", "v1")
	if err := os.Symlink("..2026_01_01_00_00_00.1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "lb.toml")
	if err := os.Symlink(filepath.Join("..data", "lb.toml"), path); err != nil {
		t.Fatal(err)
	}
	busyNeighbour(t, dir)
	changed := watchOne(t, path)

	var swaps atomic.Int32
	swap := func(name, content string) {
		version(name, content)
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		swaps.Add(1)
	}
	swap("..2026_01_01_00_01_00.2", "v2")
	if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.1")); err != nil {
		t.Fatal(err)
	}
	t.Logf("first swap applied after %v", waitChange(t, changed, 3*time.Second))
	swap("..2026_01_01_00_02_00.3", "v3")
	t.Logf("second swap applied after %v", waitChange(t, changed, 3*time.Second))
}

// TestBurstIsOneChangeWithinMaxWait writes the watched file itself every
// 20 ms for longer than MaxWait: the change is reported while the writes
// go on, not only once they stop.
func TestBurstIsOneChangeWithinMaxWait(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lb.toml")
	write(t, path, "v0")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	changed := make(chan struct{}, 16)
	opts := Options{Debounce: 250 * time.Millisecond, MaxWait: time.Second, What: "the config file"}
	if err := Files(ctx, []string{path}, opts, hclog.NewNullLogger(), func() { changed <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				_ = os.WriteFile(path, fmt.Appendf(nil, "v%d", i), 0o644) // the next write or the check says

			}
		}
	}()
	defer func() { close(stop); <-done }()
	took := waitChange(t, changed, 3*time.Second)
	t.Logf("reported after %v of continuous writes (max wait 1s)", took)
}
