// Package httpcache puts a pool's response cache (pkg/cache) in the
// request path, as a layer around the one function that forwards a
// request to the pool's backends: a fresh entry is served without asking
// them, a stale one is revalidated (or served while it is, or instead of
// an error), a miss is fetched once for every request that wants it at
// that moment, and what the rules allow is stored. pkg/cache holds the
// rules and the entries; this package decides when to use them. The
// forwarding is the caller's (proxy.Handler's), given as a Forwarder.
package httpcache

import (
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/httpstatus"
	"github.com/offloadlb/lb/pkg/cache"
	"github.com/offloadlb/lb/pkg/upstream"
)

// Forwarder forwards a request to the backends of up and leaves their
// response, or an error response, in ctx. Forward is called from any
// goroutine, for the request's own ctx or (stale-while-revalidate) for a
// copy the layer made, so it must be safe for concurrent use. An
// implementation that is a pointer is passed to Forward without
// allocating.
type Forwarder interface {
	Forward(ctx *fasthttp.RequestCtx, up *upstream.Group) upstream.Outcome
}

// Header names in fasthttp's canonical form, set without normalising
// again.
var (
	hXCache          = []byte("X-Cache")
	hIfNoneMatch     = []byte("If-None-Match")
	hIfModifiedSince = []byte("If-Modified-Since")
	hRange           = []byte("Range")
	hIfRange         = []byte("If-Range")
	hContentRange    = []byte("Content-Range")
)

var (
	xCacheValues [5][]byte
	// keyBufs holds the buffers keys are built in, so that a lookup
	// allocates nothing.
	keyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}
)

func init() {
	for r := cache.Hit; r <= cache.Bypass; r++ {
		xCacheValues[r] = []byte(r.String())
	}
}

// Forward answers the request in ctx through c, the cache of the pool up
// stands for, and calls next for what c cannot answer: a fresh entry is
// served as it is; a stale one is revalidated with the backend (or served
// while it is, within stale-while-revalidate; or instead of an error,
// within stale-if-error); a miss is fetched once for all the requests
// that want it at the same moment, and stored when the rules allow. tls
// is whether the client asked over TLS (the key's scheme). The outcome is
// next's, or the zero Outcome when no backend was asked; either way
// ResultOf says how the cache answered. c may not be nil; goroutines may
// call Forward at once, with one c.
func Forward(ctx *fasthttp.RequestCtx, next Forwarder, up *upstream.Group, c *cache.Cache, tls bool) upstream.Outcome {
	req := &ctx.Request.Header
	f := flow{ctx: ctx, next: next, up: up, c: c}
	f.rc = cache.ParseRequest(req, c.Options().IgnoreClientNoCache)
	keyBuf := keyBufs.Get().(*[]byte)
	f.key = cache.Key((*keyBuf)[:0], ctx.Host(), req.RequestURI(), tls)
	defer func() {
		*keyBuf = f.key[:0]
		keyBufs.Put(keyBuf)
	}()
	if !f.rc.Lookup {
		out := next.Forward(ctx, up)
		if !req.IsGet() && !req.IsHead() && out.Err == nil && ctx.Response.StatusCode() < 400 {
			// A successful unsafe request invalidates what is stored
			// for its URL (RFC 9111 section 4.4).
			c.Purge(f.key)
		}
		result(ctx, c, cache.Bypass)
		return out
	}
	now := time.Now()
	e := c.Get(f.key, req)
	if e == nil {
		if f.rc.OnlyIfCached {
			httpstatus.Answer(&ctx.Response, fasthttp.StatusGatewayTimeout)
			result(ctx, c, cache.Miss)
			return upstream.Outcome{}
		}
		if f.rc.Range {
			// Forwarded as it is, not collapsed with whole requests: a
			// partial answer is not stored (a whole one is).
			return f.fetch(nil)
		}
		return f.miss()
	}
	rc := &f.rc
	stale := e.Staleness(now)
	usable := !e.Fresh.NoCache && !rc.Revalidate
	switch {
	case usable && stale <= 0 && (rc.MaxAge < 0 || e.CurrentAge(now) <= seconds(rc.MaxAge)) && (rc.MinFresh < 0 || -stale >= seconds(rc.MinFresh)):
		serveEntry(ctx, c, e, now, cache.Hit)
		return upstream.Outcome{}
	case usable && stale > 0 && !e.Fresh.MustRevalidate && rc.MaxStale >= 0 && stale <= seconds(rc.MaxStale):
		// The client accepts this much staleness.
		serveEntry(ctx, c, e, now, cache.Stale)
		return upstream.Outcome{}
	case usable && stale > 0 && stale <= e.Fresh.StaleWhileRevalidate:
		serveEntry(ctx, c, e, now, cache.Stale)
		f.revalidateLater(e)
		return upstream.Outcome{}
	}
	return f.revalidate(e)
}

