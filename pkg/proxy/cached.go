package proxy

import (
	"bytes"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/cache"
	"github.com/offloadlb/lb/pkg/upstream"
)

// The response cache in the request path: after routing, before a
// backend is picked, so that a hit costs no pick and no backend
// connection. HTTP/1.1 and HTTP/2 clients share it (both come through
// Serve).

var (
	hXCache         = []byte("X-Cache")
	hIfNoneMatch    = []byte("If-None-Match")
	hIfModifiedSnc  = []byte("If-Modified-Since")
	hRange          = []byte("Range")
	hIfRange        = []byte("If-Range")
	hContentRange   = []byte("Content-Range")
	xCacheValues    [5][]byte
	cacheKeyBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}
)

func init() {
	for r := cache.Hit; r <= cache.Bypass; r++ {
		xCacheValues[r] = []byte(r.String())
	}
}

// cached answers a request through the pool's cache: a fresh entry is
// served as it is; a stale one is revalidated with the backend (or served
// while it is, within stale-while-revalidate; or instead of an error,
// within stale-if-error); a miss is fetched once for all the requests that
// want it at the same moment, and stored when the rules allow.
func (h *Handler) cached(ctx *fasthttp.RequestCtx, up *upstream.Group, c *cache.Cache, tls bool) (b *balancer.Backend, attempts int, stream *upstream.Body, err error) {
	req := &ctx.Request.Header
	o := c.Options()
	rc := cache.ParseRequest(req, o.IgnoreClientNoCache)
	kp := cacheKeyBufPool.Get().(*[]byte)
	key := cache.Key((*kp)[:0], ctx.Host(), req.RequestURI(), tls)
	defer func() {
		*kp = key[:0]
		cacheKeyBufPool.Put(kp)
	}()
	if !rc.Lookup {
		b, attempts, stream, err = h.forward(ctx, up)
		if !req.IsGet() && !req.IsHead() && err == nil && ctx.Response.StatusCode() < 400 {
			// A successful unsafe request invalidates what is stored
			// for its URL (RFC 9111 section 4.4).
			c.Purge(key)
		}
		result(ctx, c, cache.Bypass)
		return b, attempts, stream, err
	}
	now := time.Now()
	e := c.Get(key, req)
	if e == nil {
		if rc.OnlyIfCached {
			errorResponse(ctx, fasthttp.StatusGatewayTimeout)
			result(ctx, c, cache.Miss)
			return nil, 0, nil, nil
		}
		if rc.Range {
			// Forwarded as it is, not collapsed with whole requests: a
			// partial answer is not stored (a whole one is).
			return h.fetch(ctx, up, c, key, rc, nil)
		}
		return h.miss(ctx, up, c, key, rc)
	}
	stale := e.Staleness(now)
	usable := !e.Fresh.NoCache && !rc.Revalidate
	switch {
	case usable && stale <= 0 && (rc.MaxAge < 0 || e.CurrentAge(now) <= seconds(rc.MaxAge)) && (rc.MinFresh < 0 || -stale >= seconds(rc.MinFresh)):
		serveEntry(ctx, c, e, now, cache.Hit)
		return nil, 0, nil, nil
	case usable && stale > 0 && !e.Fresh.MustRevalidate && rc.MaxStale >= 0 && stale <= seconds(rc.MaxStale):
		// The client accepts this much staleness.
		serveEntry(ctx, c, e, now, cache.Stale)
		return nil, 0, nil, nil
	case usable && stale > 0 && stale <= e.Fresh.StaleWhileRevalidate:
		serveEntry(ctx, c, e, now, cache.Stale)
		h.revalidateLater(ctx, up, c, key, e, rc)
		return nil, 0, nil, nil
	}
	return h.revalidate(ctx, up, c, key, e, rc)
}

func seconds(n int64) time.Duration { return time.Duration(n) * time.Second }

// miss fetches a response no entry has. The first request for a key
// fetches it; the others wait for that one (at most the pool's response
// timeout) and share what it stored, or fetch for themselves when it
// stored nothing they can use.
func (h *Handler) miss(ctx *fasthttp.RequestCtx, up *upstream.Group, c *cache.Cache, key []byte, rc cache.RequestControl) (b *balancer.Backend, attempts int, stream *upstream.Body, err error) {
	f, leader := c.StartFill(key)
	if !leader {
		if e := f.Wait(up.ResponseTimeout); e != nil && e.Matches(&ctx.Request.Header) {
			serveEntry(ctx, c, e, time.Now(), cache.Hit)
			return nil, 0, nil, nil
		}
		f = nil
	}
	return h.fetch(ctx, up, c, key, rc, f)
}

