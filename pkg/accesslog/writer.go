package accesslog

import (
	"io"
	"sync"
	"sync/atomic"
)

// maxPending is how many bytes of lines may wait to be written (about
// 5,000 lines of 200 bytes); past it lines are dropped and counted.
const maxPending = 1 << 20

// Writer collects lines and writes them on its own goroutine, as many
// as have gathered in one write: one write per line while the output
// keeps up, fewer and larger ones under load (as NGINX's buffer= does,
// without its wait before a lone line appears). A line is never waited
// for: when maxPending bytes are waiting (a slow disk, a blocked
// stdout), it is dropped and counted instead, since losing a log line is
// better than holding a request. Lines are written whole and in the
// order they were added.
type Writer struct {
	out    io.Writer
	closer io.Closer

	mu      sync.Mutex
	pending []byte // lines not yet taken by the writing goroutine
	closed  bool

	wake    chan struct{} // pending has lines; capacity 1
	done    chan struct{}
	dropped atomic.Uint64
}

// NewWriter starts a Writer on out; Close closes closer, if not nil,
// once everything is written.
func NewWriter(out io.Writer, closer io.Closer) *Writer {
	w := &Writer{
		out:     out,
		closer:  closer,
		pending: make([]byte, 0, 64<<10),
		wake:    make(chan struct{}, 1),
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
	if w.closed || len(w.pending)+len(p) > maxPending {
		w.mu.Unlock()
		w.dropped.Add(1)
		return len(p), nil
	}
	w.pending = append(w.pending, p...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default: // already woken: the writer takes this line with the others
	}
	return len(p), nil
}

// Dropped is the number of lines dropped because the output fell behind.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

func (w *Writer) loop() {
	defer close(w.done)
	var out []byte // the buffer being written; swapped with pending
	for range w.wake {
		w.mu.Lock()
		out, w.pending = w.pending, out[:0]
		closed := w.closed
		w.mu.Unlock()
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
	// The writer sees closed at its next wake: this one, or one already
	// waiting.
	select {
	case w.wake <- struct{}{}:
	default:
	}
	<-w.done
	if w.closer != nil {
		w.closer.Close()
	}
}
