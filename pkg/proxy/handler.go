package proxy

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/offloadlb/lb/pkg/policy"

	"github.com/offloadlb/lb/pkg/affinity"

	"github.com/hashicorp/go-hclog"
	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/abort"
	"github.com/offloadlb/lb/internal/httpstatus"
	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/cache"
	"github.com/offloadlb/lb/pkg/httpcache"
	"github.com/offloadlb/lb/pkg/httphead"
	"github.com/offloadlb/lb/pkg/tlsterm"
	"github.com/offloadlb/lb/pkg/upstream"
)

// maxBufferedBody is the largest response body read whole, releasing the
// backend connection before the client has read anything; bigger and
// unknown-length bodies stream through.
const maxBufferedBody = 64 << 10

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
		rp  *RoutePolicy
		out upstream.Outcome
	)
	proto := protoOf(ctx)
	own := true // lb answers the request itself, unless a backend or cache does
	if code, mask := httphead.Check(ctx); code != 0 {
		// Before a redirect too: a redirect listener answers every
		// request, and what is refused elsewhere (an ambiguous length, a
		// bad Host) must not be answered as if it were sound.
		httpstatus.Answer(&ctx.Response, code)
		ctx.SetConnectionClose()
	} else if site.ACME != nil && serveChallenge(ctx, site.ACME) {
		// An ACME http-01 validation, answered here on a redirecting
		// listener too: the CA fetches the answer over plain HTTP.
	} else if site.Redirect != nil {
		redirect(ctx, site.Redirect)
	} else if site.Limit != nil && limited(ctx, site.Limit) {
		// Over the listener's rate: answered 429.
	} else if t, rp = site.route(ctx.Host(), ctx.Path()); rp != nil && routeAnswers(ctx, rp) {
		t = nil // refused or redirected by the route: no pool's
	} else if t == nil {
		httpstatus.Answer(&ctx.Response, fasthttp.StatusServiceUnavailable)
	} else {
		httphead.Prepare(ctx, mask, clientOf(ctx, site.TLS))
		if site.Headers != nil || rp != nil {
			requestRules(ctx, site.Headers, rp)
		}
		if ctx.Request.IsBodyStream() {
			out = h.forwardBody(ctx, site, t, proto == protoHTTP2)
		} else {
			out = h.forwardTo(ctx, site, t)
		}
		own = out.Err != nil && !(t.Cache != nil && httpcache.Answered(ctx))
		if site.Compress != nil && !own {
			// After the cache has kept its (identity) copy, before an
			// HTTP/1.0 client's stream is taken over; Apply is kept out
			// of line, off every request's stack.
			site.Compress.Apply(ctx)
		}
		if t.Up.Sticky != nil && out.Backend != nil && out.Err == nil {
			setSticky(ctx, t.Up.Sticky, out.Backend.Index, site.TLS)
		}
		if out.Body != nil && proto == protoHTTP10 && ctx.Response.Header.ContentLength() < 0 {
			closeDelimited(ctx, site.WriteTimeout)
		}
	}
	if own && site.Pages != nil {
		errorPage(ctx, site)
	}
	if site.Headers != nil || rp != nil && rp.Headers != nil {
		responseRules(ctx, site.Headers, rp)
	}
	if site.HSTS != nil {
		ctx.Response.Header.SetCanonical(hSTS, site.HSTS)
	}
	h.account(ctx, site, t, out, proto)
}

// routeAnswers answers a request its route refuses (403: the client's
// address is not let in) or redirects (308), and reports whether it did.
//
//go:noinline
func routeAnswers(ctx *fasthttp.RequestCtx, rp *RoutePolicy) bool {
	if rp.Access != nil && !rp.Access.AllowsAddr(ctx.RemoteAddr()) {
		httpstatus.Answer(&ctx.Response, fasthttp.StatusForbidden)
		return true
	}
	if rp.Limit != nil && limited(ctx, rp.Limit) {
		return true
	}
	if rp.Auth != nil && !authorized(ctx, rp.Auth) {
		return true
	}
	if rp.Redirect != "" {
		var buf [256]byte
		uri := ctx.URI()
		uri.DisablePathNormalizing = true
		loc := policy.Redirect(buf[:0], rp.Redirect, uri.RequestURI())
		ctx.Response.Header.SetCanonical(hLocation, loc)
		ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
		ctx.SetStatusCode(fasthttp.StatusPermanentRedirect)
		cache.SetDate(&ctx.Response.Header, time.Now())
		return true
	}
	return false
}

