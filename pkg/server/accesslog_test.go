package server

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// slowWriter blocks every write until released.
type slowWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	release chan struct{}
}

func (w *slowWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func TestAsyncWriterNeverBlocksAndKeepsOrder(t *testing.T) {
	out := &slowWriter{release: make(chan struct{})}
	w := newAsyncWriter(out, nil)
	pad := strings.Repeat("x", 1000) // fills the writer's buffer after 64 lines
	const total = asyncQueue + 500
	start := time.Now()
	for i := range total {
		fmt.Fprintf(w, "line %d %s\n", i, pad)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("writes blocked on a stuck output for %s", d)
	}
	dropped := w.dropped.Load()
	if dropped < 300 {
		t.Errorf("dropped %d lines with the queue full, want about 400", dropped)
	}
	close(out.release)
	w.Close()
	lines := strings.Split(strings.TrimSpace(out.buf.String()), "\n")
	if uint64(len(lines))+dropped != total {
		t.Fatalf("wrote %d lines and dropped %d, of %d", len(lines), dropped, total)
	}
	for i := 1; i < len(lines); i++ {
		var a, b int
		fmt.Sscanf(lines[i-1], "line %d", &a)
		fmt.Sscanf(lines[i], "line %d", &b)
		if b <= a {
			t.Fatalf("out of order: %q after %q", lines[i], lines[i-1])
		}
	}
	fmt.Fprintf(w, "after close\n") // dropped, not a panic
}
