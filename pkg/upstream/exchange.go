package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/offloadlb/lb/internal/abort"
	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/offloadlb/lb/internal/httpstatus"
	"github.com/valyala/fasthttp"
)

var hUpgrade = []byte("Upgrade")

// Exchange is how one request is sent to a backend. A caller fills one in
// on its own stack for each request, and sets Transport for each attempt;
// it is not safe for concurrent use (the Transport it names is). The zero
// value sends nothing: Transport must be set, and a zero Timeout makes
// every exchange time out.
type Exchange struct {
	// Transport is the backend the request goes to.
	Transport *Transport
	// Timeout bounds the wait for the response head, and each read of a
	// streamed body.
	Timeout time.Duration
	// MaxBuffered is the largest body read whole before the connection is
	// released; larger or unknown-length bodies are streamed.
	MaxBuffered int
	// Replayable is whether the request may be sent twice (an idempotent
	// method), which decides how old a pooled connection it may take and
	// whether one found closed is tried again on a new connection.
	Replayable bool
	// Yield lets other goroutines run between sending the request and
	// reading the answer. An HTTP/2 connection starts the requests of a
	// whole frame batch at once: when each sends before any reads, the
	// answers are usually there by the first read, which saves a read that
	// would find nothing and a trip through the poller per request (8% of
	// the CPU per HTTP/2 request on a busy core). HTTP/1.1 clients gain
	// nothing from it and their tail latency suffers, so they do not yield.
	Yield bool
	// Abort, when set, cuts the exchange when the client goes away: the
	// backend connection is closed and the exchange fails as ErrAborted.
	// nil for none.
	Abort *abort.Signal
	// Body, when set, is the request body, streamed to the backend as it
	// is read (the request's own body is not sent), BodyLen bytes long,
	// or chunked when BodyLen is negative. It is read from another
	// goroutine than RoundTrip's, and done with when RoundTrip returns.
	// An exchange with a Body is tried once: the failure it returns is
	// the backend's (an *Error) or the body's (a *BodyError).
	Body    io.Reader
	BodyLen int64
	// Duplex is whether Body may go on being sent after the answer
	// came, while the answer is passed on (see Body.Sending): only a
	// body whose reading touches nothing the caller uses once RoundTrip
	// returns (an HTTP/1.1 body of known length: a chunked one's
	// trailers, and HTTP/2's, are read into the request's head).
	Duplex bool
	// Client, when set, is asked every watchInterval while the answer is
	// awaited whether the client is still there (HTTP/1.1, whose
	// clients' going away nothing else reports while their request is
	// at a backend): if it is gone, the exchange is cut as ErrAborted.
	Client Client
}

// Client is the far end of a request, as an exchange asks about it.
type Client interface {
	// Gone reports whether the client has gone away.
	Gone() bool
}

// watchInterval is how often an exchange with a Client asks about it.
const watchInterval = 500 * time.Millisecond

// RoundTrip writes req to the backend and reads the response head into
// resp. A small body is read too and the connection pooled again at once;
// a large or unknown-length one is left on the connection and returned as
// a Body, set as resp's body stream, which owns the connection until it is
// closed. A 101 answer to a request that asked to switch protocols (it
// carries Upgrade) returns a Body that Switched, and no body is set.
//
// req is written as it is, as Request.Write would write it once it had
// taken the target and Host from the parsed URI: the caller sets both so,
// and leaves no userinfo in the URI. req must not have a body stream. A
// request written on a pooled connection the backend turns out to have
// closed, before any byte of an answer came back, is sent again on a new
// connection if it is Replayable. A failure is an *Error.
func (x *Exchange) RoundTrip(req *fasthttp.Request, resp *fasthttp.Response) (*Body, error) {
	if x.Body != nil {
		return x.roundTripStream(req, resp)
	}
	c, closeAfter, err := x.send(req, resp)
	if err != nil {
		return nil, err
	}
	return x.finish(req, resp, c, closeAfter)
}