// limited takes a token of the client's bucket in lim, and answers 429
// with Retry-After when there is none, reporting whether it did.
//
//go:noinline
func limited(ctx *fasthttp.RequestCtx, lim *policy.Limiter) bool {
	ok, wait := lim.Allow(policy.AddrOf(ctx.RemoteAddr()), time.Now())
	if ok {
		return false
	}
	lim.Limited.Inc()
	httpstatus.Answer(&ctx.Response, fasthttp.StatusTooManyRequests)
	var buf [8]byte
	ctx.Response.Header.SetCanonical(hRetryAfter, strconv.AppendInt(buf[:0], int64(policy.RetryAfter(wait)), 10))
	return true
}

var hRetryAfter = []byte("Retry-After")

// authorized checks the request's credentials against a, answering 401
// (or 429, for an address that has guessed too often) when they do not
// pass, and reports whether they did. The credentials are not passed on
// unless a says so.
func authorized(ctx *fasthttp.RequestCtx, a *policy.BasicAuth) bool {
	h := &ctx.Request.Header
	switch a.Check(h.PeekBytes(hAuthorization), policy.AddrOf(ctx.RemoteAddr()), time.Now()) {
	case policy.AuthFailed:
		httpstatus.Answer(&ctx.Response, fasthttp.StatusUnauthorized)
		ctx.Response.Header.SetCanonical(hWWWAuthenticate, a.Challenge)
		return false
	case policy.AuthLimited:
		httpstatus.Answer(&ctx.Response, fasthttp.StatusTooManyRequests)
		ctx.Response.Header.SetCanonical(hRetryAfter, []byte("6"))
		return false
	}
	if !a.Forward {
		h.DelBytes(hAuthorization)
	}
	return true
}

var (
	hAuthorization   = []byte("Authorization")
	hWWWAuthenticate = []byte("WWW-Authenticate")
)

// requestRules rewrites a request for its backend as its listener's
// header rules and its route say, after httphead.Prepare: the path
// without the route's prefix, then the listener's rules, then the
// route's.
//
//go:noinline
func requestRules(ctx *fasthttp.RequestCtx, listener *policy.HeaderRules, rp *RoutePolicy) {
	h := &ctx.Request.Header
	if rp != nil && rp.StripPrefix != "" {
		var buf [256]byte
		if target, ok := policy.StripPrefix(buf[:0], h.RequestURI(), rp.StripPrefix); ok {
			h.SetRequestURIBytes(target)
		} else {
			// The target as written does not start with the prefix the
			// normalised path matched (%-escapes, dot segments): the
			// normalised path stands for it.
			uri := ctx.URI()
			path, _ := policy.StripPrefix(buf[:0], uri.Path(), rp.StripPrefix)
			if q := uri.QueryString(); len(q) > 0 {
				path = append(append(path, '?'), q...)
			}
			h.SetRequestURIBytes(path)
		}
	}
	listener.Request(h)
	if rp != nil {
		rp.Headers.Request(h)
	}
}

// responseRules applies the listener's and then the route's response
// header rules, to every answer, lb's own included.
//
//go:noinline
func responseRules(ctx *fasthttp.RequestCtx, listener *policy.HeaderRules, rp *RoutePolicy) {
	listener.Response(&ctx.Response.Header)
	if rp != nil {
		rp.Headers.Response(&ctx.Response.Header)
	}
}

