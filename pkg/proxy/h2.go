package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/tlsterm"
)

// HTTP2 serves the clients of a listener that negotiated HTTP/2. Its
// connection loop (h2conn.go) reads frames with golang.org/x/net/http2's
// Framer and HPACK decoder and keeps the protocol's state itself: no
// goroutine per stream until a request is complete, no channel round trip
// per frame, and the responses of many streams share a TLS record.
//
// Each complete request is written out as the HTTP/1.1 head it stands for
// and parsed by fasthttp, exactly as a request read off an HTTP/1.1
// connection is, and then served by the listener's Handler. So routing,
// balancing, retries, header rules, limits, metrics and the access log are
// the same code for both, and backends speak HTTP/1.1.
type HTTP2 struct {
	h *Handler
	o HTTP2Options

	ctxs    sync.Pool // *fasthttp.RequestCtx
	readers sync.Pool // *headReader, its buffer sized for MaxHead
	workers workerPool

	mu        sync.Mutex
	conns     map[*h2Conn]struct{}
	goingAway bool
}

// HTTP2Options are a listener's limits as its HTTP/2 side applies them.
type HTTP2Options struct {
	// MaxBody bounds a request body (413 past it); MaxHead the request
	// head written as HTTP/1.1 (431 past it).
	MaxBody, MaxHead int
	// MaxStreams is how many streams a client may have open at once.
	MaxStreams uint32
	// IdleTimeout closes a connection without streams for this long;
	// ReadTimeout bounds the wait for the preface, and each request's
	// head and body from its HEADERS frame on (408 past it);
	// WriteTimeout each write to the client and the wait for
	// flow-control credit. 0 for none.
	IdleTimeout, ReadTimeout, WriteTimeout time.Duration
	Logger                                 fasthttp.Logger
}

// DefaultMaxStreams is the number of streams an HTTP/2 client may have
// open at once (HAProxy's default; NGINX allows 128).
const DefaultMaxStreams = 100

// NewHTTP2 returns the HTTP/2 side of h.
func NewHTTP2(h *Handler, o HTTP2Options) *HTTP2 {
	if o.MaxStreams == 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	a := &HTTP2{h: h, o: o, conns: map[*h2Conn]struct{}{}}
	a.workers.idle = workerIdle
	a.ctxs.New = func() any { return new(fasthttp.RequestCtx) }
	a.readers.New = func() any {
		hr := &headReader{}
		hr.br = bufio.NewReaderSize(&hr.r, o.MaxHead+512)
		return hr
	}
	return a
}

// ServeConn serves an HTTP/2 client until the connection ends and the
// requests it carried have been answered.
func (a *HTTP2) ServeConn(tc *tlsterm.Conn) {
	c := newH2Conn(a, tc)
	a.mu.Lock()
	if a.goingAway {
		a.mu.Unlock()
		tc.Close()
		return
	}
	a.conns[c] = struct{}{}
	a.mu.Unlock()
	c.serve()
	a.mu.Lock()
	delete(a.conns, c)
	a.mu.Unlock()
}

// GoAway starts a graceful stop: every connection gets a GOAWAY naming
// the last stream it will serve and closes once those are answered; idle
// ones close at once, and ServeConn refuses new ones. It does not wait
// for the GOAWAYs to be written: a client that does not read can hold a
// connection's writes for up to WriteTimeout, and a stop must be able to
// give up on it (Close) when its grace ends.
func (a *HTTP2) GoAway() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.goingAway = true
	for c := range a.conns {
		go c.goAway()
	}
}

// Close closes every connection, answered or not, at once: writes blocked
// on a client that does not read fail, rather than wait for WriteTimeout
// or for a TLS close_notify alert the client would not take either.
func (a *HTTP2) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for c := range a.conns {
		c.tc.NetConn().Close()
	}
}

// errHeadTooLarge maps onto the status ServeError gives (431).
var errHeadTooLarge = errors.New("request head too large")

// errMalformed is a request HTTP/2 calls malformed (RFC 9113 section
// 8.1.1): the stream is reset with PROTOCOL_ERROR and nothing is served.
var errMalformed = errors.New("malformed HTTP/2 request")

// h2Head is what a request's header block says besides its head.
type h2Head struct {
	declared  int64 // content-length, -1 if none
	continue_ bool  // expect: 100-continue
}

