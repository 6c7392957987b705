package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/valyala/fasthttp"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/offloadlb/lb/internal/httpstatus"
	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/cache"
	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/h2"
	"github.com/offloadlb/lb/pkg/httpcache"
	"github.com/offloadlb/lb/pkg/httphead"
	"github.com/offloadlb/lb/pkg/metrics"
	"github.com/offloadlb/lb/pkg/tlsterm"
	"github.com/offloadlb/lb/pkg/tunnel"
	"github.com/offloadlb/lb/pkg/upstream"
)

// maxBufferedBody is the largest response body read whole, releasing the
// backend connection before the client has read anything; bigger and
// unknown-length bodies stream through.
const maxBufferedBody = 64 << 10

// Site is what one http listener serves: its rules and where they send
// requests, its redirect, HSTS, access log and timeouts. It is immutable
// once published, and goroutines may share it; Handler.Update swaps in a
// new one. Rejected may not be nil, so the zero value is not usable.
type Site struct {
	Name string
	// TLS is whether clients connect over TLS (X-Forwarded-Proto: https).
	TLS bool
	// Rules are tried in order; the first match wins.
	Rules []Rule
	// Default serves requests no rule matches. It may be nil only when
	// Redirect is set.
	Default *Dest
	// HSTS, when set, is sent as Strict-Transport-Security on every
	// response.
	HSTS []byte
	// Redirect, when set, answers every request with a 308 to HTTPS.
	Redirect *config.Redirect
	// Rejected counts responses to requests that reached no pool
	// (malformed, redirected). Never nil.
	Rejected *metrics.Codes
	// Access receives one line per request; nil turns access logging off.
	Access hclog.Logger
	// TunnelIdle ends a switched-protocol tunnel (a WebSocket) after this
	// long without a byte either way; 0 for never.
	TunnelIdle time.Duration
	// WriteTimeout bounds writes to the client on connections lb takes
	// over from the HTTP server (a close-delimited body to an HTTP/1.0
	// client, a tunnel): a client that takes no bytes for this long is
	// cut (0: never). The server bounds its own writes with the same
	// value.
	WriteTimeout time.Duration
}

// Dest is a pool as one site sends to it: the upstream, and this site's
// counters for it, resolved when the config is built so that counting a
// request needs no lookup. It is immutable once published, and goroutines
// may share it; Up, Codes and NoBackend may not be nil.
type Dest struct {
	Up *upstream.Group
	// Cache is the pool's response cache, asked before its backends
	// (through httpcache.Forward); nil for none.
	Cache *cache.Cache
	// Codes counts responses by backend index.
	Codes []*metrics.Codes
	// NoBackend counts responses no backend gave (503 and the like).
	NoBackend *metrics.Codes
	// Duration observes request durations; nil for none.
	Duration prometheus.Observer
}

// Rule sends requests for a host and/or path prefix to a pool. It is
// immutable once published, and goroutines may share it; with Host and
// PathPrefix empty it matches every request. A nil Dest sends nowhere
// (503).
type Rule struct {
	// Host is an exact lower-case host name, or "*.example.com" to match
	// any name below example.com; "" matches every host.
	Host string
	// PathPrefix matches the start of the normalised path; "" matches all.
	PathPrefix string
	Dest       *Dest
}

func (r *Rule) match(host, path []byte) bool {
	if r.Host != "" {
		if r.Host[0] == '*' {
			suffix := r.Host[1:] // ".example.com"
			if len(host) <= len(suffix) || !bytes.EqualFold(host[len(host)-len(suffix):], []byte(suffix)) {
				return false
			}
		} else if !bytes.EqualFold(host, []byte(r.Host)) {
			return false
		}
	}
	return r.PathPrefix == "" || bytes.HasPrefix(path, []byte(r.PathPrefix))
}

// route picks the pool for a request: the first rule that matches, else
// Default.
func (s *Site) route(host, path []byte) *Dest {
	if len(s.Rules) == 0 {
		return s.Default
	}
	host = httphead.StripPort(host)
	for i := range s.Rules {
		if s.Rules[i].match(host, path) {
			return s.Rules[i].Dest
		}
	}
	return s.Default
}

