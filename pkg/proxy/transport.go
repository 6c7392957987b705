package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/httpstatus"
)

// Buffer sizes of a backend connection. The read buffer bounds a backend's
// response head (as HAProxy's 16 KiB bufsize does).
const (
	backendReadBuffer  = 16 << 10
	backendWriteBuffer = 4 << 10
	// smallWrite is the largest request body sent without a write
	// deadline: with its head it fits in any socket buffer.
	smallWrite = 16 << 10
)

// Connection reuse limits. A pooled connection idle longer than
// IdleConnTimeout is closed rather than reused: many servers close idle
// keep-alive connections after a few seconds (gunicorn 2 s, Apache and
// Node.js 5 s), and a request sent just as they do is lost. A request that
// cannot safely be sent twice (POST and friends) takes a pooled connection
// only if it was used within safeReuseAge, when the race is all but
// impossible; otherwise it opens a new one.
//
// Every reuse is checked first for a close or stray bytes from the backend
// (alive), even of a connection that was answering a moment ago: bytes a
// faulty backend sends after its answer (a body to a HEAD, more than its
// Content-Length) arrive just then, and would be read as the next
// client's answer.
const (
	IdleConnTimeout = 2 * time.Second
	safeReuseAge    = 500 * time.Millisecond
	maxIdleConns    = 1024
)

// Transport sends requests to one backend over pooled keep-alive
// connections. It is safe for concurrent use.
type Transport struct {
	addr           string
	connectTimeout atomic.Int64 // nanoseconds

	mu     sync.Mutex
	idle   []*backendConn // most recently used last
	closed bool
}

// NewTransport returns a transport to addr that gives up connecting after
// connectTimeout.
func NewTransport(addr string, connectTimeout time.Duration) *Transport {
	t := &Transport{addr: addr}
	t.connectTimeout.Store(int64(connectTimeout))
	return t
}

// SetConnectTimeout changes the connect timeout of new connections (a
// reload that keeps the backend).
func (t *Transport) SetConnectTimeout(d time.Duration) { t.connectTimeout.Store(int64(d)) }

// Addr is the backend address.
func (t *Transport) Addr() string { return t.addr }

type backendConn struct {
	net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	// fd is the socket, for alive's peek; -1 when the connection is not a
	// plain socket.
	fd      int
	peekBuf [1]byte
	// writeDeadline is whether a write deadline is set.
	writeDeadline bool
}

func newBackendConn(nc net.Conn) *backendConn {
	c := &backendConn{
		Conn: nc,
		br:   bufio.NewReaderSize(nc, backendReadBuffer),
		bw:   bufio.NewWriterSize(nc, backendWriteBuffer),
		fd:   -1,
	}
	if sc, ok := nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) { c.fd = int(fd) }) //nolint:errcheck
		}
	}
	return c
}

