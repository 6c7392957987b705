package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"time"

	"github.com/offloadlb/lb/internal/peer"
)

// errBareLFHead ends the read of a head whose blank line is a bare LF.
var errBareLFHead = errors.New("proxy: request head ended by a bare LF")

// headConn is an HTTP/1.1 client connection as the fasthttp server reads
// it. fasthttp takes a head as read only once a CRLFCRLF arrives: a head
// whose lines all end in bare LF ("GET / HTTP/1.1\nHost: a\n\n") is
// complete to its sender, who then waits for an answer that comes only at
// read_timeout. headConn follows the lines of each head as it passes and,
// once one ends in a blank line that is not CRLF after CRLF, fails the
// next read: fasthttp then answers 400 at once. Such a head is refused in
// any case (httphead.Check's bare-LF refusal: a bare-LF blank line is where fasthttp
// and a backend could disagree on where the head ends), so failing the
// read refuses nothing lb would have served. The read that fasthttp
// finds a CRLFCRLF in, or the bytes it parses behind such a head, are
// untouched.
//
// A head begins where fasthttp reads a single byte: with
// ReduceMemoryUsage, as lb runs it, it reads the first byte of each
// request that is not already buffered on its own. A pipelined head that
// was already buffered is not followed, so the bytes of a body never are.
//
// It is used by one goroutine at a time, fasthttp's for the connection.
type headConn struct {
	net.Conn
	inHead   bool // following a head's lines
	sawLine  bool // a line other than a blank one before the request line
	lineLen  int  // bytes of the current line so far, its CR included
	lastCR   bool // the last byte read was CR
	prevCRLF bool // the line before the current one ended in CRLF
	bareLF   bool // a head ended in a bare-LF blank line: reads fail
	// linger makes Close linger (see lingerClose): a request's body was
	// left unread.
	linger bool
}

// WatchHead wraps an HTTP/1.1 client connection for the fasthttp server
// (see headConn).
func WatchHead(c net.Conn) net.Conn { return &headConn{Conn: c} }

// Read reads from the connection, and follows a head's lines.
func (c *headConn) Read(p []byte) (int, error) {
	if c.bareLF {
		return 0, errBareLFHead
	}
	n, err := c.Conn.Read(p)
	if len(p) == 1 && n == 1 {
		*c = headConn{Conn: c.Conn, inHead: true, prevCRLF: true}
	}
	if c.inHead && n > 0 {
		c.follow(p[:n])
	}
	return n, err
}

// follow reads the bytes of a head until its blank line.
func (c *headConn) follow(b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			c.lineLen += len(b)
			c.lastCR = b[len(b)-1] == '\r'
			return
		}
		crlf := i > 0 && b[i-1] == '\r' || i == 0 && c.lastCR
		n := c.lineLen + i
		b = b[i+1:]
		c.lineLen, c.lastCR = 0, false
		switch {
		case n > 1 || n == 1 && !crlf:
			c.sawLine, c.prevCRLF = true, crlf
		case !c.sawLine:
			// Empty lines before the request line (RFC 9112 section
			// 2.2 lets a server ignore them).
		case crlf && c.prevCRLF:
			c.inHead = false // CRLFCRLF: fasthttp reads the head itself
			return
		default:
			c.inHead, c.bareLF = false, true
			return
		}
	}
}

// RawConn is the connection underneath (pkg/tunnel's splice and
// half-close look through it once a WebSocket tunnel takes the
// connection over).
func (c *headConn) RawConn() net.Conn { return c.Conn }

// CloseWrite half-closes the connection underneath.
func (c *headConn) CloseWrite() error {
	var inner net.Conn = c.Conn
	for {
		switch x := inner.(type) {
		case interface{ CloseWrite() error }:
			return x.CloseWrite()
		case interface{ RawConn() net.Conn }:
			inner = x.RawConn()
		default:
			return nil
		}
	}
}

// Close closes the connection, lingering first if a request body was
// left unread.
func (c *headConn) Close() error {
	if c.linger {
		return lingerClose(c.Conn)
	}
	return c.Conn.Close()
}

// Lingering close. A connection closed with bytes of the client's still
// unread (a body the backend refused before reading it all) is reset by
// the kernel, and a reset can destroy the answer at the client before
// the client has read it: the 401 or 413 meant for it would be lost.
// Like NGINX's lingering_close, lb then ends its side of the connection
// (TLS close_notify and a TCP FIN, behind the answer), and reads and
// drops what the client still sends, for a bounded time, before it
// closes.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 16 << 20
)

func lingerClose(c net.Conn) error {
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite() // TLS: close_notify; its error shows on the reads
	}
	raw := c
	for {
		switch x := raw.(type) {
		case interface{ NetConn() net.Conn }: // *tls.Conn, tlsterm.Conn
			raw = x.NetConn()
			continue
		case interface{ RawConn() net.Conn }:
			raw = x.RawConn()
			continue
		}
		break
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.CloseWrite() // the FIN follows the answer; a failure shows on the reads
	} else {
		raw = c // no socket to drain beneath: drain what there is
	}
	if raw.SetReadDeadline(time.Now().Add(lingerTime)) == nil {
		_, _ = io.CopyN(io.Discard, raw, lingerBytes) // ends at the client's close, the deadline, or the bound
	}
	return c.Close()
}

// Gone reports whether the client has closed or reset the connection
// (see peer.Gone); an exchange waiting for its backend's answer asks.
func (c *headConn) Gone() bool { return peer.Gone(c.Conn) }

// lingerOnClose makes ctx's connection linger when it closes, if it is
// an HTTP/1.1 one.
func lingerOnClose(c net.Conn) {
	if hc, ok := c.(*headConn); ok {
		hc.linger = true
	}
}