func seconds(n int64) time.Duration { return time.Duration(n) * time.Second }

// flow is one request on its way through the layer: its ctx, where it
// goes when the cache cannot answer it, the cache, its key there and
// what it asks of the cache. It belongs to the request's goroutine; key
// is valid until Forward returns.
type flow struct {
	ctx  *fasthttp.RequestCtx
	next Forwarder
	up   *upstream.Group
	c    *cache.Cache
	key  []byte
	rc   cache.RequestControl
}

// miss fetches a response no entry has. The first request for a key
// fetches it; the others wait for that one (at most the pool's response
// timeout) and share what it stored, or fetch for themselves when it
// stored nothing they can use.
func (f *flow) miss() upstream.Outcome {
	fill, leader := f.c.StartFill(f.key)
	if !leader {
		if e := fill.Wait(f.up.ResponseTimeout); e != nil && e.Matches(&f.ctx.Request.Header) {
			serveEntry(f.ctx, f.c, e, time.Now(), cache.Hit)
			return upstream.Outcome{}
		}
		fill = nil
	}
	return f.fetch(fill)
}

// fetch forwards the request and keeps the response when it may; fill,
// if not nil, is ended with what was kept.
func (f *flow) fetch(fill *cache.Fill) upstream.Outcome {
	sent := time.Now()
	out := f.next.Forward(f.ctx, f.up)
	if out.Err == nil {
		_, out.Body = f.keep(sent, fill, out.Body)
	} else if fill != nil {
		f.c.EndFill(f.key, fill, nil)
	}
	result(f.ctx, f.c, cache.Miss)
	return out
}

// keep stores the response when the rules allow. A streamed body no
// longer than max_object is read whole first (from the backend, at its
// speed, not the client's), stored, and served from memory: the body
// returned is then nil. A longer one streams through, not stored. fill,
// if not nil, is ended with what was stored. storable reports whether the
// rules allowed storing the response.
func (f *flow) keep(sent time.Time, fill *cache.Fill, stream *upstream.Body) (storable bool, _ *upstream.Body) {
	now := time.Now()
	c, resp := f.c, &f.ctx.Response
	fr := cache.Evaluate(f.rc, &resp.Header, now, c.Options())
	var stored *cache.Entry
	switch {
	case !fr.Storable:
	case stream == nil:
		e := cache.NewEntry(&f.ctx.Request.Header, &resp.Header, resp.Body(), fr, sent, now)
		if c.Put(f.key, e) {
			stored = e
		}
	case int64(resp.Header.ContentLength()) <= c.MaxObject():
		body, whole := stream.ReadAhead(c.MaxObject(), &f.ctx.Request)
		if !whole {
			break
		}
		resp.SetBodyRaw(body) // closes the stream: the backend is free
		resp.Header.SetContentLength(len(body))
		stream = nil
		e := cache.NewEntry(&f.ctx.Request.Header, &resp.Header, nil, fr, sent, now)
		e.SetBody(body)
		if c.Put(f.key, e) {
			stored = e
		}
	}
	if fill != nil {
		c.EndFill(f.key, fill, stored)
	}
	return fr.Storable, stream
}

// revalidate asks the backend whether a stale entry still holds, with
// the entry's validators if it has any: a 304 refreshes and serves it, a
// new response replaces it, and a failure is answered with the entry
// within its stale-if-error window.
func (f *flow) revalidate(e *cache.Entry) upstream.Outcome {
	etag, lastMod := e.Validators()
	conditional := etag != nil || lastMod != nil
	ctx, c := f.ctx, f.c
	req := &ctx.Request.Header
	// The client's own conditions are judged by lb against the entry
	// once it is fresh again; the backend gets the entry's. A range is
	// cut from the entry too: the backend is asked for the whole.
	clientINM := append([]byte(nil), req.PeekBytes(hIfNoneMatch)...)
	clientIMS := append([]byte(nil), req.PeekBytes(hIfModifiedSince)...)
	var clientRange, clientIfRange []byte
	if f.rc.Range {
		clientRange = append(clientRange, req.PeekBytes(hRange)...)
		clientIfRange = append(clientIfRange, req.PeekBytes(hIfRange)...)
		req.DelBytes(hRange)
		req.DelBytes(hIfRange)
	}
	restore := func() {
		setConditions(req, clientINM, clientIMS)
		if f.rc.Range {
			req.SetCanonical(hRange, clientRange)
			if len(clientIfRange) > 0 {
				req.SetCanonical(hIfRange, clientIfRange)
			}
		}
	}
	if conditional {
		setConditions(req, etag, lastMod)
	}
	sent := time.Now()
	out := f.next.Forward(ctx, f.up)
	now := time.Now()
	code := ctx.Response.StatusCode()
	switch {
	case out.Err == nil && code == fasthttp.StatusNotModified && conditional:
		n, _ := f.refresh(e, sent, now)
		restore()
		serveEntry(ctx, c, n, now, cache.Revalidated)
		out.Body = nil
		return out
	case (out.Err != nil || code >= 500) && e.Staleness(now) <= e.Fresh.StaleIfError:
		// serveEntry resets the response, which closes a streamed body
		// and frees its backend. The answer is the cache's, not the
		// backend's (see Answered): the backend and its error stay for
		// the access log.
		restore()
		serveEntry(ctx, c, e, now, cache.Stale)
		out.Body = nil
		return out
	}
	if out.Err == nil {
		var storable bool
		if storable, out.Body = f.keep(sent, nil, out.Body); !storable {
			c.Purge(f.key) // replaced by an answer that may not be stored
		}
	}
	result(ctx, c, cache.Miss)
	return out
}

