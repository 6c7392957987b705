package proxy

import (
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/httpcache"
	"github.com/offloadlb/lb/pkg/tlsterm"
	"github.com/offloadlb/lb/pkg/upstream"
)

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
