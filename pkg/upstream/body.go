package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/offloadlb/lb/pkg/balancer"
)

// Body is a response body read off a backend connection while the server
// writes it to the client: fixed-length, chunked (decoded here and
// re-framed by the server) or delimited by the backend closing. It owns
// the connection until fasthttp closes it (CloseWithError); then the
// connection is pooled again if the body ended cleanly, and the lease
// given to EndOnClose ends. A Body is read by one goroutine at a time;
// it comes from RoundTrip (there is no usable zero Body), and is pooled
// once closed, so it must not be used after CloseWithError or Tunnel.
type Body struct {
	c          *backendConn
	t          *Transport
	timeout    time.Duration
	remaining  int64 // bytes left of a fixed-length body, or of the current chunk
	chunked    bool
	untilClose bool
	closeAfter bool
	done       bool // the body ended cleanly
	tunnel     bool // no body: c switched protocols (see Switched)
	err        error

	// The backend's slot (EndOnClose), ended with the body's outcome
	// when it closes; zero for none.
	lease balancer.Lease
	// ahead is body already read off the connection (ReadAhead), given
	// out before reading more; held is what it counts in the process's
	// body memory, given back when the body closes.
	ahead []byte
	held  int64
	// pump, when set, is still sending the request's body (the backend
	// answered before it had all of it); it is ended when the body
	// closes, and then onDone runs.
	pump   *pump
	onDone func()

	// How long lb waited for the backend's bytes (in reads) and for the
	// client to take them (between reads), which decides whose fault a
	// break is (clientPaced).
	backendWait, clientWait time.Duration
	lastRead                time.Time
}

var bodyPool = sync.Pool{New: func() any { return new(Body) }}

// EndOnClose hands the request's lease on the backend to the body: it is
// ended when the body closes, as a success, or as a failure if the body
// broke off (not the backend's fault when lb was waiting on the client
// more than on the backend, see clientPaced).
func (s *Body) EndOnClose(l balancer.Lease) { s.lease = l }

// Sending reports whether the request's streamed body is still being
// sent: the backend answered before it had all of it, and the body goes
// on until this response body closes. Until then the request's body
// stays in use; onDone runs once it is not.
func (s *Body) Sending(onDone func()) bool {
	if s == nil || s.pump == nil {
		return false
	}
	s.onDone = onDone
	return true
}

// Switched reports whether the backend switched protocols (101): the
// Body then has no bytes, and its connection is taken with Tunnel.
func (s *Body) Switched() bool { return s.tunnel }

// Tunnel takes the connection of a Body that Switched, which it releases:
// the caller pipes bytes through the connection and closes it. Reads
// first drain what the backend sent right behind its 101; when nothing
// waits, it is the socket itself, so that bulk transfers can splice. The
// lease (if any was given to EndOnClose) stays the caller's to end.
func (s *Body) Tunnel() net.Conn {
	c := s.c
	*s = Body{}
	bodyPool.Put(s)
	if c.br.Buffered() == 0 {
		return c.Conn
	}
	return tunnelConn{c}
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

// acquireBody wraps a connection positioned at the start of a body of
// length cl (-1 chunked, -2 until close).
func acquireBody(c *backendConn, t *Transport, cl int64, timeout time.Duration, closeAfter bool) *Body {
	s := bodyPool.Get().(*Body)
	*s = Body{c: c, t: t, timeout: timeout, closeAfter: closeAfter}
	switch {
	case cl >= 0:
		s.remaining = cl
		s.done = cl == 0
	case cl == -1:
		s.chunked = true
	default:
		s.untilClose = true
	}
	return s
}

var (
	errBadChunk   = errors.New("malformed chunked encoding")
	errTruncated  = errors.New("body ended early")
	maxChunkLine  = 4096
	maxTrailerLen = 16 << 10
)

// Read implements io.Reader. Every read off the backend gets the response
// timeout as an inactivity deadline.
func (s *Body) Read(p []byte) (int, error) {
	if len(s.ahead) > 0 {
		n := copy(p, s.ahead)
		s.ahead = s.ahead[n:]
		return n, nil
	}
	return s.read(p)
}

// ReadAhead reads the body into memory, up to max bytes, at the
// backend's pace, as far as the process's body memory has room for it.
// whole reports that it ended within them, without error, and body is
// then all of it, counted in the body memory as held by holder until
// holder is reset (see bodymem.HoldFor); otherwise what was read is
// given out first by Read, and the rest follows from the connection.
func (s *Body) ReadAhead(max int64, holder *fasthttp.Request) (body []byte, whole bool) {
	size := min(max+1, 16<<10)
	if !bodymem.Take(size) {
		return nil, false
	}
	s.held = size
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > max {
				break
			}
			size = min(int64(2*cap(buf)), max+1)
			if !bodymem.Take(size - s.held) {
				break
			}
			s.held = size
			buf = slices.Grow(buf, int(size)-len(buf))
		}
		n, err := s.read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF && int64(len(buf)) <= max {
			bodymem.HoldFor(holder, s.held)
			s.held = 0
			return buf, true
		}
		if err != nil || int64(len(buf)) > max {
			break
		}
	}
	s.ahead = buf
	return nil, false
}