// fetch forwards the request and keeps the response when it may; fill,
// if not nil, is ended with what was kept.
func (h *Handler) fetch(ctx *fasthttp.RequestCtx, up *upstream.Group, c *cache.Cache, key []byte, rc cache.RequestControl, fill *cache.Fill) (b *balancer.Backend, attempts int, stream *upstream.Body, err error) {
	sent := time.Now()
	b, attempts, stream, err = h.forward(ctx, up)
	if err == nil {
		_, stream = keep(ctx, c, key, rc, sent, fill, stream)
	} else if fill != nil {
		c.EndFill(key, fill, nil)
	}
	result(ctx, c, cache.Miss)
	return b, attempts, stream, err
}

// keep stores the response in ctx when the rules allow. A streamed body
// no longer than max_object is read whole first (from the backend, at its
// speed, not the client's), stored, and served from memory: stream is
// then nil. A longer one streams through, not stored. fill, if not nil,
// is ended with what was stored. storable reports whether the rules
// allowed storing the response.
func keep(ctx *fasthttp.RequestCtx, c *cache.Cache, key []byte, rc cache.RequestControl, sent time.Time, fill *cache.Fill, stream *upstream.Body) (storable bool, _ *upstream.Body) {
	now := time.Now()
	resp := &ctx.Response
	f := cache.Evaluate(rc, &resp.Header, now, c.Options())
	var stored *cache.Entry
	switch {
	case !f.Storable:
	case stream == nil:
		e := cache.NewEntry(&ctx.Request.Header, &resp.Header, resp.Body(), f, sent, now)
		if c.Put(key, e) {
			stored = e
		}
	case int64(resp.Header.ContentLength()) <= c.MaxObject():
		body, whole := stream.ReadAhead(c.MaxObject())
		if !whole {
			break
		}
		resp.SetBodyRaw(body) // closes the stream: the backend is free
		resp.Header.SetContentLength(len(body))
		stream = nil
		e := cache.NewEntry(&ctx.Request.Header, &resp.Header, nil, f, sent, now)
		e.SetBody(body)
		if c.Put(key, e) {
			stored = e
		}
	}
	if fill != nil {
		c.EndFill(key, fill, stored)
	}
	return f.Storable, stream
}

