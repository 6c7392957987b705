package h2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/offloadlb/lb/internal/httpstatus"
)

// Request bodies that stream. A request is served once its body is in
// whole, unless the body is larger than Options.BodyBuffer (by its
// content-length or by what arrived) or the client waits for 100
// Continue: then it is served at once, and its body is a *bodyReader the
// handler reads while the client sends. What a streamed body holds is
// what the handler has not read yet: the stream's flow-control credit is
// given back as the handler reads, never because data arrived, so a body
// holds at most the stream's window (streamWindow) in lb whatever its
// size, and a handler that stops reading stops its client.

// ErrBodyTooLarge is the error a streamed request body's Read returns
// once the body passes Options.MaxBody. What the client sends after it is
// dropped and the stream is reset once the response is sent. It wraps
// fasthttp.ErrBodyTooLarge, which handlers answer with 413.
var ErrBodyTooLarge = fmt.Errorf("HTTP/2 request body too large (past max_request_body): %w", fasthttp.ErrBodyTooLarge)

// ErrBodyTimeout is the error a streamed request body's Read returns when
// it waited ReadTimeout without a byte of the body arriving. It is a
// net.Error whose Timeout is true, and wraps os.ErrDeadlineExceeded.
var ErrBodyTimeout error = bodyTimeout{}

type bodyTimeout struct{}

func (bodyTimeout) Error() string   { return "HTTP/2 request body: no data within read_timeout" }
func (bodyTimeout) Timeout() bool   { return true }
func (bodyTimeout) Temporary() bool { return false }
func (bodyTimeout) Unwrap() error   { return os.ErrDeadlineExceeded }

// Why else a streamed body's Read fails.
var (
	errBodyReset        = errors.New("HTTP/2 request body: stream reset by the client")
	errBodyStreamReset  = errors.New("HTTP/2 request body: stream reset")
	errBodyClosed       = errors.New("HTTP/2 request body: connection closed")
	errBodyLength       = errors.New("HTTP/2 request body: length differs from its content-length")
	errBodyInterrupted  = errors.New("HTTP/2 request body: reading interrupted")
	errBodyDone         = errors.New("HTTP/2 request body: read after the request was answered")
	errTrailersTooLarge = fmt.Errorf("HTTP/2 request trailers: %w", httpstatus.ErrHeadTooLarge)
)

// bodyReader is a streamed request body: ctx.Request.BodyStream() of a
// request served before its body was in. Read gives the body's bytes in
// order, waiting for them, then io.EOF once the client ended the stream
// (after adding its trailers to the request). Only one goroutine may Read
// at a time, not necessarily the handler's, until the response is sent;
// Reads fail after that. Interrupt may be called from any goroutine at
// any time, also after the response.
//
// A bodyReader belongs to one stream and is never reused. Its fields are
// under the connection's mu, but for those of Interrupt.
type bodyReader struct {
	c  *conn
	st *stream

	q        chunkQueue // received, not read: st.held bytes
	err      error      // why Reads fail from now on, once set
	trailers []byte     // "name: value\r\n" lines for the request, added before io.EOF
	waiting  bool       // a Read waits on wake

	wake        chan struct{} // capacity 1: data, the end, or an error came
	timer       *time.Timer   // a waiting Read's inactivity limit (ReadTimeout)
	interrupted atomic.Bool
	intr        chan struct{} // closed by Interrupt
}

// Read reads the body's next bytes into p, waiting for at least one.
func (r *bodyReader) Read(p []byte) (int, error) {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case r.interrupted.Load():
			return 0, errBodyInterrupted
		case r.err != nil:
			return 0, r.err
		case r.q.n > 0:
			n := r.q.read(p)
			c.consumed(r.st, int64(n))
			return n, nil
		case r.st.remoteDone:
			if r.trailers != nil {
				addTrailers(&r.st.ctx.Request.Header, r.trailers)
				r.trailers = nil
			}
			return 0, io.EOF
		case len(p) == 0:
			return 0, nil
		}
		r.wait()
	}
}

