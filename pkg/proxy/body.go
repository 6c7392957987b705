package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/offloadlb/lb/pkg/balancer"
)

// bodyStream reads a response body off a backend connection while the
// server writes it to the client: fixed-length, chunked (decoded here and
// re-framed by the server) or delimited by the backend closing. It owns
// the connection until fasthttp closes the stream; then the connection is
// pooled again if the body ended cleanly, and the lease on the backend
// ends. Streams are pooled.
type bodyStream struct {
	c          *backendConn
	t          *Transport
	timeout    time.Duration
	remaining  int64 // bytes left of a fixed-length body, or of the current chunk
	chunked    bool
	untilClose bool
	closeAfter bool
	done       bool // the body ended cleanly
	tunnel     bool // no body: c switched protocols (see switched)
	err        error

	// Set by the proxy: the backend's slot, ended with the body's outcome
	// when the stream closes.
	lease balancer.Lease
	// ahead is body already read off the connection (readAhead), given
	// out before reading more.
	ahead []byte

	// How long lb waited for the backend's bytes (in reads) and for the
	// client to take them (between reads), which decides whose fault a
	// break is (clientPaced).
	backendWait, clientWait time.Duration
	lastRead                time.Time
}

var bodyStreamPool = sync.Pool{New: func() any { return new(bodyStream) }}

// acquireBodyStream wraps a connection positioned at the start of a body of
// length cl (-1 chunked, -2 until close).
func acquireBodyStream(c *backendConn, t *Transport, cl int64, timeout time.Duration, closeAfter bool) *bodyStream {
	s := bodyStreamPool.Get().(*bodyStream)
	*s = bodyStream{c: c, t: t, timeout: timeout, closeAfter: closeAfter}
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
func (s *bodyStream) Read(p []byte) (int, error) {
	if len(s.ahead) > 0 {
		n := copy(p, s.ahead)
		s.ahead = s.ahead[n:]
		return n, nil
	}
	return s.read(p)
}

// readAhead reads the body into memory, up to max bytes. whole reports
// that it ended within them, without error; otherwise what was read is
// given out first by Read, and the rest follows from the connection.
func (s *bodyStream) readAhead(max int64) (body []byte, whole bool) {
	buf := make([]byte, 0, min(max+1, 16<<10))
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > max {
				break
			}
			buf = slices.Grow(buf, int(min(int64(2*cap(buf)), max+1))-len(buf))
		}
		n, err := s.read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF && int64(len(buf)) <= max {
			return buf, true
		}
		if err != nil || int64(len(buf)) > max {
			break
		}
	}
	s.ahead = buf
	return nil, false
}

func (s *bodyStream) read(p []byte) (int, error) {
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

func (s *bodyStream) readBody(p []byte) (int, error) {
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

func (s *bodyStream) readChunked(p []byte) (int, error) {
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
func (s *bodyStream) chunkSize() (int64, error) {
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

func (s *bodyStream) crlf() error {
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
func (s *bodyStream) skipTrailers() error {
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
func (s *bodyStream) clientPaced() bool {
	if s.err == nil || s.clientWait <= s.backendWait {
		return false
	}
	return errors.Is(s.err, errTruncated) || isClosed(s.err)
}

func (s *bodyStream) setErr(err error) error {
	if isTimeout(err) {
		err = &Error{Kind: ErrTimeout, Err: err}
	} else if _, ok := err.(*Error); !ok {
		err = &Error{Kind: ErrResponse, Err: err}
	}
	s.err = err
	return err
}

// CloseWithError is called by fasthttp once the body has been written to
// the client (writeErr is the client-side error, if any) or abandoned.
func (s *bodyStream) CloseWithError(writeErr error) error {
	c := s.c
	if c == nil {
		return nil // already closed
	}
	s.c = nil
	if s.done && !s.closeAfter {
		s.t.put(c)
	} else {
		c.Close()
	}
	if s.lease.Backend != nil {
		s.lease.End(s.err, !s.clientPaced())
	}
	*s = bodyStream{}
	bodyStreamPool.Put(s)
	return nil
}
