package proxy

import (
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/httphead"
	"github.com/offloadlb/lb/pkg/tunnel"
	"github.com/offloadlb/lb/pkg/upstream"
)

// closeDelimited sends a streamed body of unknown length to an HTTP/1.0
// client, which cannot read chunked encoding (RFC 9112 section 6.1): the
// connection is taken over, the head written with Connection: close, and
// the body copied until it ends; closing the connection ends it for the
// client. The server clears its deadlines on the connections it hands
// over, so each write gets writeTimeout here: a client that stops reading
// would otherwise hold the backend's slot for ever. fasthttp closes the
// stream (and frees the backend) when it releases the request afterwards.
func closeDelimited(ctx *fasthttp.RequestCtx, writeTimeout time.Duration) {
	h := &ctx.Response.Header
	h.SetContentLength(-2) // no length: delimited by close
	h.Del("Transfer-Encoding")
	h.SetConnectionClose()
	head := append([]byte(nil), h.Header()...)
	body := ctx.Response.BodyStream()
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		w := deadlineWriter{c: c, timeout: writeTimeout}
		if _, err := w.Write(head); err != nil {
			return
		}
		_, _ = io.Copy(w, body)
	})
}

// deadlineWriter gives each write to a connection its own deadline.
type deadlineWriter struct {
	c       net.Conn
	timeout time.Duration
}

func (w deadlineWriter) Write(p []byte) (int, error) {
	if w.timeout > 0 {
		if err := w.c.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
			return 0, err
		}
	}
	return w.c.Write(p)
}

// tunnel answers 101 to the client and, once the answer is out, pipes
// bytes both ways between client and backend until either side closes,
// the tunnel idles for the listener's idle_timeout, or one side takes no
// bytes for its write_timeout (the server's deadlines end at the hand
// over, so the pipe enforces its own). The backend stays
// counted as busy (least_conn sees open WebSockets) until then.
//
//go:noinline
func (h *Handler) tunnel(ctx *fasthttp.RequestCtx, up *upstream.Group, lease balancer.Lease, bc net.Conn) {
	rh := &ctx.Response.Header
	proto := append([]byte(nil), rh.PeekBytes(hUpgrade)...)
	httphead.CleanResponse(rh)
	head := make([]byte, 0, 256)
	head = append(head, "HTTP/1.1 101 Switching Protocols\r\n"...)
	for k, v := range rh.All() {
		if string(k) == "Content-Length" || string(k) == "Transfer-Encoding" {
			continue
		}
		head = append(append(append(append(head, k...), ": "...), v...), "\r\n"...)
	}
	head = append(append(append(head, "Upgrade: "...), proto...), "\r\nConnection: Upgrade\r\n\r\n"...)
	site := h.site.Load()
	t := tunnel.Timeouts{Idle: site.TunnelIdle, Write: site.WriteTimeout}
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		var in, out atomic.Int64
		_, err := deadlineWriter{c: c, timeout: t.Write}.Write(head)
		if err == nil {
			// From here the pipe's watchdog bounds the writes.
			err = c.SetWriteDeadline(time.Time{})
		}
		if err == nil {
			err = tunnel.Pipe(c, bc, t, &in, &out)
		} else {
			bc.Close()
		}
		if err != nil && h.log.IsDebug() {
			h.log.Debug("tunnel ended", "pool", up.Pool.Name, "backend", lease.Backend.Address, "bytes_in", in.Load(), "bytes_out", out.Load(), "error", err)
		}
		lease.End(nil, true)
	})
}
