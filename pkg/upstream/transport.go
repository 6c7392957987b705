package upstream

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/offloadlb/lb/internal/abort"
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

// Connection reuse limits. A pooled connection idle for IdleConnTimeout or
// longer is closed rather than reused: many servers close idle
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

// Transport is the pool of keep-alive connections to one backend, which
// Exchange sends requests over. It is safe for concurrent use, and stays
// usable after Close (connections then close when their exchange ends,
// instead of being pooled). The zero Transport has no address: make one
// with NewTransport.
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
// reload that keeps the backend); it may be called while requests are
// sent.
func (t *Transport) SetConnectTimeout(d time.Duration) { t.connectTimeout.Store(int64(d)) }

type backendConn struct {
	net.Conn
	// br and bw are made on first use (reader, writer): a connection
	// that has only carried a streamed request body so far has neither,
	// as the body goes from the client's buffer to the socket and the
	// answer is awaited on the socket itself (see roundTripStream).
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	probe     probe // alive's look at the socket
	// writeDeadline is whether a write deadline is set.
	writeDeadline bool
	// abort, when set, may close the connection from another goroutine
	// (the client went away); it is detached before the connection is
	// pooled again or closed.
	abort *abort.Signal
}

// Close closes the connection, detached from its abort signal first.
func (c *backendConn) Close() error {
	if c.abort != nil {
		c.abort.Detach(c.Conn)
		c.abort = nil
	}
	return c.Conn.Close()
}

func newBackendConn(nc net.Conn) *backendConn {
	c := &backendConn{Conn: nc}
	c.probe.init(nc)
	return c
}

// reader returns the connection's read buffer, made on first use.
func (c *backendConn) reader() *bufio.Reader {
	if c.br == nil {
		c.makeReader()
	}
	return c.br
}

// writer returns the connection's write buffer, made on first use.
func (c *backendConn) writer() *bufio.Writer {
	if c.bw == nil {
		c.makeWriter()
	}
	return c.bw
}

// makeReader and makeWriter are kept out of reader and writer, which
// are inlined into Exchange.send: its frame sits under every exchange,
// on the client connection's goroutine, whose stack stays at 4 KiB while
// it idles only if the deepest request path fits in it (pkg/server's
// TestIdleConnectionStack).
//
//go:noinline
func (c *backendConn) makeReader() { c.br = bufio.NewReaderSize(c.Conn, backendReadBuffer) }

//go:noinline
func (c *backendConn) makeWriter() { c.bw = bufio.NewWriterSize(c.Conn, backendWriteBuffer) }

// buffered reports how many bytes wait in the read buffer.
func (c *backendConn) buffered() int {
	if c.br == nil {
		return 0
	}
	return c.br.Buffered()
}

// alive reports whether a pooled connection can carry a request: the
// backend has not closed it, and has not sent bytes nobody asked for
// (which would be taken for the next response). The connection must be
// open and owned by the caller.
func (c *backendConn) alive() bool {
	return c.buffered() == 0 && c.probe.idle()
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
		// The deadlines first, so that a connection found alive is
		// ready for this exchange as it is returned.
		if c.setDeadlines(deadline, bigWrite) == nil && c.alive() {
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
	if c.abort != nil {
		fired := c.abort.Detach(c.Conn)
		c.abort = nil
		if fired {
			// Fire may have closed it as it was being released.
			_ = c.Conn.Close() // closed already, or now
			return
		}
	}
	if c.buffered() > 0 {
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

// CloseIdle closes pooled connections idle for IdleConnTimeout or more
// at now; a janitor calls it every second or so, so that they do not
// wait for the next request to be found stale.
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
// their exchange ends, and none is pooled again.
func (t *Transport) Close() {
	t.mu.Lock()
	stale := t.idle
	t.idle, t.closed = nil, true
	t.mu.Unlock()
	for _, c := range stale {
		c.Close()
	}
}