// headReader reads a request head written out in memory, as fasthttp
// reads one off a connection.
type headReader struct {
	r  bytes.Reader
	br *bufio.Reader
}

// validPath: a non-empty request target without spaces or control
// characters, which the HTTP/1.1 request line it goes into could not hold.
func validPath(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

func appendField(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	b = append(b, v...)
	return append(b, "\r\n"...)
}

// encodeHead writes the HPACK block of resp's head to c.hbuf: :status,
// the fields in lower case, and content-length unless the status has no
// body or the length is unknown (cl < 0).
func (c *h2Conn) encodeHead(resp *fasthttp.Response, cl int) []byte {
	code := resp.StatusCode()
	b := appendStatus(c.hbuf[:0], code)
	for k, v := range resp.Header.All() {
		// Hop-by-hop fields went in httphead.CleanResponse; the framing is
		// HTTP/2's own.
		if string(k) == "Content-Length" || string(k) == "Transfer-Encoding" || string(k) == "Connection" {
			continue
		}
		c.scratch = append(c.scratch[:0], k...)
		for i, ch := range c.scratch {
			if 'A' <= ch && ch <= 'Z' {
				c.scratch[i] = ch + 'a' - 'A'
			}
		}
		if idx := hpackNameIndex(c.scratch); idx > 0 {
			b = appendHPACKInt(b, 0, 4, idx) // literal, indexed name
		} else {
			b = append(b, 0) // literal, new name
			b = appendHPACKString(b, c.scratch)
		}
		b = appendHPACKString(b, v)
	}
	if cl >= 0 && !noBody(code) {
		var num [20]byte
		b = appendHPACKInt(b, 0, 4, hpackContentLength)
		b = appendHPACKString(b, strconv.AppendInt(num[:0], int64(cl), 10))
	}
	c.hbuf = b
	return b
}

// lb writes header blocks itself (RFC 7541): fields as literals without
// indexing and without Huffman coding, with names (and :status) from the
// static table when they are there. That costs a few bytes per response against the
// smallest encoding, saves the table lookups and Huffman coding on every
// response (as HAProxy's encoder does), and leaves nothing to keep in
// step with the client.

// Static table indexes (RFC 7541 appendix A).
const (
	hpackStatus        = 8
	hpackContentLength = 28
)

// hpackNameIndex is the static table index of a response field name lb
// passes on often, 0 for others.
func hpackNameIndex(name []byte) int {
	switch string(name) {
	case "age":
		return 21
	case "cache-control":
		return 24
	case "content-encoding":
		return 26
	case "content-type":
		return 31
	case "date":
		return 33
	case "etag":
		return 34
	case "expires":
		return 36
	case "last-modified":
		return 44
	case "location":
		return 46
	case "server":
		return 54
	case "set-cookie":
		return 55
	case "strict-transport-security":
		return 56
	case "vary":
		return 59
	}
	return 0
}

// appendStatus appends :status: indexed for the codes the static table
// has, a literal with the indexed name otherwise.
func appendStatus(b []byte, code int) []byte {
	idx := 0
	switch code {
	case 200:
		idx = 8
	case 204:
		idx = 9
	case 206:
		idx = 10
	case 304:
		idx = 11
	case 400:
		idx = 12
	case 404:
		idx = 13
	case 500:
		idx = 14
	}
	if idx > 0 {
		return appendHPACKInt(b, 0x80, 7, idx)
	}
	var num [20]byte
	b = appendHPACKInt(b, 0, 4, hpackStatus)
	return appendHPACKString(b, strconv.AppendInt(num[:0], int64(code), 10))
}

// appendHPACKString appends a string literal, not Huffman coded.
func appendHPACKString(b, s []byte) []byte {
	b = appendHPACKInt(b, 0, 7, len(s))
	return append(b, s...)
}

// appendHPACKInt appends v as an integer with an n-bit prefix, the bits
// above the prefix in the first byte taken from first (RFC 7541 5.1).
func appendHPACKInt(b []byte, first byte, n uint, v int) []byte {
	limit := 1<<n - 1
	if v < limit {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(limit))
	for v -= limit; v >= 128; v >>= 7 {
		b = append(b, byte(v&127|128))
	}
	return append(b, byte(v))
}

var (
	copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
	headBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
)
