package h2

import (
	"io"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"

	"github.com/offloadlb/lb/internal/abort"
	"github.com/offloadlb/lb/internal/httpstatus"
)

// serveStream starts serving st's request on a worker.
func (c *conn) serveStream(st *stream) {
	st.served = true
	abort.Set(st.ctx, &st.abort)
	c.unserved--
	c.handlers++
	c.wg.Add(1)
	c.srv.workers.Go(job{c, st}) // the pool is never closed
}

// job is a request to serve on a worker. A goroutine kept for reuse
// has the stack the request path needs; a fresh one per request would
// start small and grow it, copying it twice, on every request.
type job struct {
	c  *conn
	st *stream
}

func runJob(j job) { j.c.run(j.st) }

func (c *conn) run(st *stream) {
	defer c.wg.Done()
	ctx := st.ctx
	if st.err != nil {
		c.srv.h.ServeError(ctx, st.err)
	} else {
		c.srv.h.Serve(ctx)
	}
	c.writeResponse(st, ctx)
	// The response body first: closing it ends a request body still
	// being sent to the backend (see upstream.Body.Sending), before the
	// request it reads is failed and reset.
	ctx.Response.Reset()
	if st.body != nil {
		// The response is sent (and the stream reset if the client was
		// still sending, see endLocal): what is left of the body is not
		// read, and no longer held.
		c.mu.Lock()
		c.failBody(st, errBodyDone)
		c.mu.Unlock()
	}
	ctx.Request.Reset()
	ctx.ResetUserValues()
	c.srv.ctxs.Put(ctx)

	c.mu.Lock()
	c.unhold(st) // the body is forwarded, and ctx reset above
	c.handlers--
	st.ctx = nil
	done := c.quiet() && (c.sentGoAway || c.peerGoAway)
	if !done {
		c.setDeadline()
	}
	c.mu.Unlock()
	if done {
		c.w.Close()
	}
}

// writeResponse sends ctx.Response on st: the head, then the body, a
// streamed one flushed as it arrives so that event streams and long polls
// are not held back. A body that breaks off resets the stream, so the
// client cannot take it for whole.
func (c *conn) writeResponse(st *stream, ctx *fasthttp.RequestCtx) {
	resp := &ctx.Response
	code := resp.StatusCode()
	skip := ctx.IsHead() || resp.SkipBody || httpstatus.NoBody(code)
	streamed := resp.IsBodyStream()
	cl := resp.Header.ContentLength()
	var body []byte
	if !skip && !streamed {
		body = resp.Body()
		cl = len(body)
	}
	c.mu.Lock()
	if st.reset || c.closed {
		c.mu.Unlock()
		return
	}
	end := skip || (!streamed && len(body) == 0)
	c.writeHead(st.id, c.encodeHead(resp, cl), end)
	if end {
		c.endLocal(st)
		c.mu.Unlock()
		return
	}
	if !streamed {
		c.writeData(st, body, true)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()

	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	bs := resp.BodyStream()
	for {
		n, err := bs.Read(*bp)
		c.mu.Lock()
		ok := true
		if n > 0 || err == io.EOF {
			ok = c.writeData(st, (*bp)[:n], err == io.EOF)
		}
		if err != nil && err != io.EOF && ok {
			c.resetLocked(st.id, http2.ErrCodeInternal)
		}
		c.mu.Unlock()
		if err != nil || !ok {
			return
		}
	}
}

// writeHead writes a header block as HEADERS and, past the frame size,
// CONTINUATION frames.
func (c *conn) writeHead(id uint32, block []byte, end bool) {
	frag := block[:min(len(block), frameSize)]
	block = block[len(frag):]
	_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0}) // write errors show on the next read
	for len(block) > 0 {
		frag = block[:min(len(block), frameSize)]
		block = block[len(frag):]
		_ = c.fr.WriteContinuation(id, len(block) == 0, frag) // write errors show on the next read
	}
}

// writeInterim sends a 1xx response head.
func (c *conn) writeInterim(id uint32, code int) {
	c.hbuf = appendStatus(c.hbuf[:0], code)
	c.writeHead(id, c.hbuf, false)
}

// writeData sends p on st within the flow-control credit the client
// gives, waiting for more (at most WriteTimeout); end ends the stream.
// False when the stream or connection is gone.
func (c *conn) writeData(st *stream, p []byte, end bool) bool {
	var timer *time.Timer
	var expired bool
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if st.reset || c.closed {
			return false
		}
		n := int64(len(p))
		if n > 0 {
			n = min(n, frameSize, st.sendWin, c.sendWin)
			if n <= 0 {
				if expired {
					c.resetLocked(st.id, http2.ErrCodeCancel)
					return false
				}
				if timer == nil && c.srv.o.WriteTimeout > 0 {
					timer = time.AfterFunc(c.srv.o.WriteTimeout, func() {
						c.mu.Lock()
						expired = true
						c.cond.Broadcast()
						c.mu.Unlock()
					})
				}
				c.cond.Wait()
				continue
			}
		}
		last := end && n == int64(len(p))
		if err := c.fr.WriteData(st.id, last, p[:n]); err != nil {
			return false
		}
		st.sendWin -= n
		c.sendWin -= n
		p = p[n:]
		if last {
			c.endLocal(st)
			return true
		}
		if len(p) == 0 {
			return true
		}
	}
}

// endLocal: lb ended st. A client still sending a body it no longer
// needs (the answer was 413, or the handler answered without reading the
// body to its end) is told to stop: RST_STREAM NO_ERROR after a complete
// response (RFC 9113 section 8.1).
func (c *conn) endLocal(st *stream) {
	st.localDone = true
	if !st.remoteDone {
		c.resetLocked(st.id, http2.ErrCodeNo)
		return
	}
	delete(c.streams, st.id)
}

// copyBufPool holds the buffers streamed response bodies are read into.
var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