// alive reports whether a pooled connection can carry a request: the
// backend has not closed it, and has not sent bytes nobody asked for
// (which would be taken for the next response). It costs one
// non-blocking recv with MSG_PEEK; NGINX and HAProxy learn the same from
// their event loops while the connection idles. The connection must be
// open and owned by the caller.
func (c *backendConn) alive() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	if c.fd < 0 {
		return true
	}
	// A raw syscall: it cannot block (MSG_DONTWAIT), so it needs none of
	// the scheduler's bookkeeping for blocking calls.
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(c.fd),
		uintptr(unsafe.Pointer(&c.peekBuf[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno == syscall.EAGAIN
}

// setDeadlines arms the exchange's deadlines: reading always; writing
// only for a request large enough that a write could block on a backend
// that stopped reading (a small one fits in the socket buffer). Each
// deadline change costs a timer update, so one not needed is not set.
func (c *backendConn) setDeadlines(deadline time.Time, bigWrite bool) error {
	if bigWrite {
		c.writeDeadline = true
		return c.SetDeadline(deadline)
	}
	if c.writeDeadline {
		c.writeDeadline = false
		if err := c.SetWriteDeadline(time.Time{}); err != nil {
			return err
		}
	}
	return c.SetReadDeadline(deadline)
}

// pop takes the most recently used pooled connection if it has been idle
// less than maxAge, or returns nil.
func (t *Transport) pop(now time.Time, maxAge time.Duration) *backendConn {
	t.mu.Lock()
	n := len(t.idle)
	if n == 0 {
		t.mu.Unlock()
		return nil
	}
	c := t.idle[n-1]
	switch age := now.Sub(c.idleSince); {
	case age < maxAge:
		t.idle[n-1] = nil
		t.idle = t.idle[:n-1]
		t.mu.Unlock()
		return c
	case age >= IdleConnTimeout:
		// The newest is too old, so all are: drop them.
		stale := t.idle
		t.idle = nil
		t.mu.Unlock()
		for _, s := range stale {
			s.Close()
		}
		return nil
	}
	t.mu.Unlock()
	return nil
}

// get returns a live pooled connection used within maxAge, or a new one,
// with its deadlines set.
func (t *Transport) get(now, deadline time.Time, maxAge time.Duration, bigWrite bool) (c *backendConn, reused bool, err error) {
	for {
		c = t.pop(now, maxAge)
		if c == nil {
			break
		}
		if c.alive() && c.setDeadlines(deadline, bigWrite) == nil {
			return c, true, nil
		}
		c.Close()
	}
	nc, err := t.dial()
	if err != nil {
		return nil, false, &Error{Kind: ErrConnect, Err: err}
	}
	c = newBackendConn(nc)
	if err := c.setDeadlines(deadline, bigWrite); err != nil {
		c.Close()
		return nil, false, &Error{Kind: ErrConnect, Err: err}
	}
	return c, false, nil
}

// dial opens a connection to the backend on a goroutine of its own. The
// dialer's call path is the deepest a request takes: on the client
// connection's goroutine it would double that goroutine's stack, which
// then stays doubled while the connection idles.
func (t *Transport) dial() (net.Conn, error) {
	type result struct {
		nc  net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		d := net.Dialer{Timeout: time.Duration(t.connectTimeout.Load()), KeepAlive: 30 * time.Second}
		nc, err := d.Dial("tcp", t.addr)
		done <- result{nc, err}
	}()
	r := <-done
	return r.nc, r.err
}

// put returns a connection to the pool after a complete exchange. A
// connection with unread bytes is closed instead: they are not the answer
// to any request.
func (t *Transport) put(c *backendConn) {
	if c.br.Buffered() > 0 {
		c.Close()
		return
	}
	c.idleSince = time.Now()
	t.mu.Lock()
	if t.closed || len(t.idle) >= maxIdleConns {
		t.mu.Unlock()
		c.Close()
		return
	}
	t.idle = append(t.idle, c)
	t.mu.Unlock()
}

// CloseIdle closes pooled connections idle for IdleConnTimeout or more.
func (t *Transport) CloseIdle(now time.Time) {
	t.mu.Lock()
	n := 0
	for n < len(t.idle) && now.Sub(t.idle[n].idleSince) >= IdleConnTimeout {
		n++
	}
	stale := append([]*backendConn(nil), t.idle[:n]...)
	t.idle = append(t.idle[:0], t.idle[n:]...)
	t.mu.Unlock()
	for _, c := range stale {
		c.Close()
	}
}

// Close closes every pooled connection; connections in use close when
// their exchange ends.
func (t *Transport) Close() {
	t.mu.Lock()
	stale := t.idle
	t.idle, t.closed = nil, true
	t.mu.Unlock()
	for _, c := range stale {
		c.Close()
	}
}

// IdleConns is the number of pooled connections.
func (t *Transport) IdleConns() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.idle)
}

// ErrorKind says at which step an exchange with a backend failed, which
// decides the status code and whether another attempt is safe.
type ErrorKind int

// Error kinds.
const (
	// ErrConnect: the connection could not be opened; nothing was sent.
	ErrConnect ErrorKind = iota + 1
	// ErrStale: a pooled connection turned out closed before any byte of
	// a response arrived; the backend most likely never saw the request.
	ErrStale
	// ErrSend: writing the request failed.
	ErrSend
	// ErrTimeout: no response within response_timeout.
	ErrTimeout
	// ErrResponse: the response was not valid HTTP, or broke off.
	ErrResponse
)

// Error is a failed exchange with a backend.
type Error struct {
	Kind ErrorKind
	Err  error
}

