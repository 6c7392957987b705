package httpcache

import (
	"bytes"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/cache"
)

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
	if ims := req.PeekBytes(hIfModifiedSince); len(ims) > 0 {
		since, err := fasthttp.ParseHTTPDate(ims)
		mod := e.ModTime()
		return err == nil && !mod.IsZero() && !mod.After(since)
	}
	return false
}
