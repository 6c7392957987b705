package proxy

import (
	"errors"
	"net"
	"syscall"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/httpstatus"
	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/upstream"
)

// errorKind is the kind of an upstream.Error in err's chain; 0 when
// there is none.
func errorKind(err error) upstream.ErrorKind {
	var e *upstream.Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

// retryable reports whether a request that failed with err may be sent to
// another backend: always when nothing was sent, otherwise only when the
// method is idempotent (RFC 9110 section 9.2.2).
func retryable(err error, idempotent bool) bool {
	switch errorKind(err) {
	case upstream.ErrConnect:
		return true
	case upstream.ErrStale, upstream.ErrSend, upstream.ErrTimeout, upstream.ErrResponse:
		return idempotent
	}
	return false
}

// statusClientClosed is what the access log and the counters show for a
// request whose client went away before its answer (NGINX's 499); the
// client gets nothing.
const statusClientClosed = 499

// statusFor maps a failure to the status the client gets: no backend 503,
// too slow 504, the client gone 499, anything else from the backend side
// 502.
func statusFor(err error) int {
	var be *upstream.BodyError
	switch {
	case errors.As(err, &be):
		return bodyStatus(be.Err)
	case errorKind(err) == upstream.ErrAborted:
		return statusClientClosed
	case errors.Is(err, balancer.ErrNoBackend), errors.Is(err, balancer.ErrQueueTimeout):
		return fasthttp.StatusServiceUnavailable
	case errorKind(err) == upstream.ErrTimeout:
		return fasthttp.StatusGatewayTimeout
	}
	return fasthttp.StatusBadGateway
}

// ServeError answers requests fasthttp could not parse; it is the
// server's ErrorHandler.
func (h *Handler) ServeError(ctx *fasthttp.RequestCtx, err error) {
	var code int
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.As(err, &small), errors.Is(err, httpstatus.ErrHeadTooLarge):
		code = fasthttp.StatusRequestHeaderFieldsTooLarge
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		code = fasthttp.StatusRequestEntityTooLarge
	case errors.As(err, &ne) && ne.Timeout():
		code = fasthttp.StatusRequestTimeout
	default:
		code = fasthttp.StatusBadRequest
	}
	httpstatus.Answer(&ctx.Response, code)
	if h.log.IsDebug() {
		h.log.Debug("rejected request", "client", ctx.RemoteAddr().String(), "status", code, "error", err)
	}
	h.account(ctx, h.site.Load(), nil, upstream.Outcome{Err: err}, protoOf(ctx))
}

// isBodyError reports whether an exchange failed on the client's side of
// a streamed request body.
func isBodyError(err error) bool {
	var be *upstream.BodyError
	return errors.As(err, &be)
}

// isReset reports a connection the client reset or closed under a write.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// errBodyFailed is the outcome of a request whose body failed before it
// was sent anywhere; its status is in the response.
var errBodyFailed = errors.New("request body failed")

// bodyFailed answers a request whose body failed before a backend was
// picked; a client that went away gets nothing, and 499 is logged.
func bodyFailed(ctx *fasthttp.RequestCtx, code int) {
	httpstatus.Answer(&ctx.Response, code)
	ctx.SetConnectionClose()
	if code == statusClientClosed {
		abandon(ctx)
	}
}

// abandon ends the connection of a request whose client went away
// without writing it an answer: 499 is for the access log and counters
// alone, and a client that half-closed could still read one. Over HTTP/2
// the stream is reset already and nothing is written.
func abandon(ctx *fasthttp.RequestCtx) {
	if hc, ok := ctx.Conn().(*headConn); ok {
		hc.linger = false
		_ = hc.Conn.Close() // the server's writes then fail, and it closes too
	}
}