// wait waits, its caller's hold on c.mu let go meanwhile, for something to
// read, an error, Interrupt, or ReadTimeout without data.
func (r *bodyReader) wait() {
	c := r.c
	r.waiting = true
	c.mu.Unlock()
	var expired <-chan time.Time
	if d := c.srv.o.ReadTimeout; d > 0 {
		r.timer.Reset(d)
		expired = r.timer.C
	}
	timedOut := false
	select {
	case <-r.wake:
	case <-r.intr:
	case <-expired:
		timedOut = true
	}
	if expired != nil {
		r.timer.Stop()
	}
	c.mu.Lock()
	r.waiting = false
	if timedOut && r.q.n == 0 && !r.st.remoteDone {
		c.failBody(r.st, ErrBodyTimeout)
	}
}

// Interrupt makes any Read waiting now, and every Read after, return an
// error at once: a handler that no longer needs the body (its backend
// answered without reading it all) frees whatever goroutine reads it. The
// client gets no more credit for the body, and the stream is reset once
// the response is sent. Safe from any goroutine; it never blocks.
func (r *bodyReader) Interrupt() {
	if r.interrupted.CompareAndSwap(false, true) {
		close(r.intr)
	}
}

// signal wakes a waiting Read.
func (r *bodyReader) signal() {
	if !r.waiting {
		return
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// dead: the body is no longer read; what arrives of it is dropped.
func (r *bodyReader) dead() bool { return r.err != nil || r.interrupted.Load() }

// streamBody makes st's request body a stream, the bytes received so far
// first. The caller serves the request.
func (c *conn) streamBody(st *stream) {
	r := &bodyReader{c: c, st: st, wake: make(chan struct{}, 1), intr: make(chan struct{}), timer: time.NewTimer(time.Hour)}
	r.timer.Stop()
	if st.held > 0 {
		r.q.write(st.ctx.Request.Body()) // counted in the budgets already
	}
	st.body = r
	st.expires = time.Time{} // ReadTimeout limits waits for data from now on
	st.ctx.Request.SetBodyStream(r, int(st.declared))
}

// bodyData takes data that arrived for st's streamed body.
func (c *conn) bodyData(st *stream, data []byte) {
	r := st.body
	switch {
	case r.dead():
		if r.err == nil {
			c.failBody(st, errBodyInterrupted) // drop what it holds now
		}
		return // dropped: refill gives the connection's credit back
	case c.srv.o.MaxBody > 0 && st.got > int64(c.srv.o.MaxBody):
		c.failBody(st, ErrBodyTooLarge)
		return
	case len(data) == 0:
		// Empty DATA does not wake a reader waiting for data, so it does
		// not put off ErrBodyTimeout either.
		return
	}
	r.q.write(data)
	n := int64(len(data))
	st.held += n
	c.held += n
	// Not refused, unlike a body not yet served: part of it may be at a
	// backend. The process holds at most the credit already given past
	// its budget, and gives no more until it is back within it.
	bodymem.Add(n)
	r.signal()
}

// consumed: n bytes of st's streamed body were read. They leave the
// budgets, and the client gets credit for them.
func (c *conn) consumed(st *stream, n int64) {
	st.held -= n
	c.held -= n
	bodymem.Give(n)
	c.creditStream(st)
	c.refill()
}

// creditStream gives st's client stream credit up to streamWindow less
// what the body holds unread, in steps of a quarter window: a 1 GiB upload
// gets a WINDOW_UPDATE per 256 KiB read, not one per Read.
func (c *conn) creditStream(st *stream) {
	if c.closed || st.reset || st.remoteDone || st.body.dead() {
		return
	}
	if inc := streamWindow - st.held - st.recvWin; inc >= streamWindow/4 {
		_ = c.fr.WriteWindowUpdate(st.id, uint32(inc)) // write errors show on the next read
		st.recvWin += inc
	}
}

// failBody makes every Read of st's streamed body return err from now on
// (unless it fails already), drops what it holds and gives that back to
// the budgets and the connection's credit; not the stream's: the client
// is meant to stop sending.
func (c *conn) failBody(st *stream, err error) {
	r := st.body
	if r.err == nil {
		r.err = err
	}
	r.q.reset()
	r.trailers = nil
	c.unhold(st)
	r.signal()
}

// endBody: the client ended st's streamed body. Short of its
// content-length, it is malformed (RFC 9113 section 8.1.1).
func (c *conn) endBody(st *stream) {
	if st.declared >= 0 && st.got != st.declared {
		c.malformedBody(st)
		return
	}
	st.body.signal()
}

// malformedBody: st's streamed body and its content-length disagree. The
// stream is reset (PROTOCOL_ERROR) before the handler can see the error,
// so that no answer of its goes out first.
func (c *conn) malformedBody(st *stream) {
	c.failBody(st, errBodyLength)
	c.resetLocked(st.id, http2.ErrCodeProtocol)
}

// takeTrailers keeps the trailer fields just decoded (a HEADERS frame
// after the body) for st's request: added to it now if it is not served
// yet, by the reader before io.EOF if its body streams, dropped if it was
// answered before its body came. A block past the header list size is
// answered as a head too large (431).
func (c *conn) takeTrailers(st *stream) {
	lines := c.hb.fieldLines()
	switch {
	case st.body != nil:
		if c.hb.truncated {
			c.failBody(st, errTrailersTooLarge)
		} else if !st.body.dead() && len(lines) > 0 {
			st.body.trailers = append(st.body.trailers[:0], lines...)
		}
	case !st.served:
		if c.hb.truncated {
			st.err = ErrHeadTooLarge
			c.dropBody(st)
		} else {
			addTrailers(&st.ctx.Request.Header, lines)
		}
	}
}

// addTrailers adds the trailer fields in lines ("name: value\r\n" each)
// to h as fasthttp keeps trailers, so that a chunked request to a backend
// carries them. Names fasthttp refuses as trailers (framing, routing,
// authentication, cookies; RFC 9110 section 6.5.1) are left out.
func addTrailers(h *fasthttp.RequestHeader, lines []byte) {
	for len(lines) > 0 {
		i := bytes.IndexByte(lines, '\n')
		line := lines[:i-1] // without "\r\n"
		lines = lines[i+1:]
		j := bytes.Index(line, []byte(": "))
		name, value := line[:j], line[j+2:]
		if h.AddTrailerBytes(name) != nil {
			continue
		}
		h.AddBytesKV(name, value)
	}
}

// chunkSize is the size of the pieces a streamed body is kept in: a
// frame's worth.
const chunkSize = frameSize

// chunk is a piece of a streamed body: b[r:w] is not read yet.
type chunk struct {
	next *chunk
	r, w int
	b    [chunkSize]byte
}

var chunkPool = sync.Pool{New: func() any { return new(chunk) }}

// chunkQueue holds bytes in pooled chunks, in order. Small DATA frames
// fill the last chunk rather than take one each, so it holds at most one
// chunk more than its bytes need (two, with the first partly read), and
// once the pool has them, writes and reads allocate nothing.
type chunkQueue struct {
	head, tail *chunk
	n          int64 // bytes held
}

func (q *chunkQueue) write(p []byte) {
	q.n += int64(len(p))
	for len(p) > 0 {
		if q.tail == nil || q.tail.w == chunkSize {
			ch := chunkPool.Get().(*chunk)
			ch.next, ch.r, ch.w = nil, 0, 0
			if q.tail == nil {
				q.head = ch
			} else {
				q.tail.next = ch
			}
			q.tail = ch
		}
		k := copy(q.tail.b[q.tail.w:], p)
		q.tail.w += k
		p = p[k:]
	}
}

// read moves the first bytes held into p, as many as fit.
func (q *chunkQueue) read(p []byte) int {
	n := 0
	for n < len(p) && q.head != nil {
		h := q.head
		k := copy(p[n:], h.b[h.r:h.w])
		h.r += k
		n += k
		if h.r == h.w {
			q.head = h.next
			if q.head == nil {
				q.tail = nil
			}
			chunkPool.Put(h)
		}
	}
	q.n -= int64(n)
	return n
}

// reset drops what q holds.
func (q *chunkQueue) reset() {
	for h := q.head; h != nil; {
		next := h.next
		chunkPool.Put(h)
		h = next
	}
	*q = chunkQueue{}
}