// Header names in fasthttp's canonical form, set without normalising
// again.
var (
	hSTS      = []byte("Strict-Transport-Security")
	hLocation = []byte("Location")
	hUpgrade  = []byte("Upgrade")
	http11    = []byte("HTTP/1.1")
)

// Handler serves one listener's requests. It is safe for concurrent use;
// Update may be called while requests are served, and each request uses
// the Site it started with.
type Handler struct {
	site atomic.Pointer[Site]
	log  hclog.Logger
}

// NewHandler returns a handler for site.
func NewHandler(site *Site, log hclog.Logger) *Handler {
	h := &Handler{log: log}
	h.site.Store(site)
	return h
}

// Update makes new requests use site.
func (h *Handler) Update(site *Site) { h.site.Store(site) }

// Serve is the fasthttp request handler.
func (h *Handler) Serve(ctx *fasthttp.RequestCtx) {
	site := h.site.Load()
	var (
		t   *Dest
		out upstream.Outcome
	)
	proto := protoOf(ctx)
	if code, mask := httphead.Check(ctx); code != 0 {
		// Before a redirect too: a redirect listener answers every
		// request, and what is refused elsewhere (an ambiguous length, a
		// bad Host) must not be answered as if it were sound.
		httpstatus.Answer(&ctx.Response, code)
		ctx.SetConnectionClose()
	} else if site.Redirect != nil {
		redirect(ctx, site.Redirect)
	} else if t = site.route(ctx.Host(), ctx.Path()); t == nil {
		httpstatus.Answer(&ctx.Response, fasthttp.StatusServiceUnavailable)
	} else {
		httphead.Prepare(ctx, mask, clientOf(ctx, site.TLS))
		if t.Cache != nil {
			out = httpcache.Forward(ctx, h, t.Up, t.Cache, site.TLS)
		} else {
			out = h.Forward(ctx, t.Up)
		}
		if out.Body != nil && proto == protoHTTP10 && ctx.Response.Header.ContentLength() < 0 {
			closeDelimited(ctx, site.WriteTimeout)
		}
	}
	if site.HSTS != nil {
		ctx.Response.Header.SetCanonical(hSTS, site.HSTS)
	}
	h.account(ctx, site, t, out, proto)
}

// requestStart is when a request began: when its head was read, or for
// one refused while its head was read (which fasthttp never timed), when
// the connection's wait for it began.
func requestStart(ctx *fasthttp.RequestCtx) time.Time {
	if t := ctx.Time(); !t.IsZero() {
		return t
	}
	if t := ctx.ConnTime(); !t.IsZero() {
		return t
	}
	return time.Now()
}

// Client protocols, for the access log (and HTTP/1.0's close-delimited
// bodies).
const (
	protoHTTP11 = iota
	protoHTTP10
	protoHTTP2
)

var protoNames = [...]string{protoHTTP11: "HTTP/1.1", protoHTTP10: "HTTP/1.0", protoHTTP2: "HTTP/2.0"}

func protoOf(ctx *fasthttp.RequestCtx) int {
	if tlsterm.ConnOf(ctx.Conn()).HTTP2() {
		return protoHTTP2
	}
	if ctx.Request.Header.IsHTTP11() {
		return protoHTTP11
	}
	return protoHTTP10
}

// clientOf is what the request's connection says of its client: over
// TLS, and the client certificate's verdict where there is one.
func clientOf(ctx *fasthttp.RequestCtx, tls bool) httphead.Client {
	c := httphead.Client{TLS: tls}
	if tc := tlsterm.ConnOf(ctx.Conn()); tc != nil {
		c.CertVerify, c.CertSubject = tc.ClientVerify, tc.ClientSubject
	}
	return c
}

// account counts a finished request and writes its access log line. It
// is a function of its own, called after Forward returns, so that its
// locals do not deepen the stack under a backend exchange (see pkg/server's
// TestIdleConnectionStack). t is nil for a request that reached no pool.
//
//go:noinline
func (h *Handler) account(ctx *fasthttp.RequestCtx, site *Site, t *Dest, out upstream.Outcome, proto int) {
	code := ctx.Response.StatusCode()
	d := time.Since(requestStart(ctx))
	b := out.Backend
	switch {
	case t == nil:
		site.Rejected.Inc(code)
	case b == nil || (t.Cache != nil && httpcache.Answered(ctx)):
		t.NoBackend.Inc(code)
	default:
		t.Codes[b.Index].Inc(code)
		if out.Err == nil {
			b.ObserveLatency(d)
		}
	}
	if t != nil && t.Duration != nil {
		t.Duration.Observe(d.Seconds())
	}
	if site.Access != nil {
		logAccess(site.Access, ctx, site, t, out, proto, d)
	}
}