// setSticky gives the client the sticky cookie of the backend at Index
// i, which answered, unless its cookie names that backend already. It
// runs once a cache has stored the answer, so that no stored answer
// carries one client's cookie to others; an upgrade's answer, written
// before, got it from passOn.
//
//go:noinline
func setSticky(ctx *fasthttp.RequestCtx, s *affinity.Sticky, i int, tls bool) {
	if had := s.Backend(&ctx.Request.Header); had != i && !ctx.Hijacked() {
		s.Set(&ctx.Response.Header, i, tls, had >= 0)
	}
}

// errorPage puts the operator's page for the status of an answer lb
// made itself in place of lb's short text, if there is one.
//
//go:noinline
func errorPage(ctx *fasthttp.RequestCtx, site *Site) {
	pg, ok := site.Pages[ctx.Response.StatusCode()]
	if !ok {
		return
	}
	ctx.Response.Header.SetContentType(pg.ContentType)
	ctx.Response.SetBodyRaw(pg.Body)
}

// forwardTo sends the request to t's pool, through its cache if it has
// one.
func (h *Handler) forwardTo(ctx *fasthttp.RequestCtx, site *Site, t *Dest) upstream.Outcome {
	if t.Cache != nil {
		return httpcache.Forward(ctx, h, t.Up, t.Cache, site.TLS)
	}
	return h.Forward(ctx, t.Up)
}