// revalidate asks the backend whether a stale entry still holds, with
// the entry's validators if it has any: a 304 refreshes and serves it, a
// new response replaces it, and a failure is answered with the entry
// within its stale-if-error window.
func (h *Handler) revalidate(ctx *fasthttp.RequestCtx, up *upstream.Group, c *cache.Cache, key []byte, e *cache.Entry, rc cache.RequestControl) (b *balancer.Backend, attempts int, stream *upstream.Body, err error) {
	etag, lastMod := e.Validators()
	conditional := etag != nil || lastMod != nil
	req := &ctx.Request.Header
	// The client's own conditions are judged by lb against the entry
	// once it is fresh again; the backend gets the entry's. A range is
	// cut from the entry too: the backend is asked for the whole.
	clientINM := append([]byte(nil), req.PeekBytes(hIfNoneMatch)...)
	clientIMS := append([]byte(nil), req.PeekBytes(hIfModifiedSnc)...)
	var clientRange, clientIfRange []byte
	if rc.Range {
		clientRange = append(clientRange, req.PeekBytes(hRange)...)
		clientIfRange = append(clientIfRange, req.PeekBytes(hIfRange)...)
		req.DelBytes(hRange)
		req.DelBytes(hIfRange)
	}
	restore := func() {
		setConditions(req, clientINM, clientIMS)
		if rc.Range {
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
	b, attempts, stream, err = h.forward(ctx, up)
	now := time.Now()
	code := ctx.Response.StatusCode()
	switch {
	case err == nil && code == fasthttp.StatusNotModified && conditional:
		n, _ := refresh(c, key, e, &ctx.Response.Header, rc, sent, now)
		restore()
		serveEntry(ctx, c, n, now, cache.Revalidated)
		return b, attempts, nil, nil
	case (err != nil || code >= 500) && e.Staleness(now) <= e.Fresh.StaleIfError:
		// serveEntry resets the response, which closes a streamed body
		// and frees its backend. The answer is the cache's, not the
		// backend's (see answeredByCache): the backend and its error
		// stay for the access log.
		restore()
		serveEntry(ctx, c, e, now, cache.Stale)
		return b, attempts, nil, err
	}
	if err == nil {
		var storable bool
		if storable, stream = keep(ctx, c, key, rc, sent, nil, stream); !storable {
			c.Purge(key) // replaced by an answer that may not be stored
		}
	}
	result(ctx, c, cache.Miss)
	return b, attempts, stream, err
}

// refresh updates e by the 304 answer with head h and stores it, or
// drops the URL if the update may not be stored; it returns the updated
// entry and whether it was stored.
func refresh(c *cache.Cache, key []byte, e *cache.Entry, h *fasthttp.ResponseHeader, rc cache.RequestControl, sent, now time.Time) (*cache.Entry, bool) {
	n := e.Refreshed(h, rc, c.Options(), sent, now)
	if n.Fresh.Storable && c.Put(key, n) {
		return n, true
	}
	c.Purge(key)
	return n, false
}

// setConditions replaces a request's If-None-Match and If-Modified-Since
// with inm and ims (none when empty).
func setConditions(req *fasthttp.RequestHeader, inm, ims []byte) {
	req.DelBytes(hIfNoneMatch)
	req.DelBytes(hIfModifiedSnc)
	if len(inm) > 0 {
		req.SetCanonical(hIfNoneMatch, inm)
	}
	if len(ims) > 0 {
		req.SetCanonical(hIfModifiedSnc, ims)
	}
}

// revalidateLater revalidates e in the background (stale-while-
// revalidate), once per key at a time.
func (h *Handler) revalidateLater(ctx *fasthttp.RequestCtx, up *upstream.Group, c *cache.Cache, key []byte, e *cache.Entry, rc cache.RequestControl) {
	f, leader := c.StartFill(key)
	if !leader {
		return // already under way
	}
	bg := new(fasthttp.RequestCtx)
	bg.Init(&ctx.Request, ctx.RemoteAddr(), nil)
	k := append([]byte(nil), key...)
	go func() {
		req := &bg.Request.Header
		etag, lastMod := e.Validators()
		setConditions(req, etag, lastMod)
		req.DelBytes(hRange) // the whole is revalidated
		req.DelBytes(hIfRange)
		sent := time.Now()
		_, _, stream, err := h.forward(bg, up)
		now := time.Now()
		switch {
		case err != nil:
			c.EndFill(k, f, nil)
		case bg.Response.StatusCode() == fasthttp.StatusNotModified:
			var stored *cache.Entry
			if n, ok := refresh(c, k, e, &bg.Response.Header, rc, sent, now); ok {
				stored = n
			}
			c.EndFill(k, f, stored)
		case bg.Response.StatusCode() < 500:
			keep(bg, c, k, rc, sent, f, stream)
		default:
			c.EndFill(k, f, nil)
		}
		bg.Response.Reset() // closes a stream: frees the backend
	}()
}

// serveEntry answers with e, or with 304 when the client's conditions
// (If-None-Match, If-Modified-Since) hold for it.
func serveEntry(ctx *fasthttp.RequestCtx, c *cache.Cache, e *cache.Entry, now time.Time, r cache.Result) {
	e.WriteTo(&ctx.Response, now)
	if notModified(&ctx.Request.Header, e) {
		ctx.Response.SetStatusCode(fasthttp.StatusNotModified)
		ctx.Response.SkipBody = true
	} else if ctx.IsGet() {
		serveRange(ctx, e)
	}
	result(ctx, c, r)
}

// serveRange answers a Range request from a stored 200 (RFC 9110 section
// 14): one satisfiable byte range gets 206 with that slice of the stored
// body (shared, not copied), a range that starts past the end 416.
// Several ranges, an If-Range the entry does not match, and anything but
// "bytes=" get the whole 200, as a server may answer any Range.
func serveRange(ctx *fasthttp.RequestCtx, e *cache.Entry) {
	req, resp := &ctx.Request.Header, &ctx.Response
	spec := req.PeekBytes(hRange)
	if len(spec) == 0 || resp.StatusCode() != fasthttp.StatusOK {
		return
	}
	if ir := req.PeekBytes(hIfRange); len(ir) > 0 && !ifRangeMatches(ir, e) {
		return
	}
	size := int64(len(e.Body))
	first, last, ok := byteRange(spec, size)
	if !ok {
		return
	}
	var buf [64]byte
	cr := append(buf[:0], "bytes "...)
	if first < 0 {
		resp.SetStatusCode(fasthttp.StatusRequestedRangeNotSatisfiable)
		resp.ResetBody()
		cr = append(cr, '*')
	} else {
		resp.SetStatusCode(fasthttp.StatusPartialContent)
		resp.SetBodyRaw(e.Body[first : last+1])
		cr = strconv.AppendInt(append(strconv.AppendInt(cr, first, 10), '-'), last, 10)
	}
	cr = strconv.AppendInt(append(cr, '/'), size, 10)
	resp.Header.SetCanonical(hContentRange, cr)
}

// byteRange reads a single "bytes=" range of a size-byte body: its first
// and last byte, or first < 0 when it cannot be satisfied. ok is false for
// what is answered with the whole body: several ranges, another unit, or
// a malformed range.
func byteRange(spec []byte, size int64) (first, last int64, ok bool) {
	unit, set, found := bytes.Cut(spec, []byte("="))
	if !found || !bytes.EqualFold(bytes.TrimSpace(unit), []byte("bytes")) {
		return 0, 0, false
	}
	set = bytes.TrimSpace(set)
	a, b, found := bytes.Cut(set, []byte("-"))
	if !found || bytes.IndexByte(set, ',') >= 0 {
		return 0, 0, false
	}
	num := func(s []byte) (int64, bool) {
		if len(s) == 0 || len(s) > 18 {
			return 0, false
		}
		var n int64
		for _, c := range s {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int64(c-'0')
		}
		return n, true
	}
	if len(a) == 0 { // the last n bytes
		n, ok := num(b)
		if !ok {
			return 0, 0, false
		}
		if n == 0 || size == 0 {
			return -1, 0, true
		}
		return max(0, size-n), size - 1, true
	}
	first, ok = num(a)
	if !ok {
		return 0, 0, false
	}
	last = size - 1
	if len(b) > 0 {
		if last, ok = num(b); !ok || last < first {
			return 0, 0, false
		}
		last = min(last, size-1)
	}
	if first >= size {
		return -1, 0, true
	}
	return first, last, true
}

// ifRangeMatches: an If-Range entity tag is the entry's strong ETag, or
// its date the entry's Last-Modified (RFC 9110 section 13.1.5).
func ifRangeMatches(v []byte, e *cache.Entry) bool {
	etag, lastMod := e.Validators()
	v = bytes.TrimSpace(v)
	if len(v) > 0 && (v[0] == '"' || bytes.HasPrefix(v, []byte("W/"))) {
		return len(etag) > 0 && etag[0] == '"' && bytes.Equal(v, etag)
	}
	if len(lastMod) == 0 {
		return false
	}
	t1, err1 := fasthttp.ParseHTTPDate(v)
	t2, err2 := fasthttp.ParseHTTPDate(lastMod)
	return err1 == nil && err2 == nil && t1.Equal(t2)
}

// notModified evaluates a client's conditional GET against an entry
// (RFC 9110 section 13.1): If-None-Match first, then If-Modified-Since.
func notModified(req *fasthttp.RequestHeader, e *cache.Entry) bool {
	etag, _ := e.Validators()
	if inm := req.PeekBytes(hIfNoneMatch); len(inm) > 0 {
		if len(etag) == 0 {
			return false
		}
		for _, t := range bytes.Split(inm, []byte(",")) {
			t = bytes.TrimSpace(t)
			if string(t) == "*" || bytes.Equal(bytes.TrimPrefix(t, []byte("W/")), bytes.TrimPrefix(etag, []byte("W/"))) {
				return true
			}
		}
		return false
	}
	if ims := req.PeekBytes(hIfModifiedSnc); len(ims) > 0 {
		since, err := fasthttp.ParseHTTPDate(ims)
		mod := e.ModTime()
		return err == nil && !mod.IsZero() && !mod.After(since)
	}
	return false
}

// result counts how the request was answered and says so in X-Cache.
func result(ctx *fasthttp.RequestCtx, c *cache.Cache, r cache.Result) {
	c.Count(r)
	ctx.SetUserValue(cacheResultKey{}, r)
	if c.Options().XCache {
		ctx.Response.Header.SetCanonical(hXCache, xCacheValues[r])
	}
}

type cacheResultKey struct{}

// answeredByCache reports whether the cache, not a backend, gave the
// answer in ctx: a hit, or a stale entry served instead of a backend's
// failure (stale-if-error), which must not count as that backend's
// answer or latency.
func answeredByCache(ctx *fasthttp.RequestCtx) bool {
	r, ok := ctx.UserValue(cacheResultKey{}).(cache.Result)
	return ok && (r == cache.Hit || r == cache.Stale)
}

// cacheResult is how the cache answered the request in ctx, for the
// access log.
func cacheResult(ctx *fasthttp.RequestCtx) string {
	if r, ok := ctx.UserValue(cacheResultKey{}).(cache.Result); ok {
		return r.String()
	}
	return ""
}
