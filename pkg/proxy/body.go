package proxy

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/offloadlb/lb/pkg/upstream"
)

// Request bodies. The front ends hand a request over once its head is in
// (HTTP/1.1, and HTTP/2 for a body that did not end within body_buffer),
// with its body as a stream. takeBody reads up to body_buffer of it: a
// body that ends within that is sent whole, and a request that fails
// may be sent again to another backend; a longer one streams to the
// backend as it arrives (a clientBody), at the pace the backend takes it,
// and is sent once (after a connect failure, which sends nothing, it goes
// to another backend).

// defaultBodyBuffer is body_buffer's default.
const defaultBodyBuffer = 64 << 10

// errBodyTooLarge is a streamed body that passed max_request_body.
var errBodyTooLarge = fasthttp.ErrBodyTooLarge

// clientBody is a request body that streams from the client: the part
// read ahead, then the rest from the front end's stream. It is an
// io.Reader and an upstream.Interrupter.
type clientBody struct {
	buf   *[]byte // pooled; ahead is in it
	ahead []byte
	src   io.Reader
	// next is src's Next, when it has one (fasthttp's stream of an
	// HTTP/1.1 body): Next then gives out the bytes where src has them,
	// in the connection's read buffer, rather than copying them into
	// chunk.
	next  upstream.Nexter
	chunk *[]byte // pooled; what Next reads into from a src without Next
	// ctx, for HTTP/1.1, is whose connection each read is given
	// ReadTimeout on, and Interrupt cuts; nil for HTTP/2, whose stream
	// keeps its own time and can be interrupted itself.
	ctx         *fasthttp.RequestCtx
	timeout     time.Duration
	max, n      int64 // max_request_body (0: none), and bytes given out
	want        int64 // the declared length, -1 for none
	eof         bool  // the body was read to its end
	interrupted atomic.Bool
}

// streamChunk is the size of the buffer Next reads a body into whose
// source has no Next of its own (an HTTP/2 stream).
const streamChunk = 16 << 10

var (
	bodyBufs    = sync.Pool{New: func() any { b := make([]byte, 0, defaultBodyBuffer+1); return &b }}
	clientBodys = sync.Pool{New: func() any { return new(clientBody) }}
	chunkBufs   = sync.Pool{New: func() any { b := make([]byte, streamChunk); return &b }}
)

func (b *clientBody) Read(p []byte) (int, error) {
	if len(b.ahead) > 0 {
		n := copy(p, b.ahead)
		b.ahead = b.ahead[n:]
		if len(b.ahead) == 0 {
			// Sent on: the buffer is not held for the rest of an upload.
			putBodyBuf(b.buf)
			b.buf, b.ahead = nil, nil
		}
		return n, nil
	}
	if err := b.ready(); err != nil {
		return 0, err
	}
	n, err := b.src.Read(p)
	return n, b.count(n, err)
}

// Next implements upstream.Nexter: it returns the body's next bytes,
// valid until the next call, without a buffer of the caller's. The part
// read ahead comes first, whole; then what src has, straight from the
// connection's read buffer for HTTP/1.1. A body streamed this way holds
// no buffer of lb's own while it streams, only the connection's.
func (b *clientBody) Next() ([]byte, error) {
	if b.buf != nil && b.src != nil {
		if len(b.ahead) > 0 {
			p := b.ahead
			b.ahead = b.ahead[len(p):]
			return p, nil
		}
		// The part read ahead has been sent on (the caller is done with
		// it, as it asks for more): the buffer is not held for the rest
		// of an upload.
		putBodyBuf(b.buf)
		b.buf, b.ahead = nil, nil
	}
	if err := b.ready(); err != nil {
		return nil, err
	}
	if b.next != nil {
		p, err := b.next.Next()
		return p, b.count(len(p), err)
	}
	if b.chunk == nil {
		b.chunk = chunkBufs.Get().(*[]byte)
	}
	n, err := b.src.Read(*b.chunk)
	return (*b.chunk)[:n], b.count(n, err)
}

// ready readies a read from src: it fails once the body is
// interrupted, and gives an HTTP/1.1 connection its read timeout.
func (b *clientBody) ready() error {
	if b.interrupted.Load() {
		return errInterrupted
	}
	if b.ctx != nil && b.timeout > 0 {
		if err := b.ctx.SetReadDeadline(time.Now().Add(b.timeout)); err != nil {
			return err
		}
		if b.interrupted.Load() { // Interrupt's deadline may have been overwritten
			return errInterrupted
		}
	}
	return nil
}

// count counts n bytes read from src with err, and returns the error
// to give out: errBodyTooLarge past max_request_body, and a body that
// ended short of its length as io.ErrUnexpectedEOF.
func (b *clientBody) count(n int, err error) error {
	b.n += int64(n)
	if b.max > 0 && b.n > b.max {
		return errBodyTooLarge
	}
	if err == io.EOF && b.want >= 0 && b.n != b.want {
		// fasthttp's stream ends a fixed-length body the client cut
		// short with a plain EOF.
		err = io.ErrUnexpectedEOF
	}
	b.eof = err == io.EOF
	return err
}

var errInterrupted = errors.New("request body no longer read")