// forwardBody is forwardTo for a request whose body is a stream (see
// takeBody). It is kept out of Serve, whose stack frame sits under every
// request.
//
//go:noinline
func (h *Handler) forwardBody(ctx *fasthttp.RequestCtx, site *Site, t *Dest, h2 bool) upstream.Outcome {
	cb, code := takeBody(ctx, site, h2)
	if code != 0 {
		bodyFailed(ctx, code)
		lingerOnClose(ctx.Conn())
		return upstream.Outcome{Err: errBodyFailed}
	}
	if cb.streams() {
		ctx.Request.SetBodyStream(cb, ctx.Request.Header.ContentLength())
	}
	out := h.forwardTo(ctx, site, t)
	if out.Body.Sending(cb.release) {
		// The backend answered while the body was still being sent,
		// which goes on while the answer is passed on: the body's
		// buffers are released when it ends. The connection carries
		// nothing after (the server must not look at the request's
		// stream while it is read elsewhere), and closes gently.
		ctx.SetConnectionClose()
		lingerOnClose(ctx.Conn())
		return out
	}
	if cb.streams() && !cb.eof {
		// Answered before the body was all read: the connection closes
		// (fasthttp will not read past a body left unread), gently.
		ctx.SetConnectionClose()
		lingerOnClose(ctx.Conn())
	}
	// The request is done with its body (the response may still be on
	// its way, but nothing reads the request's again).
	ctx.Request.ResetBody()
	cb.release()
	return out
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

// Forward sends the request in ctx to a backend of up, retrying on others
// where that is safe, and leaves the response (or an error response) in
// ctx; it never asks a cache. It is safe for concurrent use, one ctx per
// call, and makes h an httpcache.Forwarder.
func (h *Handler) Forward(ctx *fasthttp.RequestCtx, up *upstream.Group) (out upstream.Outcome) {
	// What is kept while backends are tried is pooled rather than on
	// the stack, where it would sit under every backend exchange and
	// take from what keeps an idle connection's goroutine at 4 KiB
	// (TestIdleConnectionStack).
	st := forwardStates.Get().(*forwardState)
	defer st.release()
	x, tried := &st.x, &st.tried
	idempotent := httphead.Idempotent(&ctx.Request.Header)
	x.Timeout = up.ResponseTimeout
	x.MaxBuffered = maxBufferedBody
	x.Replayable = idempotent
	x.Yield = protoOf(ctx) == protoHTTP2
	if ctx.Request.IsBodyStream() && streamBody(x, &ctx.Request) {
		// Sent once: after a connect failure alone (nothing sent) it
		// goes to another backend.
		idempotent = false
	}
	if !up.FinishAborted {
		if x.Yield {
			// Only the HTTP/2 front end gives a request an abort
			// signal: an HTTP/1.1 request skips the lookup.
			x.Abort = abort.From(ctx)
		} else {
			// An HTTP/1.1 client's going away shows only on its
			// socket: the exchange asks it while the answer is late.
			x.Client, _ = ctx.Conn().(upstream.Client)
		}
	}
	if up.Key.Kind != affinity.KeyNone {
		if k, ok := up.Key.Of(&ctx.Request.Header, ctx.RemoteAddr()); ok {
			tried.SetKey(k)
		}
	}
	sticky := -1
	if up.Sticky != nil {
		sticky = up.Sticky.Backend(&ctx.Request.Header)
	}
	for out.Attempts <= up.Retries {
		if err := st.pick(up, sticky, out.Attempts == 0); err != nil {
			if out.Err == nil {
				out.Err = err
			}
			break
		}
		out.Backend = st.lease.Backend
		out.Attempts++
		x.Transport = up.Transports[st.lease.Backend.Index]
		stream, err := x.RoundTrip(&ctx.Request, &ctx.Response)
		if err == nil {
			out.Err = nil
			out.Body = h.passOn(ctx, up, st, stream, sticky)
			return out
		}
		out.Err = err
		if !h.attemptFailed(ctx, up, st, err, idempotent) {
			break
		}
	}
	code := statusFor(out.Err)
	httpstatus.Answer(&ctx.Response, code)
	if code == statusClientClosed {
		abandon(ctx)
	} else if isBodyError(out.Err) {
		ctx.SetConnectionClose() // the rest of the body is not read
	}
	return out
}

// forwardState is what Forward keeps while it tries backends.
type forwardState struct {
	x     upstream.Exchange
	tried balancer.Tried
	lease balancer.Lease
	// start is when the attempt on lease began, for pools that time
	// their backends (least_time).
	start time.Time
}

// pick leases the backend of the next attempt into st.lease: on the
// first, the one the client's sticky cookie names (the Index sticky, -1
// for none) while it may take the request (up, drained or not); else,
// or if it may not, the pool's pick. It is kept out of Forward, whose
// stack frame sits under every backend exchange.
//
//go:noinline
func (st *forwardState) pick(up *upstream.Group, sticky int, first bool) error {
	var err error
	if sticky >= 0 && first {
		st.lease, err = up.Pool.LeaseOn(up.Pool.Backends[sticky], &st.tried, up.QueueTimeout, up.Health)
		switch err {
		case balancer.ErrNoBackend:
			st.lease, err = up.Lease(&st.tried)
		case balancer.ErrQueueTimeout:
			// It waited its time for its own backend: another may take
			// it now, but it waits no more.
			st.lease, err = up.Pool.Lease(&st.tried, 0, up.Health)
		}
	} else {
		st.lease, err = up.Lease(&st.tried)
	}
	if err == nil && up.TimeBackends {
		st.start = time.Now()
	}
	return err
}

// passOn readies a backend's answer, which came on st.lease, for the
// client, and returns its body to stream if there is one; sticky is the
// Index of the backend the client's sticky cookie named (-1 for none).
// It is kept out of Forward, whose stack frame sits under every backend
// exchange.
//
//go:noinline
func (h *Handler) passOn(ctx *fasthttp.RequestCtx, up *upstream.Group, st *forwardState, stream *upstream.Body, sticky int) *upstream.Body {
	lease := &st.lease
	if up.TimeBackends && st.x.Body == nil {
		// The time to the answer's head (and whole body when it is
		// short); an upload's would count the client's pace too.
		now := time.Now()
		lease.Backend.ObserveTime(now.Sub(st.start), now)
	}
	if stream != nil && stream.Switched() {
		if up.Sticky != nil && lease.Backend.Index != sticky {
			// The upgrade's answer is written now: the cookie goes with
			// it (other answers get theirs in Serve, see setSticky).
			up.Sticky.Set(&ctx.Response.Header, lease.Backend.Index, tlsterm.ConnOf(ctx.Conn()) != nil, sticky >= 0)
		}
		h.tunnel(ctx, up, *lease, stream.Tunnel())
		return nil
	}
	if stream != nil {
		stream.EndOnClose(*lease)
	} else {
		lease.End(nil, true)
	}
	httphead.CleanResponse(&ctx.Response.Header)
	if len(ctx.Response.Header.Peek("Date")) == 0 {
		// The backend's Date is passed on (the server does not write
		// its own, see pkg/server); a response without one gets the
		// time it arrived (RFC 9110 section 6.6.1).
		cache.SetDate(&ctx.Response.Header, time.Now())
	}
	if !ctx.Response.Header.IsHTTP11() {
		ctx.Response.Header.SetProtocol(http11)
	}
	return stream
}

// attemptFailed settles lease after its exchange failed with err and
// reports whether the request may go to another backend. It is kept out
// of Forward, whose stack frame sits under every backend exchange.
//
//go:noinline
func (h *Handler) attemptFailed(ctx *fasthttp.RequestCtx, up *upstream.Group, st *forwardState, err error, idempotent bool) bool {
	lease := &st.lease
	// A backend that broke off while a request body was being sent may
	// simply have refused the body; one whose exchange was cut because
	// the client went away said nothing of its health.
	if kind := errorKind(err); kind == upstream.ErrAborted || isBodyError(err) {
		lease.Withdraw()
	} else {
		if up.TimeBackends && st.x.Body == nil {
			// A failure takes the time it took, as an answer would: a
			// backend that hangs until response_timeout is charged
			// that long (the backend that answers the retry is charged
			// only its own time).
			now := time.Now()
			lease.Backend.ObserveTime(now.Sub(st.start), now)
		}
		// (Body is not asked of a streamed body: it would read the
		// rest of it into memory.)
		lease.End(err, kind != upstream.ErrSend || !ctx.Request.IsBodyStream() && len(ctx.Request.Body()) == 0)
	}
	if !retryable(err, idempotent) {
		return false
	}
	if h.log.IsDebug() {
		h.logRetry(up, lease.Backend, err)
	}
	return true
}

var forwardStates = sync.Pool{New: func() any { return new(forwardState) }}

func (st *forwardState) release() {
	*st = forwardState{}
	forwardStates.Put(st)
}

// streamBody makes x stream req's body if it is one takeBody left to
// stream, and reports whether it did. It is kept out of Forward, whose
// stack frame sits under every backend exchange.
//
//go:noinline
func streamBody(x *upstream.Exchange, req *fasthttp.Request) bool {
	cb, ok := req.BodyStream().(*clientBody)
	if !ok || !cb.streams() {
		return false
	}
	x.Body, x.BodyLen = cb, int64(req.Header.ContentLength())
	x.Duplex = cb.ctx != nil && x.BodyLen >= 0 // HTTP/1.1, no trailers
	return true
}

// logRetry is kept out of Forward so that its arguments do not enlarge
// Forward's stack frame, which sits under every backend exchange.
//
//go:noinline
func (h *Handler) logRetry(up *upstream.Group, b *balancer.Backend, err error) {
	h.log.Debug("retrying on another backend", "pool", up.Pool.Name, "backend", b.Address, "error", err)
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
//
// A body the head says is longer than max_request_body is treated the
// same way, and the head marked (hTooLarge) for takeBody to answer 413:
// otherwise the server would wait for the start of a body the client,
// told to wait (Expect: 100-continue) or not, may never send.
func (h *Handler) HeaderReceived(rh *fasthttp.RequestHeader) fasthttp.RequestConfig {
	if cl := rh.ContentLength(); cl != 0 {
		if code, _ := httphead.CheckHead(rh); code != 0 {
			rh.SetContentLength(0)
			rh.Del("Expect")
		} else if max := h.site.Load().MaxBody; max > 0 && int64(cl) > max {
			rh.SetContentLength(0)
			rh.Del("Expect")
			rh.SetCanonical(hTooLarge, http11)
		}
	}
	return fasthttp.RequestConfig{}
}

// hTooLarge marks a request HeaderReceived found too large. Its name has
// spaces, which no field name a client sends may have (httphead.Check
// refuses them), so it comes from HeaderReceived alone, and it goes
// nowhere: the request is answered 413.
var hTooLarge = []byte("Lb Body Too Large")
