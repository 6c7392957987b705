// Package h2 is lb's HTTP/2 server. It reads frames with
// golang.org/x/net/http2's Framer and HPACK decoder and keeps the
// protocol's state itself: no goroutine per stream until a request is
// complete (or its body is large enough to stream), no channel round
// trip per frame, and the responses of many streams share a TLS record.
//
// Each request is written out as the HTTP/1.1 head it stands for and
// parsed by fasthttp, exactly as a request read off an HTTP/1.1
// connection is, and then handed to a Handler, with its body whole or,
// past Options.BodyBuffer, streaming (body.go): the one that serves the
// listener's HTTP/1.1 clients. So routing, balancing, retries, header
// rules, limits, metrics and the access log are the same code for both,
// and backends speak HTTP/1.1.
package h2

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/httpstatus"
	"github.com/offloadlb/lb/internal/workers"
)

// Handler serves the requests of HTTP/2 clients, as fasthttp's Handler
// and ErrorHandler serve those of HTTP/1.1 ones. The Server calls it on
// many goroutines at once, each call with a request of its own; ctx is
// the Server's again once the call returns, and must not be kept.
// ctx.Conn() is the connection given to ServeConn.
type Handler interface {
	// Serve answers the request in ctx.Request by filling in
	// ctx.Response. A body stream set on the response is sent as it is
	// read, and closed after.
	//
	// The request's body is in whole (ctx.Request.Body()) if it ended
	// within Options.BodyBuffer. Otherwise it streams:
	// ctx.Request.IsBodyStream() is true, ctx.Request.Header's
	// ContentLength() is the client's content-length (-1 if none), and
	// ctx.Request.BodyStream() reads the body as the client sends it.
	// That reader also has Interrupt(), which makes its Reads fail at
	// once, from any goroutine. Its Read fails with ErrBodyTooLarge past
	// MaxBody, ErrBodyTimeout after ReadTimeout without data, and
	// otherwise when the client resets the stream, the connection ends,
	// or the body and its content-length disagree. It may be read by one
	// goroutine at a time, the handler's or another, until the response
	// is sent; what is left unread then is dropped. Trailers the client
	// sends are in ctx.Request.Header as fasthttp's trailers: before
	// Serve for a body in whole, once Read returned io.EOF for one that
	// streams.
	Serve(ctx *fasthttp.RequestCtx)
	// ServeError answers, in ctx.Response, a request that is not
	// served: err is ErrHeadTooLarge (431 is meant), fasthttp's
	// ErrBodyTooLarge (413), a net.Error whose Timeout is true (the
	// request did not come in whole within ReadTimeout: 408), or
	// fasthttp's error for a head it could not parse (400).
	ServeError(ctx *fasthttp.RequestCtx, err error)
}

// ErrHeadTooLarge is given to Handler.ServeError for a request whose
// head, written as HTTP/1.1, is larger than Options.MaxHead. It is
// httpstatus.ErrHeadTooLarge, so that a handler can tell it without
// importing this package.
var ErrHeadTooLarge = httpstatus.ErrHeadTooLarge

// errMalformed is a request HTTP/2 calls malformed (RFC 9113 section
// 8.1.1): the stream is reset with PROTOCOL_ERROR and nothing is served.
var errMalformed = errors.New("malformed HTTP/2 request")

// Server serves HTTP/2 clients with a Handler. Its methods are safe for
// concurrent use. A Server is made by NewServer; the zero Server is not
// usable.
type Server struct {
	h Handler
	o Options

	ctxs    sync.Pool // *fasthttp.RequestCtx
	readers sync.Pool // *headReader, its buffer sized for MaxHead
	workers *workers.Pool[job]

	mu        sync.Mutex
	conns     map[*conn]struct{}
	goingAway bool
}

// Options are a listener's limits as its HTTP/2 side applies them. They
// are read, never changed, once the Server is made.
type Options struct {
	// MaxBody bounds a request body (413 past it, or ErrBodyTooLarge
	// for one that streams), none if 0; MaxHead the request head written
	// as HTTP/1.1 (431 past it).
	MaxBody, MaxHead int
	// BodyBuffer is how much of a request body is read before the
	// request is served (DefaultBodyBuffer if 0): a body that ends within
	// it is served whole; a larger one, by its content-length or by what
	// arrived, and that of a request with "expect: 100-continue", is
	// served at once and streams to the handler.
	BodyBuffer int
	// MaxStreams is how many streams a client may have open at once;
	// DefaultMaxStreams if 0.
	MaxStreams uint32
	// IdleTimeout closes a connection without streams for this long;
	// ReadTimeout bounds the wait for the preface, and each request's
	// head and body from its HEADERS frame on (408 past it) until it is
	// served; once a body streams, each wait of its reader for more
	// (ErrBodyTimeout past it), however long the whole body takes;
	// WriteTimeout each write to the client and the wait for
	// flow-control credit. 0 for none.
	IdleTimeout, ReadTimeout, WriteTimeout time.Duration
	// Logger is the requests' fasthttp logger (RequestCtx.Logger); nil
	// for fasthttp's default.
	Logger fasthttp.Logger

	// workerIdle is how long a request goroutine waits for another
	// request before it ends (workers.DefaultIdle if 0); shorter in tests.
	workerIdle time.Duration
}

// DefaultMaxStreams is the number of streams an HTTP/2 client may have
// open at once (HAProxy's default; NGINX allows 128).
const DefaultMaxStreams = 100

// DefaultBodyBuffer is how much of a request body is read before its
// request is served, for Options whose BodyBuffer is 0: NGINX's
// http2_body_preread_size, and enough for most API requests to be served
// with their bodies whole.
const DefaultBodyBuffer = 64 << 10

// NewServer returns a server that hands requests to h, within o.
func NewServer(h Handler, o Options) *Server {
	if o.MaxStreams == 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.BodyBuffer <= 0 {
		o.BodyBuffer = DefaultBodyBuffer
	}
	s := &Server{h: h, o: o, conns: map[*conn]struct{}{}}
	s.workers = workers.New(o.workerIdle, runJob)
	s.ctxs.New = func() any { return new(fasthttp.RequestCtx) }
	s.readers.New = func() any {
		hr := &headReader{}
		hr.br = bufio.NewReaderSize(&hr.r, o.MaxHead+512)
		return hr
	}
	return s
}

// ServeConn serves a client that negotiated HTTP/2 (ALPN h2) on nc until
// the connection ends and the requests it carried have been answered;
// nc is closed then. After GoAway it closes nc at once.
func (s *Server) ServeConn(nc net.Conn) {
	c := newConn(s, nc)
	s.mu.Lock()
	if s.goingAway {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	c.serve()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// GoAway starts a graceful stop: every connection gets a GOAWAY naming
// the last stream it will serve and closes once those are answered; idle
// ones close at once, and ServeConn refuses new ones. It does not wait
// for the GOAWAYs to be written: a client that does not read can hold a
// connection's writes for up to WriteTimeout, and a stop must be able to
// give up on it (Close) when its grace ends.
func (s *Server) GoAway() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.goingAway = true
	for c := range s.conns {
		go c.goAway()
	}
}

// Close closes every connection, answered or not, at once: writes blocked
// on a client that does not read fail, rather than wait for WriteTimeout
// or for a TLS close_notify alert the client would not take either. A
// TLS connection's socket is closed, not the TLS connection.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		nc := c.nc
		if t, ok := nc.(interface{ NetConn() net.Conn }); ok {
			nc = t.NetConn()
		}
		nc.Close()
	}
}
