package proxy

import (
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/accesslog"
	"github.com/offloadlb/lb/pkg/httpcache"
	"github.com/offloadlb/lb/pkg/tlsterm"
	"github.com/offloadlb/lb/pkg/upstream"
)

// requestStart is when a request began: when its head was read, or for
// one refused while its head was read (which fasthttp never timed), when
// the connection's wait for it began; now if neither is known.
func requestStart(ctx *fasthttp.RequestCtx, now time.Time) time.Time {
	if t := ctx.Time(); !t.IsZero() {
		return t
	}
	if t := ctx.ConnTime(); !t.IsZero() {
		return t
	}
	return now
}

// account counts a finished request and writes its access log line. It
// is a function of its own, called after Forward returns, so that its
// locals do not deepen the stack under a backend exchange (see pkg/server's
// TestIdleConnectionStack). t is nil for a request that reached no pool.
//
//go:noinline
func (h *Handler) account(ctx *fasthttp.RequestCtx, site *Site, t *Dest, out upstream.Outcome, proto int) {
	code := ctx.Response.StatusCode()
	now := time.Now()
	d := now.Sub(requestStart(ctx, now))
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
		logAccess(site.Access, ctx, site, t, out, proto, now, d)
	}
}

// logAccess writes one access log line: who asked what, who answered,
// how, how long it took, over which TLS version. t is nil for a request
// that reached no pool. It allocates nothing (for a request without an
// error): the line is built from the request's own buffers.
func logAccess(log *accesslog.Log, ctx *fasthttp.RequestCtx, site *Site, t *Dest, out upstream.Outcome, proto int, now time.Time, d time.Duration) {
	r := accesslog.Request{
		Listener: site.Name,
		Client:   ctx.RemoteAddr(),
		Proto:    protoNames[proto],
		Method:   ctx.Method(),
		Host:     ctx.Host(),
		URI:      ctx.Request.Header.RequestURI(),
		Status:   ctx.Response.StatusCode(),
		Bytes:    ctx.Response.Header.ContentLength(),
		Attempts: out.Attempts,
		Duration: d.Round(time.Microsecond),
		Err:      out.Err,
		Time:     now,
	}
	if t != nil {
		r.Pool = t.Up.Pool.Name
	}
	if out.Backend != nil {
		r.Backend = out.Backend.Address
	}
	if c := tlsterm.ConnOf(ctx.Conn()); c != nil {
		r.TLS = tlsterm.VersionName(c.Version)
	}
	if t == nil && out.Err != nil && len(ctx.Request.Header.RawHeaders()) == 0 {
		// Refused before a head was read: what fasthttp holds are its
		// defaults ("GET", "/"), not what the client sent.
		r.Method, r.Host, r.URI = nil, nil, nil
	}
	if t != nil && t.Cache != nil {
		// How the cache answered (X-Cache, whether or not it is sent).
		if res, ok := httpcache.ResultOf(ctx); ok {
			r.Cache = res.String()
		}
		r.CacheSet = true
	}
	if log.Format() == accesslog.Combined {
		r.Referer, r.UserAgent = ctx.Request.Header.Referer(), ctx.Request.Header.UserAgent()
	}
	log.Request(&r)
}