// Interrupt makes a Read waiting for the client, and those to come, fail
// at once.
func (b *clientBody) Interrupt() {
	b.interrupted.Store(true)
	if b.ctx != nil {
		_ = b.ctx.SetReadDeadline(time.Unix(1, 0)) // a connection gone needs no waking
	} else if i, ok := b.src.(upstream.Interrupter); ok {
		i.Interrupt()
	}
}

func (b *clientBody) release() {
	if b.buf != nil {
		putBodyBuf(b.buf)
	}
	if b.chunk != nil {
		chunkBufs.Put(b.chunk)
	}
	*b = clientBody{}
	clientBodys.Put(b)
}

// putBodyBuf gives a read-ahead buffer back, and its bytes to the
// process's body memory.
func putBodyBuf(bp *[]byte) {
	bodymem.Give(int64(cap(*bp)))
	bodyBufs.Put(bp)
}

// takeBody reads the start of the request's body stream, if it has one:
// a body that ends within the site's body buffer is set as the request's
// body; a longer one is returned as a clientBody to stream, and is the
// caller's to release. A body whose declared length is longer than the
// buffer streams without being read ahead. code is not 0 when the body failed: the status to
// log, and to answer unless it is 499 (the client went away).
func takeBody(ctx *fasthttp.RequestCtx, site *Site, h2 bool) (cb *clientBody, code int) {
	req := &ctx.Request
	cl := req.Header.ContentLength()
	if site.MaxBody > 0 && int64(cl) > site.MaxBody || len(req.Header.PeekBytes(hTooLarge)) > 0 {
		return nil, fasthttp.StatusRequestEntityTooLarge
	}
	limit := site.BodyBuffer
	if limit <= 0 {
		limit = defaultBodyBuffer
	}
	if site.MaxBody > 0 && site.MaxBody < int64(limit) {
		limit = int(site.MaxBody)
	}
	if cl > limit {
		// It will stream whatever is read ahead: stream it from its
		// first byte, holding no buffer for it. (Nothing is read before
		// a backend connection is open, so a connect failure still lets
		// it go to another backend.)
		return streamFrom(ctx, site, cl, h2), 0
	}
	bp := bodyBufs.Get().(*[]byte)
	if cap(*bp) < limit+1 {
		*bp = make([]byte, 0, limit+1)
	}
	if !bodymem.Take(int64(cap(*bp))) {
		// The process holds all the body memory it may
		// (global.max_body_memory): stream from the first byte.
		bodyBufs.Put(bp)
		return streamFrom(ctx, site, cl, h2), 0
	}
	buf := (*bp)[:0]
	src := req.BodyStream()
	for {
		n, err := src.Read(buf[len(buf) : limit+1])
		buf = buf[:len(buf)+n]
		if err == io.EOF && cl >= 0 && len(buf) != cl {
			err = io.ErrUnexpectedEOF // cut short (see clientBody.Read)
		}
		if err == io.EOF && len(buf) <= limit {
			// Whole: sent like any small body. The request keeps buf
			// until the caller releases it, after the response.
			*bp = buf
			req.SetBodyRaw(buf)
			cb = clientBodys.Get().(*clientBody)
			cb.buf = bp
			return cb, 0
		}
		if err != nil && err != io.EOF {
			putBodyBuf(bp)
			return nil, bodyStatus(err)
		}
		if len(buf) > limit {
			break
		}
	}
	if site.MaxBody > 0 && int64(len(buf)) > site.MaxBody {
		putBodyBuf(bp)
		return nil, fasthttp.StatusRequestEntityTooLarge
	}
	*bp = buf
	cb = clientBodys.Get().(*clientBody)
	*cb = clientBody{buf: bp, ahead: buf, src: src, timeout: site.ReadTimeout, max: site.MaxBody, n: int64(len(buf)), want: int64(cl)}
	cb.next, _ = src.(upstream.Nexter)
	if !h2 {
		cb.ctx = ctx
	}
	return cb, 0
}

// streamFrom is a clientBody that streams the request's body from its
// first byte, with no read-ahead.
func streamFrom(ctx *fasthttp.RequestCtx, site *Site, cl int, h2 bool) *clientBody {
	cb := clientBodys.Get().(*clientBody)
	*cb = clientBody{src: ctx.Request.BodyStream(), timeout: site.ReadTimeout, max: site.MaxBody, want: int64(cl)}
	cb.next, _ = cb.src.(upstream.Nexter)
	if !h2 {
		cb.ctx = ctx
	}
	return cb
}

// streams reports whether cb is a body to stream rather than one taken
// whole.
func (b *clientBody) streams() bool { return b != nil && b.src != nil }

// bodyStatus is the status for a request whose body failed to arrive:
// too slow 408, too large 413, broken framing 400, the client gone 499.
func bodyStatus(err error) int {
	var ne interface{ Timeout() bool }
	switch {
	case errors.Is(err, errBodyTooLarge):
		return fasthttp.StatusRequestEntityTooLarge
	case errors.As(err, &ne) && ne.Timeout(), strings.Contains(err.Error(), "i/o timeout"):
		// (fasthttp's chunk parser wraps a read's timeout as text.)
		return fasthttp.StatusRequestTimeout
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, errInterrupted), isReset(err):
		return statusClientClosed
	}
	return fasthttp.StatusBadRequest
}