// send writes req on a connection and waits for the first byte of the
// answer. It is its own frame, popped before finish reads the answer,
// for the stack: RoundTrip's frame sits under every exchange.
func (x *Exchange) send(req *fasthttp.Request, resp *fasthttp.Response) (c *backendConn, closeAfter bool, err error) {
	// Send, on a pooled connection first. The retry on a stale one is a
	// loop rather than a second call, for the stack: this frame sits
	// under every exchange.
	for reuse := true; ; reuse = false {
		now := time.Now()
		var maxAge time.Duration
		switch {
		case reuse && x.Replayable:
			maxAge = IdleConnTimeout
		case reuse:
			maxAge = safeReuseAge
		}
		big := len(req.Body()) > smallWrite
		deadline := now.Add(x.Timeout)
		readBy := deadline
		if x.Client != nil && !big {
			// The first wake to ask about the client (see waitFirst),
			// set with the connection's deadlines: none more per
			// request.
			if wake := now.Add(watchInterval); wake.Before(deadline) {
				readBy = wake
			}
		}
		nc, reused, err := x.Transport.get(now, readBy, maxAge, big)
		if err != nil {
			return nil, false, err
		}
		if x.Abort != nil && !x.attach(nc) {
			return nil, false, &Error{Kind: ErrAborted, Err: errAborted}
		}
		nc.reader() // for the answer
		bw := nc.writer()
		err = writeRequest(bw, req)
		if err == nil {
			err = bw.Flush()
		}
		kind := ErrResponse
		if err != nil {
			// A backend may refuse a request before reading all of its
			// body (413, 401) and close. Its answer may be waiting:
			// deliver it rather than a 502.
			if !reused && isClosed(err) && x.earlyAnswer(nc) {
				c, closeAfter = nc, true
				break
			}
			kind = ErrSend
		} else {
			if x.Yield {
				runtime.Gosched()
			}
			// Wait for the first byte on its own so that "closed before
			// answering" can be told apart from a broken answer.
			if err = x.waitFirst(nc, deadline); err == nil {
				c = nc
				break
			}
		}
		nc.Close()
		e := x.fail(kind, reused, err)
		if e.Kind != ErrStale || !x.Replayable {
			return nil, false, e
		}
		// The backend closed a pooled connection as it was reused: it
		// never saw the request. Try once more on a new one (which
		// cannot be stale).
		resp.ResetBody()
	}
	return c, closeAfter, nil
}

// waitFirst waits for the first byte of an answer on c, until deadline
// (the response timeout). With a Client the read deadline set on c is the
// first wake: on each, the client is asked whether it is still there,
// and the wait goes on, watchInterval at a time.
func (x *Exchange) waitFirst(c *backendConn, deadline time.Time) error {
	_, err := c.br.Peek(1)
	if err == nil || x.Client == nil {
		return err
	}
	return x.watchFirst(c, deadline, err)
}

//go:noinline
func (x *Exchange) watchFirst(c *backendConn, deadline time.Time, err error) error {
	for {
		if !isTimeout(err) {
			return err
		}
		now := time.Now()
		if !now.Before(deadline) {
			return err
		}
		if x.Client.Gone() {
			return &Error{Kind: ErrAborted, Err: errAborted}
		}
		wake := now.Add(watchInterval)
		if deadline.Before(wake) {
			wake = deadline
		}
		if err := c.SetReadDeadline(wake); err != nil {
			return err
		}
		if _, err = c.br.Peek(1); err == nil {
			return nil
		}
	}
}

// finish reads the response to req from c, on which req was sent whole
// (or as much of it as the backend took before answering: then
// closeAfter is set).
func (x *Exchange) finish(req *fasthttp.Request, resp *fasthttp.Response, c *backendConn, closeAfter bool) (*Body, error) {
	if err := readHead(c.br, &resp.Header); err != nil {
		c.Close()
		return nil, x.fail(ErrResponse, false, err)
	}
	closeAfter = closeAfter || resp.Header.ConnectionClose()
	if resp.Header.StatusCode() == fasthttp.StatusSwitchingProtocols {
		return switched(req, c)
	}
	// The backend's wish to close applies to its connection, not the
	// client's.
	resp.Header.ResetConnectionClose()

	cl := resp.Header.ContentLength()
	switch {
	case req.Header.IsHead() || httpstatus.NoBody(resp.Header.StatusCode()):
		resp.SkipBody = req.Header.IsHead()
		x.release(c, closeAfter)
		return nil, nil
	case cl == 0:
		x.release(c, closeAfter)
		return nil, nil
	case cl > 0 && cl <= x.MaxBuffered && bodymem.Take(int64(cl)):
		// Read whole, and held (counted in the process's body memory)
		// until the client has it; when the process holds all it may,
		// the body streams instead.
		if err := resp.ReadBody(c.br, cl); err != nil {
			bodymem.Give(int64(cl))
			c.Close()
			return nil, x.fail(ErrResponse, false, err)
		}
		bodymem.HoldFor(req, int64(cl))
		x.release(c, closeAfter)
		return nil, nil
	}
	s := acquireBody(c, x.Transport, int64(cl), x.Timeout, closeAfter)
	resp.SetBodyStream(s, cl)
	return s, nil
}

// switched handles a 101 answer. To a request that asked to switch
// protocols (it still carries Upgrade: the proxy removes the header from
// every other) the connection becomes a tunnel, returned as a Body
// marked so; to any other it is a broken backend. It is kept out of
// RoundTrip, whose stack frame sits under every exchange.
//
//go:noinline
func switched(req *fasthttp.Request, c *backendConn) (*Body, error) {
	if len(req.Header.PeekBytes(hUpgrade)) == 0 {
		c.Close()
		return nil, &Error{Kind: ErrResponse, Err: errors.New("unexpected 101 Switching Protocols")}
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, &Error{Kind: ErrResponse, Err: err}
	}
	if c.abort != nil {
		// A tunnel is the caller's to end, client and all.
		c.abort.Detach(c.Conn)
		c.abort = nil
	}
	s := bodyPool.Get().(*Body)
	*s = Body{c: c, tunnel: true}
	return s, nil
}