// Forward sends the request in ctx to a backend of up, retrying on others
// where that is safe, and leaves the response (or an error response) in
// ctx; it never asks a cache. It is safe for concurrent use, one ctx per
// call, and makes h an httpcache.Forwarder.
func (h *Handler) Forward(ctx *fasthttp.RequestCtx, up *upstream.Group) (out upstream.Outcome) {
	idempotent := httphead.Idempotent(&ctx.Request.Header)
	x := upstream.Exchange{
		Timeout:     up.ResponseTimeout,
		MaxBuffered: maxBufferedBody,
		Replayable:  idempotent,
		Yield:       protoOf(ctx) == protoHTTP2,
	}
	var tried balancer.Tried
	for out.Attempts <= up.Retries {
		lease, err := up.Lease(&tried)
		if err != nil {
			if out.Err == nil {
				out.Err = err
			}
			break
		}
		out.Backend = lease.Backend
		out.Attempts++
		x.Transport = up.Transports[lease.Backend.Index]
		stream, err := x.RoundTrip(&ctx.Request, &ctx.Response)
		if err == nil {
			out.Err = nil
			if stream != nil && stream.Switched() {
				h.tunnel(ctx, up, lease, stream.Tunnel())
				return out
			}
			if stream != nil {
				stream.EndOnClose(lease)
			} else {
				lease.End(nil, true)
			}
			httphead.CleanResponse(&ctx.Response.Header)
			if len(ctx.Response.Header.Peek("Date")) == 0 {
				// The backend's Date is passed on (the server does not
				// write its own, see pkg/server); a response without one
				// gets the time it arrived (RFC 9110 section 6.6.1).
				cache.SetDate(&ctx.Response.Header, time.Now()) //nolint:errcheck // a head fasthttp wrote reads back
			}
			if !ctx.Response.Header.IsHTTP11() {
				ctx.Response.Header.SetProtocol(http11)
			}
			out.Body = stream
			return out
		}
		// A backend that broke off while a request body was being sent
		// may simply have refused the body.
		lease.End(err, errorKind(err) != upstream.ErrSend || len(ctx.Request.Body()) == 0)
		out.Err = err
		if !retryable(err, idempotent) {
			break
		}
		if h.log.IsDebug() {
			h.logRetry(up, lease.Backend, err)
		}
	}
	httpstatus.Answer(&ctx.Response, statusFor(out.Err))
	return out
}

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

// logRetry is kept out of Forward so that its arguments do not enlarge
// Forward's stack frame, which sits under every backend exchange.
//
//go:noinline
func (h *Handler) logRetry(up *upstream.Group, b *balancer.Backend, err error) {
	h.log.Debug("retrying on another backend", "pool", up.Pool.Name, "backend", b.Address, "error", err)
}

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

// statusFor maps a failure to the status the client gets: no backend 503,
// too slow 504, anything else from the backend side 502.
func statusFor(err error) int {
	switch {
	case errors.Is(err, balancer.ErrNoBackend), errors.Is(err, balancer.ErrQueueTimeout):
		return fasthttp.StatusServiceUnavailable
	case errorKind(err) == upstream.ErrTimeout:
		return fasthttp.StatusGatewayTimeout
	}
	return fasthttp.StatusBadGateway
}