// refresh updates e by the 304 answer in the response and stores it, or
// drops the URL if the update may not be stored; it returns the updated
// entry and whether it was stored.
func (f *flow) refresh(e *cache.Entry, sent, now time.Time) (*cache.Entry, bool) {
	n := e.Refreshed(&f.ctx.Response.Header, f.rc, f.c.Options(), sent, now)
	if n.Fresh.Storable && f.c.Put(f.key, n) {
		return n, true
	}
	f.c.Purge(f.key)
	return n, false
}

// setConditions replaces a request's If-None-Match and If-Modified-Since
// with inm and ims (none when empty).
func setConditions(req *fasthttp.RequestHeader, inm, ims []byte) {
	req.DelBytes(hIfNoneMatch)
	req.DelBytes(hIfModifiedSince)
	if len(inm) > 0 {
		req.SetCanonical(hIfNoneMatch, inm)
	}
	if len(ims) > 0 {
		req.SetCanonical(hIfModifiedSince, ims)
	}
}

// revalidateLater revalidates e in the background (stale-while-
// revalidate), once per key at a time, on a copy of the request (the
// client's has been answered) in a flow of its own.
func (f *flow) revalidateLater(e *cache.Entry) {
	fill, leader := f.c.StartFill(f.key)
	if !leader {
		return // already under way
	}
	bg := &flow{ctx: new(fasthttp.RequestCtx), next: f.next, up: f.up, c: f.c, rc: f.rc}
	bg.ctx.Init(&f.ctx.Request, f.ctx.RemoteAddr(), nil)
	bg.key = append([]byte(nil), f.key...)
	go bg.revalidateBackground(e, fill)
}

// revalidateBackground is revalidateLater's goroutine: it ends fill with
// what it stored.
func (f *flow) revalidateBackground(e *cache.Entry, fill *cache.Fill) {
	resp := &f.ctx.Response
	req := &f.ctx.Request.Header
	etag, lastMod := e.Validators()
	setConditions(req, etag, lastMod)
	req.DelBytes(hRange) // the whole is revalidated
	req.DelBytes(hIfRange)
	sent := time.Now()
	out := f.next.Forward(f.ctx, f.up)
	now := time.Now()
	switch {
	case out.Err != nil:
		f.c.EndFill(f.key, fill, nil)
	case resp.StatusCode() == fasthttp.StatusNotModified:
		var stored *cache.Entry
		if n, ok := f.refresh(e, sent, now); ok {
			stored = n
		}
		f.c.EndFill(f.key, fill, stored)
	case resp.StatusCode() < 500:
		f.keep(sent, fill, out.Body)
	default:
		f.c.EndFill(f.key, fill, nil)
	}
	resp.Reset() // closes a stream: frees the backend
	// and gives back the body memory a body read whole held
	f.ctx.Request.Reset()
}

// result counts how the request was answered and says so in X-Cache.
func result(ctx *fasthttp.RequestCtx, c *cache.Cache, r cache.Result) {
	c.Count(r)
	ctx.SetUserValue(resultKey{}, r)
	if c.Options().XCache {
		ctx.Response.Header.SetCanonical(hXCache, xCacheValues[r])
	}
}

// resultKey is the user value of a request's ctx that holds how the cache
// answered it.
type resultKey struct{}

// ResultOf is how Forward answered the request in ctx; ok is false when
// the request did not go through Forward. It reads ctx, so it belongs to
// the request's goroutine.
func ResultOf(ctx *fasthttp.RequestCtx) (r cache.Result, ok bool) {
	r, ok = ctx.UserValue(resultKey{}).(cache.Result)
	return r, ok
}

// Answered reports whether the cache, not a backend, gave the answer in
// ctx: a hit, or a stale entry served instead of a backend's failure
// (stale-if-error), which must not count as that backend's answer or
// latency. It is false for a request that did not go through Forward,
// and belongs to the request's goroutine.
func Answered(ctx *fasthttp.RequestCtx) bool {
	r, ok := ResultOf(ctx)
	return ok && (r == cache.Hit || r == cache.Stale)
}