// writeRequest writes a request in the form RoundTrip takes, as
// Request.Write would, less the work the caller has done (the target and
// Host from the parsed URI) and the forms lb never parses; a request with
// trailers goes to Request.Write. It exists for the stack: every exchange
// of an HTTP/1.1 client runs on that connection's goroutine, whose stack
// stays at 4 KiB while it idles only if the deepest request path fits in
// 4 KiB, and Request.Write alone takes 472 bytes of it (pkg/server's
// TestIdleConnectionStack). FuzzWriteRequest checks that both write the
// same bytes.
func writeRequest(w *bufio.Writer, req *fasthttp.Request) error {
	h := &req.Header
	if len(h.Host()) == 0 {
		return req.Write(w) // its error
	}
	if len(h.PeekTrailerKeys()) > 0 {
		return writeChunked(w, req)
	}
	body := req.Body()
	hasBody := len(body) != 0 || !(h.IsGet() || h.IsHead())
	if hasBody {
		h.SetContentLength(len(body))
	}
	if err := h.Write(w); err != nil || !hasBody {
		return err
	}
	_, err := w.Write(body)
	return err
}

// writeChunked writes a request whose body came with trailer fields:
// chunked, so that they can follow it (see writeTrailers).
//
//go:noinline
func writeChunked(w *bufio.Writer, req *fasthttp.Request) error {
	h := &req.Header
	h.SetContentLength(-1)
	// The head without the Trailer field fasthttp writes from the names
	// it read: it would announce the fields writeTrailers leaves out
	// (and a backend that trusts it may wait for them). Trailer is
	// advisory (RFC 9110 section 6.6.2).
	head := h.Header()
	if i := bytes.Index(head, []byte("\r\nTrailer: ")); i >= 0 {
		if j := bytes.Index(head[i+2:], []byte("\r\n")); j >= 0 {
			if _, err := w.Write(head[:i+2]); err != nil {
				return err
			}
			head = head[i+2+j+2:]
		}
	}
	if _, err := w.Write(head); err != nil {
		return err
	}
	if body := req.Body(); len(body) > 0 {
		if _, err := fmt.Fprintf(w, "%x\r\n", len(body)); err != nil {
			return err
		}
		if _, err := w.Write(body); err != nil {
			return err
		}
		if _, err := w.WriteString("\r\n"); err != nil {
			return err
		}
	}
	return writeTrailers(w, h)
}

// earlyAnswer reports whether a response head is waiting on a connection
// whose request could not be written in full.
func (x *Exchange) earlyAnswer(c *backendConn) bool {
	_ = c.SetReadDeadline(time.Now().Add(min(x.Timeout, time.Second)))
	b, err := c.br.Peek(5)
	return err == nil && string(b) == "HTTP/"
}

func (x *Exchange) release(c *backendConn, closeAfter bool) {
	if closeAfter {
		c.Close()
		return
	}
	x.Transport.put(c)
}

// fail classifies an error; a reused connection that failed before any
// response byte is stale.
func (x *Exchange) fail(kind ErrorKind, reused bool, err error) *Error {
	switch {
	case x.Abort.Fired():
		return &Error{Kind: ErrAborted, Err: errAborted}
	case isTimeout(err):
		return &Error{Kind: ErrTimeout, Err: err}
	case reused && isClosed(err):
		return &Error{Kind: ErrStale, Err: err}
	}
	if e, ok := err.(*Error); ok {
		return e
	}
	return &Error{Kind: kind, Err: err}
}

// readHead reads a response head, skipping interim 1xx responses (100
// Continue, 103 Early Hints) other than 101.
func readHead(br *bufio.Reader, h *fasthttp.ResponseHeader) error {
	for range 100 {
		if err := h.Read(br); err != nil {
			return err
		}
		switch code := h.StatusCode(); {
		case code < 100 || code > 999:
			return fmt.Errorf("invalid status code %d", code)
		case code >= 200 || code == fasthttp.StatusSwitchingProtocols:
			return nil
		}
	}
	return errors.New("too many interim responses")
}

// errAborted is the cause of an ErrAborted failure.
var errAborted = errors.New("the client went away")

// attach hands c to x's abort signal; false, with c pooled again, when
// the signal has fired already (nothing was sent on c).
//
//go:noinline
func (x *Exchange) attach(c *backendConn) bool {
	if !x.Abort.Attach(c.Conn) {
		x.Transport.put(c)
		return false
	}
	c.abort = x.Abort
	return true
}
