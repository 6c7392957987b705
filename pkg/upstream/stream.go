package upstream

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/httphead"
)

// A streamed request body is sent by a goroutine of its own (the pump)
// while the exchange's goroutine waits for the answer: a backend may
// answer before it has read the whole body (a 401, a 413, a quota), and
// that answer goes to the client at once, which a single goroutine
// blocked writing a body the backend no longer reads could not do.
//
// The pump takes the body a piece at a time and writes each on before it
// takes the next, so a request holds at most one piece in lb: the client
// is read only as fast as the backend takes the bytes. A body that is a
// Nexter gives out its pieces where it has them (an HTTP/1.1 body: in the
// client connection's read buffer), and the pump holds no buffer of its
// own; another is read in pieces of streamChunk into a pooled buffer.
const streamChunk = 16 << 10

var chunkPool = sync.Pool{New: func() any { b := make([]byte, streamChunk); return &b }}

// Nexter is what a streamed body may offer so that it is sent straight
// from the buffer it was read into: Next returns the body's next bytes,
// which stay valid until the next call, and io.EOF with or after the
// last of them, as Read would. The pump uses Next rather than Read when
// the body has it.
type Nexter interface {
	Next() ([]byte, error)
}

// Interrupter is what a streamed body may offer to stop a Read that
// waits for its client: after Interrupt, Reads waiting and to come
// return an error promptly. Interrupt may be called from any goroutine.
// An exchange interrupts a body it stops sending (the backend answered
// early, or failed) so that its pump can end.
type Interrupter interface {
	Interrupt()
}

// BodyError is a failure of the client's side of a streamed request body
// (it broke off, passed its limit, stalled or broke its framing): the
// exchange was cut for it, and the backend is not to blame. Err is the
// body reader's error.
type BodyError struct{ Err error }

func (e *BodyError) Error() string { return "request body: " + e.Err.Error() }

// Unwrap returns the cause.
func (e *BodyError) Unwrap() error { return e.Err }

// roundTripStream is RoundTrip for a request whose body streams from
// x.Body. A connection is taken as for a request that may not be sent
// twice, and nothing is retried once a byte is sent: the body read so far
// is gone.
//
//go:noinline
func (x *Exchange) roundTripStream(req *fasthttp.Request, resp *fasthttp.Response) (*Body, error) {
	now := time.Now()
	c, _, err := x.Transport.get(now, now.Add(x.Timeout), safeReuseAge, true)
	if err != nil {
		return nil, err
	}
	if x.Abort != nil && !x.attach(c) {
		return nil, &Error{Kind: ErrAborted, Err: errAborted}
	}
	h := &req.Header
	chunked := x.BodyLen < 0
	if chunked {
		h.SetContentLength(-1) // Transfer-Encoding: chunked
	} else {
		h.SetContentLength(int(x.BodyLen))
	}
	// The head goes with the first piece of the body. Until the body is
	// sent, the answer may take as long as the client takes to send it:
	// the response timeout starts when the last byte is written.
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, x.fail(ErrSend, false, err)
	}
	p := &pump{c: c, body: x.Body, chunked: chunked, timeout: x.Timeout, wakeIn: x.Timeout, trailer: h, done: make(chan struct{})}
	p.head = h.Header()
	if x.Client != nil {
		p.wakeIn = watchInterval
	}
	go p.run()

	// The answer is awaited on the socket, with no read buffer until it
	// comes: an upload's exchange waits as long as the upload takes.
	err = c.probe.wait()
	if err == nil {
		_, err = c.reader().Peek(1)
	}
	if err != nil && isTimeout(err) && p.sentWhole() {
		// The body went whole; the answer is late: the response
		// timeout runs from the last byte sent, and the client, if
		// watched, is asked about meanwhile.
		c.reader()
		err = x.waitFirst(c, p.sent.Add(x.Timeout))
	}
	if err != nil {
		// The backend failed, or the client's side did (the pump then
		// closed the connection): stop sending, and say whose fault.
		p.end()
		c.Close()
		if p.readErr != nil && p.readErr != errStopped {
			if x.Abort.Fired() {
				return nil, &Error{Kind: ErrAborted, Err: errAborted}
			}
			return nil, &BodyError{Err: p.readErr}
		}
		kind := ErrResponse
		if p.writeErr != nil && !p.stopped.Load() {
			kind = ErrSend
		}
		return nil, x.fail(kind, false, err)
	}
	// An answer. If it came before the whole body was sent (a backend
	// refusing it early, or one answering as it reads, an echo), the
	// pump goes on sending while the answer is read and passed on: the
	// backend decides when it has had enough. The connection carries
	// nothing after such an exchange.
	sending := p.answer(x.Timeout)
	if sending && !x.Duplex {
		p.end()
		sending = false
	}
	// The connection goes back to the pool only after a body sent whole.
	b, err := x.finish(req, resp, c, sending || !p.sentWhole())
	if sending && b != nil && !b.Switched() {
		b.pump = p // stopped when the answer has been passed on
		return b, nil
	}
	// The answer is in whole (or failed, or switched protocols: no body
	// goes after that): the body is not wanted any more.
	p.end()
	return b, err
}

