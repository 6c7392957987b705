package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/valyala/fasthttp"
)

// HTTP2 serves requests that reach a listener over HTTP/2. The HTTP/2
// framing, flow control and stream limits are golang.org/x/net/http2's;
// each request it hands over is written out as the HTTP/1.1 head it
// stands for and parsed by fasthttp, exactly as a request read off an
// HTTP/1.1 connection is, and then served by the listener's Handler. So
// routing, balancing, retries, header rules, limits, metrics and the
// access log are the same code for both, and backends speak HTTP/1.1.
type HTTP2 struct {
	h       *Handler
	maxBody int
	maxHead int
	logger  fasthttp.Logger

	ctxs    sync.Pool // *fasthttp.RequestCtx
	readers sync.Pool // *bufio.Reader sized for maxHead
}

// NewHTTP2 returns the HTTP/2 side of h. Requests whose head exceeds
// maxHead bytes get 431, whose body exceeds maxBody bytes 413, as on
// HTTP/1.1.
func NewHTTP2(h *Handler, maxBody, maxHead int, logger fasthttp.Logger) *HTTP2 {
	a := &HTTP2{h: h, maxBody: maxBody, maxHead: maxHead, logger: logger}
	a.ctxs.New = func() any { return new(fasthttp.RequestCtx) }
	a.readers.New = func() any { return bufio.NewReaderSize(nil, maxHead+512) }
	return a
}

type connKey struct{}

// WithConn returns a context carrying the client connection an HTTP/2
// connection's requests arrive on; ServeHTTP finds it there.
func WithConn(parent context.Context, c net.Conn) context.Context {
	return context.WithValue(parent, connKey{}, c)
}

// Errors that map onto the statuses ServeError gives.
var (
	errHeadTooLarge = errors.New("request head too large")
	errTruncatedReq = errors.New("request body broke off")
)

// ServeHTTP implements http.Handler.
func (a *HTTP2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	if c == nil {
		http.Error(w, "no connection", http.StatusInternalServerError)
		return
	}
	ctx := a.ctxs.Get().(*fasthttp.RequestCtx)
	ctx.Init2(c, a.logger, false)
	if err := a.readRequest(ctx, r); err != nil {
		a.h.ServeError(ctx, err)
	} else {
		a.h.Serve(ctx)
	}
	writeResponse(w, r, ctx)
	ctx.Request.Reset()
	ctx.Response.Reset() // closes a streamed body: frees the backend
	a.ctxs.Put(ctx)
}

// readRequest builds and parses the HTTP/1.1 head of r into ctx.Request,
// then reads the body (bounded by maxBody).
func (a *HTTP2) readRequest(ctx *fasthttp.RequestCtx, r *http.Request) error {
	if r.Method == http.MethodConnect {
		// Tunnels and extended CONNECT (RFC 8441) are not proxied.
		ctx.Request.Header.SetMethod(http.MethodConnect)
		return nil // checkRequest answers 405
	}
	hp := headBufPool.Get().(*[]byte)
	defer headBufPool.Put(hp)
	head := (*hp)[:0]
	head = append(head, r.Method...)
	head = append(head, ' ')
	head = append(head, r.RequestURI...)
	head = append(head, " HTTP/1.1\r\nHost: "...)
	head = append(head, r.Host...)
	head = append(head, "\r\n"...)
	for k, vs := range r.Header {
		// Connection-specific fields never get here (the HTTP/2 server
		// answers 400); "TE: trailers", which may, goes with the other
		// hop-by-hop headers in prepareRequest, as on HTTP/1.1.
		switch k {
		case "Host", "Content-Length":
			// Written above; the length from the body read.
			continue
		case "Cookie":
			// HTTP/2 may split cookies over several fields; HTTP/1.1
			// wants one (RFC 9113 section 8.2.3).
			head = appendField(head, k, strings.Join(vs, "; "))
			continue
		}
		for _, v := range vs {
			head = appendField(head, k, v)
		}
	}
	head = append(head, "\r\n"...)
	*hp = head
	if len(head) > a.maxHead {
		return errHeadTooLarge
	}
	br := a.readers.Get().(*bufio.Reader)
	br.Reset(bytes.NewReader(head))
	err := ctx.Request.Header.Read(br)
	br.Reset(nil)
	a.readers.Put(br)
	if err != nil {
		return err
	}

	if r.ContentLength > int64(a.maxBody) {
		return fasthttp.ErrBodyTooLarge
	}
	// ContentLength is 0 when the HEADERS frame ended the stream: no
	// body (-1: one is coming, its length unknown).
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		bp := copyBufPool.Get().(*[]byte)
		n, err := io.CopyBuffer(ctx.Request.BodyWriter(), io.LimitReader(r.Body, int64(a.maxBody)+1), *bp)
		copyBufPool.Put(bp)
		switch {
		case n > int64(a.maxBody):
			return fasthttp.ErrBodyTooLarge
		case err != nil:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return err
			}
			return errTruncatedReq
		}
	}
	// fasthttp writes Content-Length from the body it holds.
	return nil
}

func appendField(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	b = append(b, v...)
	return append(b, "\r\n"...)
}

// writeResponse sends ctx.Response to an HTTP/2 client: the head, then
// the body, a streamed one flushed as it arrives so that event streams
// and long polls are not held back.
func writeResponse(w http.ResponseWriter, r *http.Request, ctx *fasthttp.RequestCtx) {
	resp := &ctx.Response
	hdr := w.Header()
	for k, v := range resp.Header.All() {
		// Hop-by-hop fields went in cleanResponse; the framing is
		// HTTP/2's own.
		if string(k) == "Content-Length" || string(k) == "Transfer-Encoding" {
			continue
		}
		key := string(k)
		hdr[key] = append(hdr[key], string(v))
	}
	head := r.Method == http.MethodHead || resp.SkipBody
	cl := resp.Header.ContentLength()
	if !head && !resp.IsBodyStream() {
		cl = len(resp.Body())
	}
	if cl >= 0 && !noBody(resp.StatusCode()) {
		hdr["Content-Length"] = []string{strconv.Itoa(cl)}
	}
	w.WriteHeader(resp.StatusCode())
	if head || noBody(resp.StatusCode()) {
		return
	}
	if !resp.IsBodyStream() {
		w.Write(resp.Body()) //nolint:errcheck // the client went away
		return
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	body, f := resp.BodyStream(), w.(http.Flusher)
	for {
		n, err := body.Read(*bp)
		if n > 0 {
			if _, werr := w.Write((*bp)[:n]); werr != nil {
				return
			}
			f.Flush()
		}
		if err != nil {
			return
		}
	}
}

var (
	copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
	headBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
)
