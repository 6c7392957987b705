package accesslog

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// maxPending is how many bytes of lines may wait to be written (about
	// 5,000 lines of 200 bytes); past it lines are dropped and counted.
	maxPending = 1 << 20
	// batchSize is how much makes a write at once: the lines that have
	// gathered are written as soon as they reach it.
	batchSize = 64 << 10
	// flushDelay is the longest a line waits for others to share its
	// write.
	flushDelay = 100 * time.Millisecond
)

// Writer collects lines and writes them on its own goroutine, many in
// one write, as NGINX's access_log buffer= does: lines are written once
// batchSize bytes of them have gathered, or flushDelay after the first
// of them, whichever comes first (so that a quiet log still shows each
// line at once, to a person). A line is never waited for: when
// maxPending bytes are waiting (a slow disk, a blocked stdout), it is
// dropped and counted instead, since losing a log line is better than
// holding a request. Lines are written whole and in the order they were
// added.
type Writer struct {
	out    io.Writer
	closer io.Closer

	mu      sync.Mutex
	pending []byte // lines not yet taken by the writing goroutine
	closed  bool

	first   chan struct{} // pending has its first line; capacity 1
	full    chan struct{} // pending has batchSize bytes; capacity 1
	closing chan struct{} // closed by Close
	done    chan struct{}
	dropped atomic.Uint64
}

// NewWriter starts a Writer on out; Close closes closer, if not nil,
// once everything is written.
func NewWriter(out io.Writer, closer io.Closer) *Writer {
	w := &Writer{
		out:     out,
		closer:  closer,
		pending: make([]byte, 0, batchSize),
		first:   make(chan struct{}, 1),
		full:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	go w.loop()
	return w
}

// Write adds p, which must be whole lines, to what is to be written; it
// never blocks on the output. It always reports success: a line that is
// dropped is counted in Dropped.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	n := len(w.pending)
	if w.closed || n+len(p) > maxPending {
		w.mu.Unlock()
		w.dropped.Add(1)
		return len(p), nil
	}
	w.pending = append(w.pending, p...)
	w.mu.Unlock()
	switch {
	case n == 0:
		signal(w.first)
	case n < batchSize && n+len(p) >= batchSize:
		signal(w.full)
	}
	return len(p), nil
}

// signal wakes the writer through c, unless it is already woken.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Dropped is the number of lines dropped because the output fell behind.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

func (w *Writer) loop() {
	defer close(w.done)
	var out []byte // the buffer being written; swapped with pending
	t := time.NewTimer(flushDelay)
	t.Stop()
	for {
		select {
		case <-w.first:
		case <-w.closing:
		}
		t.Reset(flushDelay)
		select {
		case <-w.full:
		case <-t.C:
		case <-w.closing:
		}
		t.Stop()
		w.mu.Lock()
		out, w.pending = w.pending, out[:0]
		closed := w.closed
		w.mu.Unlock()
		// (A line added after the swap, before this write, signalled
		// first again: it gets a write of its own.)
		if len(out) > 0 {
			// A failing access log has nowhere to report to: lb's own
			// log is not for a line per request.
			_, _ = w.out.Write(out)
		}
		if closed {
			return
		}
	}
}

// Close writes what is waiting, then closes the output if it owns it.
// Lines written after are dropped.
func (w *Writer) Close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	w.mu.Unlock()
	// The writer, waiting for a first line or for its batch to fill,
	// stops waiting: what is pending is written, and it ends.
	close(w.closing)
	<-w.done
	if w.closer != nil {
		w.closer.Close()
	}
}