func (e *Error) Error() string {
	var what string
	switch e.Kind {
	case ErrConnect:
		what = "connect"
	case ErrStale:
		what = "reused connection closed"
	case ErrSend:
		what = "send request"
	case ErrTimeout:
		what = "response timeout"
	default:
		what = "bad response"
	}
	return what + ": " + describe(e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// describe strips the "read tcp 1.2.3.4:5->6.7.8.9:80:" prefixes of net
// errors, which log lines carry as fields already.
func describe(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) && se.Err != nil {
		err = se.Err
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isClosed reports errors that mean the peer closed or reset the
// connection.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// exchange is one request/response on a backend connection.
type exchange struct {
	t       *Transport
	timeout time.Duration
	// maxBuffered is the largest body read whole before the connection is
	// released; larger or unknown-length bodies are streamed.
	maxBuffered int
	// replayable is whether the request may be sent twice (an idempotent
	// method), which decides how old a pooled connection it may take.
	replayable bool
	// yield lets other goroutines run between sending the request and
	// reading the answer. An HTTP/2 connection starts the requests of a
	// whole frame batch at once: when each sends before any reads, the
	// answers are usually there by the first read, which saves a read that
	// would find nothing and a trip through the poller per request (8% of
	// the CPU per HTTP/2 request on a busy core). HTTP/1.1 clients gain
	// nothing from it and their tail latency suffers, so they do not yield.
	yield bool
}

// switched handles a 101 answer. To a request that asked to switch
// protocols (it still carries Upgrade: httphead.Prepare removes the header
// from every other) the connection becomes a tunnel, returned as a
// stream marked so; to any other it is a broken backend. It is kept out
// of roundTrip, whose stack frame sits under every exchange.
//
//go:noinline
func switched(req *fasthttp.Request, c *backendConn) (*bodyStream, error) {
	if len(req.Header.PeekBytes(hUpgrade)) == 0 {
		c.Close()
		return nil, &Error{Kind: ErrResponse, Err: errors.New("unexpected 101 Switching Protocols")}
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, &Error{Kind: ErrResponse, Err: err}
	}
	s := bodyStreamPool.Get().(*bodyStream)
	*s = bodyStream{c: c, tunnel: true}
	return s, nil
}

// tunnelConn is a backend connection that switched protocols with bytes
// already in its buffer (sent right behind the 101): reads drain the
// buffer first.
type tunnelConn struct{ *backendConn }

func (c tunnelConn) Read(p []byte) (int, error) { return c.br.Read(p) }

// CloseWrite passes a client's half-close on.
func (c tunnelConn) CloseWrite() error {
	if tc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return tc.CloseWrite()
	}
	return nil
}

// tunnelSide is what a tunnel pipes to: the socket itself when nothing
// waits in the buffer (so that bulk transfers can splice), else a reader
// that drains the buffer first.
func (c *backendConn) tunnelSide() net.Conn {
	if c.br.Buffered() == 0 {
		return c.Conn
	}
	return tunnelConn{c}
}

// roundTrip writes req to the backend and reads the response head into
// resp. A small body is read too and the connection pooled again at once;
// a large one is left on the connection and returned as a stream, which
// owns the connection until it is closed. req must not be a body stream.
// Without reuse, it opens a new connection.
func (x *exchange) roundTrip(req *fasthttp.Request, resp *fasthttp.Response, reuse bool) (*bodyStream, error) {
	now := time.Now()
	var maxAge time.Duration
	switch {
	case reuse && x.replayable:
		maxAge = IdleConnTimeout
	case reuse:
		maxAge = safeReuseAge
	}
	c, reused, err := x.t.get(now, now.Add(x.timeout), maxAge, len(req.Body()) > smallWrite)
	if err != nil {
		return nil, err
	}
	err = writeRequest(c.bw, req)
	if err == nil {
		err = c.bw.Flush()
	}
	closeAfter := false
	if err != nil {
		// A backend may refuse a request before reading all of its body
		// (413, 401) and close. Its answer may be waiting: deliver it
		// rather than a 502.
		if reused || !isClosed(err) || !x.earlyAnswer(c) {
			c.Close()
			return nil, x.fail(ErrSend, reused, err)
		}
		closeAfter = true
	} else {
		if x.yield {
			runtime.Gosched()
		}
		// Wait for the first byte on its own so that "closed before
		// answering" can be told apart from a broken answer.
		if _, err := c.br.Peek(1); err != nil {
			c.Close()
			return nil, x.fail(ErrResponse, reused, err)
		}
	}
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
	case cl >= 0 && cl <= x.maxBuffered:
		if err := resp.ReadBody(c.br, cl); err != nil {
			c.Close()
			return nil, x.fail(ErrResponse, false, err)
		}
		x.release(c, closeAfter)
		return nil, nil
	}
	s := acquireBodyStream(c, x.t, int64(cl), x.timeout, closeAfter)
	resp.SetBodyStream(s, cl)
	return s, nil
}

// writeRequest writes a request httphead.Prepare has made ready, as
// Request.Write would, less the work httphead.Prepare has done (the target
// and Host from the parsed URI, no trailers) and the forms lb never
// parses. It exists for the stack: every exchange of an HTTP/1.1 client
// runs on that connection's goroutine, whose stack stays at 4 KiB while it
// idles only if the deepest request path fits in 4 KiB, and Request.Write
// alone takes 472 bytes of it (TestIdleConnectionStack). The fuzz test
// checks that both write the same bytes.
func writeRequest(w *bufio.Writer, req *fasthttp.Request) error {
	h := &req.Header
	if len(h.PeekTrailerKeys()) > 0 || len(h.Host()) == 0 {
		return req.Write(w) // chunked with trailers, or its error
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

// earlyAnswer reports whether a response head is waiting on a connection
// whose request could not be written in full.
func (x *exchange) earlyAnswer(c *backendConn) bool {
	_ = c.SetReadDeadline(time.Now().Add(min(x.timeout, time.Second)))
	b, err := c.br.Peek(5)
	return err == nil && string(b) == "HTTP/"
}

func (x *exchange) release(c *backendConn, closeAfter bool) {
	if closeAfter {
		c.Close()
		return
	}
	x.t.put(c)
}

// fail classifies an error; a reused connection that failed before any
// response byte is stale.
func (x *exchange) fail(kind ErrorKind, reused bool, err error) error {
	switch {
	case isTimeout(err):
		return &Error{Kind: ErrTimeout, Err: err}
	case reused && isClosed(err):
		return &Error{Kind: ErrStale, Err: err}
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
