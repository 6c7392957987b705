package server

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/pkg/config"
)

// accessLog is the per-request log: hclog formats each line (text or
// JSON, as lb's own log) and an asyncWriter writes it, so that a slow
// disk or a blocked stdout never holds up a request.
type accessLog struct {
	path, format string
	log          hclog.Logger // nil when access logging is off
	w            *asyncWriter
}

func openAccessLog(g config.Global) (*accessLog, error) {
	a := &accessLog{path: g.AccessLog, format: g.LogFormat}
	var out io.Writer
	var closer io.Closer
	switch g.AccessLog {
	case "":
		return a, nil
	case "stdout":
		out = os.Stdout
	case "stderr":
		out = os.Stderr
	default:
		f, err := os.OpenFile(g.AccessLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("access log: %w", err)
		}
		out, closer = f, f
	}
	a.w = newAsyncWriter(out, closer)
	a.log = hclog.New(&hclog.LoggerOptions{
		Name:       "access",
		Level:      hclog.Info,
		Output:     a.w,
		JSONFormat: g.LogFormat == "json",
	})
	return a, nil
}

// same reports whether g asks for this very log.
func (a *accessLog) same(g config.Global) bool {
	return a.path == g.AccessLog && a.format == g.LogFormat
}

// Dropped is the number of lines dropped because the writer fell behind.
func (a *accessLog) Dropped() uint64 {
	if a == nil || a.w == nil {
		return 0
	}
	return a.w.dropped.Load()
}

// Close writes what is queued and closes the file.
func (a *accessLog) Close() {
	if a.w != nil {
		a.w.Close()
	}
}

// asyncWriter queues writes and makes them on its own goroutine, in
// order. When the queue is full a write is dropped and counted rather
// than waited for: losing a log line is better than holding a request.
type asyncWriter struct {
	out     *bufio.Writer
	closer  io.Closer
	queue   chan []byte
	dropped atomic.Uint64
	bufs    sync.Pool
	mu      sync.Mutex // guards closed against Write
	closed  bool
	done    chan struct{}
}

// asyncQueue is how many lines may wait to be written.
const asyncQueue = 8192

func newAsyncWriter(out io.Writer, closer io.Closer) *asyncWriter {
	w := &asyncWriter{
		out:    bufio.NewWriterSize(out, 64<<10),
		closer: closer,
		queue:  make(chan []byte, asyncQueue),
		done:   make(chan struct{}),
	}
	go w.loop()
	return w
}

// Write queues a copy of p; it never blocks on the output.
func (w *asyncWriter) Write(p []byte) (int, error) {
	b, _ := w.bufs.Get().(*[]byte)
	if b == nil {
		b = new([]byte)
	}
	*b = append((*b)[:0], p...)
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.dropped.Add(1)
		return len(p), nil
	}
	select {
	case w.queue <- *b:
	default:
		w.dropped.Add(1)
	}
	w.mu.Unlock()
	return len(p), nil
}

func (w *asyncWriter) loop() {
	defer close(w.done)
	for line := range w.queue {
		// A failing access log has nowhere to report to: lb's own log
		// is not for a line per request.
		_, _ = w.out.Write(line)
		b := line
		w.bufs.Put(&b)
		if len(w.queue) == 0 {
			_ = w.out.Flush() // as Write
		}
	}
	_ = w.out.Flush() // as Write
}

// Close writes everything queued, then closes the output if it owns it.
func (w *asyncWriter) Close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	close(w.queue)
	w.mu.Unlock()
	<-w.done
	if w.closer != nil {
		w.closer.Close()
	}
}