// HeaderReceived is the HTTP/1.1 server's HeaderReceived hook, run once a
// head is read and before its body is. fasthttp reads the whole body
// before the handler runs, so a head httphead.Check will refuse would
// otherwise hold the connection for as long as the client trickles (or
// withholds) its body: a chunked body that never ends behind both
// Content-Length and Transfer-Encoding waited for the client to give up.
// Such a head is told it has no body (and no Expect, which would have
// fasthttp send 100 Continue): Serve then runs at once and refuses it
// from the raw head, which this leaves as it was, and the connection
// closes with the body unread. A sound head is left alone.
func (h *Handler) HeaderReceived(rh *fasthttp.RequestHeader) fasthttp.RequestConfig {
	if rh.ContentLength() != 0 {
		if code, _ := httphead.CheckHead(rh); code != 0 {
			rh.SetContentLength(0)
			rh.Del("Expect")
		}
	}
	return fasthttp.RequestConfig{}
}

// ServeError answers requests fasthttp could not parse; it is the
// server's ErrorHandler.
func (h *Handler) ServeError(ctx *fasthttp.RequestCtx, err error) {
	var code int
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.As(err, &small), errors.Is(err, h2.ErrHeadTooLarge):
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

// redirect answers a 308 to the same resource over HTTPS. The host is the
// request's (ctx.Host: for an absolute-form target its authority, RFC 9112
// section 3.2.2), checked by httphead.Check, and the path and query are
// the target's as the client wrote them: the raw target of an absolute
// form would repeat its scheme and authority.
func redirect(ctx *fasthttp.RequestCtx, r *config.Redirect) {
	host := r.Host
	if host == "" {
		host = string(httphead.StripPort(ctx.Host()))
	}
	if host == "" {
		httpstatus.Answer(&ctx.Response, fasthttp.StatusBadRequest)
		return
	}
	loc := make([]byte, 0, 64)
	loc = append(loc, "https://"...)
	if strings.IndexByte(host, ':') >= 0 && host[0] != '[' {
		// An IPv6 address configured as redirect_https's host.
		host = "[" + host + "]"
	}
	loc = append(loc, host...)
	if r.Port != "" {
		loc = append(loc, ':')
		loc = append(loc, r.Port...)
	}
	uri := ctx.URI()
	uri.DisablePathNormalizing = true
	loc = append(loc, uri.RequestURI()...)
	ctx.Response.Header.SetCanonical(hLocation, loc)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.SetStatusCode(fasthttp.StatusPermanentRedirect)
	// lb answers this itself, as an origin would: it sends the Date that
	// the server no longer writes by default (RFC 9110 section 6.6.1).
	cache.SetDate(&ctx.Response.Header, time.Now()) //nolint:errcheck // a head fasthttp wrote reads back
}

// logAccess writes one access log line: who asked what, who answered,
// how, how long it took, over which TLS version. t is nil for a request
// that reached no pool.
func logAccess(log hclog.Logger, ctx *fasthttp.RequestCtx, site *Site, t *Dest, out upstream.Outcome, proto int, d time.Duration) {
	pool, backend, tlsVersion := "", "", ""
	if t != nil {
		pool = t.Up.Pool.Name
	}
	if out.Backend != nil {
		backend = out.Backend.Address
	}
	if c := tlsterm.ConnOf(ctx.Conn()); c != nil {
		tlsVersion = tlsterm.VersionName(c.Version)
	}
	method, host, uri := string(ctx.Method()), string(ctx.Host()), string(ctx.Request.Header.RequestURI())
	if t == nil && out.Err != nil && len(ctx.Request.Header.RawHeaders()) == 0 {
		// Refused before a head was read: what fasthttp holds are its
		// defaults ("GET", "/"), not what the client sent.
		method, host, uri = "", "", ""
	}
	args := []any{
		"listener", site.Name,
		"client", ctx.RemoteAddr().String(),
		"tls", tlsVersion,
		"proto", protoNames[proto],
		"method", method,
		"host", host,
		"uri", uri,
		"status", ctx.Response.StatusCode(),
		"bytes", ctx.Response.Header.ContentLength(),
		"pool", pool,
		"backend", backend,
		"attempts", out.Attempts,
		"duration", d.Round(time.Microsecond).String(),
	}
	if t != nil && t.Cache != nil {
		// How the cache answered (X-Cache, whether or not it is sent).
		r, ok := httpcache.ResultOf(ctx)
		result := ""
		if ok {
			result = r.String()
		}
		args = append(args, "cache", result)
	}
	if out.Err != nil {
		args = append(args, "error", out.Err.Error())
	}
	log.Info("request", args...)
}