// pump sends a streamed body to the backend. Its results are read once
// done is closed.
type pump struct {
	c       *backendConn
	body    io.Reader
	chunked bool
	timeout time.Duration
	trailer *fasthttp.RequestHeader // where a chunked body's trailers are, once it ended
	done    chan struct{}
	stopped atomic.Bool // stop was called

	// The pump writes to the socket itself, with no write buffer: head
	// is the request head, sent with the first piece of the body in one
	// writev of vec (its bytes are the header's own buffer, which the
	// trailers are later written into: see writeEnd); line is a chunk's
	// size line.
	head []byte
	vec  net.Buffers
	iov  [4][]byte
	line [20]byte

	wakeIn time.Duration // how soon to wake the exchange once the body is sent
	sent   time.Time     // when the body was sent whole

	// mu orders the pump's and the exchange's settings of the
	// connection's read deadline: once the answer came (answered), the
	// exchange's reads set their own.
	mu       sync.Mutex
	answered bool

	readErr  error // the client's side failed
	writeErr error // the backend's side failed
}

var errStopped = errors.New("stopped: the backend answered before the body was sent")

func (p *pump) run() {
	defer close(p.done)
	nb, direct := p.body.(Nexter)
	var buf []byte
	if !direct {
		bp := chunkPool.Get().(*[]byte)
		defer chunkPool.Put(bp)
		buf = *bp
	}
	for {
		var piece []byte
		var rerr error
		if direct {
			piece, rerr = nb.Next()
		} else {
			var n int
			n, rerr = p.body.Read(buf)
			piece = buf[:n]
		}
		if len(piece) > 0 {
			if err := p.c.SetWriteDeadline(time.Now().Add(p.timeout)); err != nil {
				p.writeErr = err
				return
			}
			if err := p.write(piece); err != nil {
				p.writeErr = err
				p.wake()
				return
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if p.stopped.Load() {
				// The exchange stopped it to read an early answer.
				p.readErr = errStopped
				return
			}
			p.readErr = rerr
			// Cut the backend off: a request that ends short must not
			// look complete to it, and the exchange's wait ends.
			_ = p.c.Conn.Close()
			return
		}
	}
	if err := p.writeEnd(); err != nil {
		p.writeErr = err
		p.wake()
		return
	}
	// Sent whole: the response timeout runs from now. A watched
	// client is asked about within a second.
	p.sent = time.Now()
	p.setReadDeadline(p.sent.Add(min(p.timeout, p.wakeIn)))
}

// write sends a piece of the body, framed as a chunk if the body is
// chunked, and the head before it if it has not gone yet: one writev.
func (p *pump) write(piece []byte) error {
	p.vec = p.iov[:0]
	if p.head != nil {
		p.vec = append(p.vec, p.head)
		p.head = nil
	}
	if p.chunked {
		line := strconv.AppendInt(p.line[:0], int64(len(piece)), 16)
		p.vec = append(p.vec, append(line, '\r', '\n'), piece, crlf)
	} else {
		p.vec = append(p.vec, piece)
	}
	_, err := p.vec.WriteTo(p.c.Conn)
	return err
}

var crlf = []byte("\r\n")

// writeEnd sends what follows the last piece of the body: the head, if
// no piece carried it (an empty chunked body), and for a chunked body the
// last chunk and the trailers (see writeTrailers). The head goes first,
// on its own: its bytes are the header's, which the trailers are written
// into.
func (p *pump) writeEnd() error {
	if p.head != nil {
		head := p.head
		p.head = nil
		if _, err := p.c.Conn.Write(head); err != nil {
			return err
		}
	}
	if !p.chunked {
		return nil
	}
	p.vec = append(p.iov[:0], lastChunk, httphead.AppendTrailers(nil, p.trailer))
	_, err := p.vec.WriteTo(p.c.Conn)
	return err
}

var lastChunk = []byte("0\r\n")

// setReadDeadline sets the connection's read deadline, unless the answer
// came meanwhile.
func (p *pump) setReadDeadline(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.answered {
		_ = p.c.SetReadDeadline(t) // an error shows on the read
	}
}

// answer records that the answer came, gives its reads the response
// timeout, and reports whether the pump is still sending the body.
func (p *pump) answer(timeout time.Duration) (sending bool) {
	p.mu.Lock()
	p.answered = true
	_ = p.c.SetReadDeadline(time.Now().Add(timeout)) // an error shows on the read
	p.mu.Unlock()
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// end ends a pump that may still be sending, and waits for it.
func (p *pump) end() {
	select {
	case <-p.done:
	default:
		p.stop()
		<-p.done
	}
}

// clientFailed reports whether the pump, once done, stopped because the
// client's side of the body failed (it went away, stalled, or broke its
// framing), not because it was stopped.
func (p *pump) clientFailed() bool { return p.readErr != nil && p.readErr != errStopped }

// sentWhole reports whether the pump is done and sent the whole body.
func (p *pump) sentWhole() bool {
	select {
	case <-p.done:
		return p.readErr == nil && p.writeErr == nil
	default:
		return false
	}
}

// wake bounds the exchange's wait for an answer once the body cannot be
// sent: a backend that stopped reading may have answered, and is given a
// moment for it; one that said nothing fails.
func (p *pump) wake() {
	p.setReadDeadline(time.Now().Add(min(p.timeout, time.Second)))
}

// stop makes a running pump end soon: writes to the backend fail at once,
// and a Read waiting for the client is interrupted if the body allows it.
func (p *pump) stop() {
	p.stopped.Store(true)
	_ = p.c.SetWriteDeadline(time.Unix(1, 0)) // an error shows on the write
	if i, ok := p.body.(Interrupter); ok {
		i.Interrupt()
	}
}

// writeTrailers ends a chunked body: the last chunk, the trailer fields
// the client sent less those lb owns (httphead.AppendTrailers), and the
// blank line.
func writeTrailers(w *bufio.Writer, h *fasthttp.RequestHeader) error {
	if _, err := w.WriteString("0\r\n"); err != nil {
		return err
	}
	_, err := w.Write(httphead.AppendTrailers(nil, h))
	return err
}