func (s *Body) read(p []byte) (int, error) {
	if s.done {
		return 0, io.EOF
	}
	if s.err != nil {
		return 0, s.err
	}
	now := time.Now()
	if !s.lastRead.IsZero() {
		s.clientWait += now.Sub(s.lastRead)
	}
	if err := s.c.SetReadDeadline(now.Add(s.timeout)); err != nil {
		return 0, s.setErr(err)
	}
	n, err := s.readBody(p)
	s.lastRead = time.Now()
	s.backendWait += s.lastRead.Sub(now)
	return n, err
}

func (s *Body) readBody(p []byte) (int, error) {
	switch {
	case s.chunked:
		return s.readChunked(p)
	case s.untilClose:
		n, err := s.c.br.Read(p)
		if err == io.EOF {
			s.done = true
			s.closeAfter = true
		} else if err != nil {
			return n, s.setErr(err)
		}
		return n, err
	}
	if int64(len(p)) > s.remaining {
		p = p[:s.remaining]
	}
	n, err := s.c.br.Read(p)
	s.remaining -= int64(n)
	if s.remaining == 0 {
		s.done = true
		return n, io.EOF
	}
	if err == io.EOF {
		err = errTruncated
	}
	if err != nil {
		return n, s.setErr(err)
	}
	return n, nil
}

func (s *Body) readChunked(p []byte) (int, error) {
	if s.remaining == 0 {
		size, err := s.chunkSize()
		if err != nil {
			return 0, s.setErr(err)
		}
		if size == 0 {
			if err := s.skipTrailers(); err != nil {
				return 0, s.setErr(err)
			}
			s.done = true
			return 0, io.EOF
		}
		s.remaining = size
	}
	if int64(len(p)) > s.remaining {
		p = p[:s.remaining]
	}
	n, err := s.c.br.Read(p)
	s.remaining -= int64(n)
	if err == io.EOF {
		err = errTruncated
	}
	if err != nil {
		return n, s.setErr(err)
	}
	if s.remaining == 0 {
		if err := s.crlf(); err != nil {
			return n, s.setErr(err)
		}
	}
	return n, nil
}

// chunkSize reads a chunk-size line (RFC 9112 section 7.1): hex digits,
// optional extensions after ';', CRLF.
func (s *Body) chunkSize() (int64, error) {
	line, err := s.c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return 0, errBadChunk
		}
		if err == io.EOF {
			return 0, errTruncated
		}
		return 0, err
	}
	line = bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'})
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 15 || len(line) > maxChunkLine {
		return 0, errBadChunk
	}
	var n int64
	for _, c := range line {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, errBadChunk
		}
		n = n<<4 | int64(d)
	}
	return n, nil
}

func (s *Body) crlf() error {
	b, err := s.c.br.ReadByte()
	if err == nil && b == '\r' {
		b, err = s.c.br.ReadByte()
	}
	if err != nil {
		if err == io.EOF {
			return errTruncated
		}
		return err
	}
	if b != '\n' {
		return errBadChunk
	}
	return nil
}

// skipTrailers discards the trailer section after the last chunk.
func (s *Body) skipTrailers() error {
	total := 0
	for {
		line, err := s.c.br.ReadSlice('\n')
		total += len(line)
		if err != nil || total > maxTrailerLen {
			if err == io.EOF {
				return errTruncated
			}
			return errBadChunk
		}
		if len(line) <= 2 && (len(line) == 1 || line[0] == '\r') {
			return nil
		}
	}
}

// clientPaced reports whether a body that broke off most likely did so
// because of the client: the backend closed or reset the connection (no
// timeout of lb's, no malformed chunk) while lb was paced by the client,
// having spent longer waiting for the client to take the body than for
// the backend to send it. A backend stops reading by it then as it would
// for any slow reader, and its own send timeout ends the body (HAProxy
// likewise tells client-side from server-side aborts); such a break is
// counted and logged, but is no passive health failure.
func (s *Body) clientPaced() bool {
	if s.err == nil || s.clientWait <= s.backendWait {
		return false
	}
	return errors.Is(s.err, errTruncated) || isClosed(s.err)
}

func (s *Body) setErr(err error) error {
	if s.c != nil && s.c.abort.Fired() {
		err = &Error{Kind: ErrAborted, Err: errAborted}
	} else if isTimeout(err) {
		err = &Error{Kind: ErrTimeout, Err: err}
	} else if _, ok := err.(*Error); !ok {
		err = &Error{Kind: ErrResponse, Err: err}
	}
	s.err = err
	return err
}

// CloseWithError is called by fasthttp once the body has been written to
// the client (writeErr is the client-side error, if any) or abandoned:
// the connection is pooled again if the body was read to its clean end,
// else closed, and the lease given to EndOnClose ends. It returns nil.
func (s *Body) CloseWithError(writeErr error) error {
	c := s.c
	if c == nil {
		return nil // already closed
	}
	s.c = nil
	if s.held > 0 {
		bodymem.Give(s.held)
	}
	if s.pump != nil {
		s.pump.end()
		if s.onDone != nil {
			s.onDone()
		}
		if s.pump.clientFailed() && s.err != nil {
			// The answer broke because the client's body did (the pump
			// cut the connection): not the backend's failure.
			s.err = &Error{Kind: ErrAborted, Err: s.pump.readErr}
		}
	}
	if s.done && !s.closeAfter {
		s.t.put(c)
	} else {
		c.Close()
	}
	switch {
	case s.lease.Backend == nil:
	case aborted(s.err):
		s.lease.Withdraw()
	default:
		s.lease.End(s.err, !s.clientPaced())
	}
	*s = Body{}
	bodyPool.Put(s)
	return nil
}
