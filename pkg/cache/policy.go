package cache

import (
	"bytes"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

// The rules of RFC 9111 for a shared cache: what a request asks of the
// cache, whether a response may be stored, and for how long it is fresh.

// RequestControl is what a request's method and Cache-Control ask, a
// plain value. Its zero value allows nothing (no lookup, no store); use
// ParseRequest.
type RequestControl struct {
	// Lookup: the request may be answered from the cache (GET or HEAD,
	// no no-store).
	Lookup bool
	// Range: a GET for part of the resource. A stored whole response
	// answers it (206); on a miss it goes to the origin as it is.
	Range bool
	// Store: its response may be stored (GET, no no-store).
	Store bool
	// Revalidate: the client asked for a validated answer (no-cache,
	// max-age=0, Pragma: no-cache) and the cache honours it.
	Revalidate bool
	// OnlyIfCached: answer 504 rather than go to the origin.
	OnlyIfCached bool
	// MaxAge, MaxStale and MinFresh are the client's limits; -1 for
	// none. MaxStale is 1<<62 for "max-stale" without a value.
	MaxAge, MaxStale, MinFresh int64
	// Authorization: the response may be stored only if it says so.
	Authorization bool
}

// ParseRequest reads what h asks of the cache. ignoreNoCache makes
// no-cache and max-age=0 from clients count for nothing, as operators
// often want in front of their own sites.
func ParseRequest(h *fasthttp.RequestHeader, ignoreNoCache bool) RequestControl {
	rc := RequestControl{MaxAge: -1, MaxStale: -1, MinFresh: -1}
	get, head := h.IsGet(), h.IsHead()
	if !get && !head {
		return rc
	}
	rc.Lookup, rc.Store = true, get
	rc.Range = get && len(h.Peek("Range")) > 0
	rc.Authorization = len(h.Peek("Authorization")) > 0
	noCache := false
	cc := h.PeekAll("Cache-Control")
	directives(cc, func(dir int, value []byte) {
		switch dir {
		case dirNoStore:
			rc.Lookup, rc.Store = false, false
		case dirNoCache:
			noCache = true
		case dirOnlyIfCached:
			rc.OnlyIfCached = true
		case dirMaxAge:
			rc.MaxAge = seconds(value)
			if rc.MaxAge == 0 {
				noCache = true
			}
		case dirMaxStale:
			if len(value) == 0 {
				rc.MaxStale = 1 << 62
			} else {
				rc.MaxStale = seconds(value)
			}
		case dirMinFresh:
			rc.MinFresh = seconds(value)
		}
	})
	if len(cc) == 0 && listHas(h.PeekAll("Pragma"), "no-cache") {
		noCache = true // RFC 9111 5.4, for HTTP/1.0 clients
	}
	if noCache && !ignoreNoCache {
		rc.Revalidate = true
	}
	if ignoreNoCache {
		rc.MaxAge = -1
	}
	return rc
}

// Freshness is what a response allows a shared cache, a plain value.
// The zero value is not storable.
type Freshness struct {
	// Storable, or Why not.
	Storable bool
	Why      string
	// Lifetime is the freshness lifetime (RFC 9111 4.2.1).
	Lifetime time.Duration
	// NoCache: stored, but revalidated before every use.
	NoCache bool
	// MustRevalidate: never served stale (must-revalidate,
	// proxy-revalidate, s-maxage).
	MustRevalidate bool
	// StaleWhileRevalidate and StaleIfError are the RFC 5861 windows.
	StaleWhileRevalidate, StaleIfError time.Duration
}

// Options are the operator's choices that the rules leave open. The zero
// value gives no heuristic freshness, stores no response that sets a
// cookie, honours clients' no-cache and adds no X-Cache.
type Options struct {
	// Heuristic allows a lifetime of a tenth of the time since
	// Last-Modified (at most a day) for responses without one.
	Heuristic bool
	// StoreSetCookie allows storing responses that set cookies: every
	// client then gets the same cookie.
	StoreSetCookie bool
	// IgnoreClientNoCache: see ParseRequest.
	IgnoreClientNoCache bool
	// XCache: responses say how the cache answered them.
	XCache bool
}

// heuristicMax caps a heuristic lifetime.
const heuristicMax = 24 * time.Hour

// Evaluate decides whether resp, the answer to a request rc describes,
// may be stored, and for how long it is fresh. now is when it arrived.
func Evaluate(rc RequestControl, resp *fasthttp.ResponseHeader, now time.Time, o Options) Freshness {
	var f Freshness
	if !rc.Store {
		f.Why = "request"
		return f
	}
	code := resp.StatusCode()
	var (
		maxAge, sMaxAge               int64 = -1, -1
		private                       bool
		noStore, mustReval            bool
		staleWhileReval, staleIfError int64 = -1, -1
		explicit, heuristicOK         bool
		public                        bool
		mustUnderstand                bool
	)
	directives(resp.PeekAll("Cache-Control"), func(dir int, value []byte) {
		switch dir {
		case dirMaxAge:
			maxAge = seconds(value)
		case dirSMaxAge:
			sMaxAge = seconds(value)
		case dirPublic:
			public = true // allows storing what Authorization would forbid
		case dirPrivate:
			private = true
		case dirNoStore:
			noStore = true
		case dirNoCache:
			f.NoCache = true
		case dirMustRevalidate, dirProxyRevalidate:
			mustReval = true
		case dirStaleWhileRevalidate:
			staleWhileReval = seconds(value)
		case dirStaleIfError:
			staleIfError = seconds(value)
		case dirMustUnderstand:
			mustUnderstand = true
		}
	})
	understood := false
	switch code {
	case 200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501:
		understood = true // the statuses whose caching lb implements
	}
	if mustUnderstand {
		// RFC 9111 section 5.2.2.3: store only a status the cache
		// understands, and then ignore the no-store sent for caches
		// that do not know must-understand.
		if !understood {
			f.Why = "must-understand"
			return f
		}
		noStore = false
	}
	switch {
	case noStore:
		f.Why = "no-store"
		return f
	case private:
		f.Why = "private"
		return f
	case rc.Authorization && !public && !mustReval && sMaxAge < 0:
		// RFC 9111 3.5.
		f.Why = "authorization"
		return f
	case len(resp.Peek("Set-Cookie")) > 0 && !o.StoreSetCookie:
		f.Why = "set-cookie"
		return f
	case listHas(resp.PeekAll("Vary"), "*"):
		f.Why = "vary *"
		return f
	case code == fasthttp.StatusPartialContent:
		// Only a 206 is partial: a Content-Range on another status
		// says nothing of the content (RFC 9110 section 14.4).
		f.Why = "partial"
		return f
	case rc.Range && code != fasthttp.StatusOK:
		// An answer to the range, not to the URL (a 416 without
		// Content-Range): stored, it would answer every request.
		f.Why = "range"
		return f
	case code == fasthttp.StatusNotModified:
		// The answer to a client's own condition: no body to keep.
		f.Why = "not modified"
		return f
	}
	switch code {
	case 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501:
		heuristicOK = true // RFC 9110 15.1
	}
	date := httpDate(resp.Peek("Date"))
	if date.IsZero() {
		date = now
	}
	switch {
	case sMaxAge >= 0:
		f.Lifetime, explicit, mustReval = time.Duration(sMaxAge)*time.Second, true, true
	case maxAge >= 0:
		f.Lifetime, explicit = time.Duration(maxAge)*time.Second, true
	case len(resp.PeekAll("Expires")) > 0:
		explicit = true
		// An invalid or past Expires means already stale (RFC 9111
		// section 5.3), and so do several: Expires is one date.
		if exp := httpDate(resp.Peek("Expires")); exp.After(date) && len(resp.PeekAll("Expires")) == 1 {
			f.Lifetime = exp.Sub(date)
		}
	case heuristicOK && o.Heuristic:
		if lm := httpDate(resp.Peek("Last-Modified")); !lm.IsZero() && lm.Before(date) {
			f.Lifetime, explicit = min(date.Sub(lm)/10, heuristicMax), true
		}
	}
	if !explicit && !f.NoCache {
		f.Why = "no freshness"
		return f
	}
	if code >= 500 && code != fasthttp.StatusNotImplemented {
		// Storable with explicit freshness by the rules, but a cache
		// that keeps an outage's answers keeps the outage.
		f.Why = "status"
		return f
	}
	f.Storable = true
	f.MustRevalidate = mustReval
	if !mustReval {
		if staleWhileReval > 0 {
			f.StaleWhileRevalidate = time.Duration(staleWhileReval) * time.Second
		}
		if staleIfError > 0 {
			f.StaleIfError = time.Duration(staleIfError) * time.Second
		}
	}
	return f
}

// Age computes a stored response's current age (RFC 9111 4.2.3).
func Age(dateValue time.Time, ageValue time.Duration, requestTime, responseTime, now time.Time) time.Duration {
	apparent := max(0, responseTime.Sub(dateValue))
	if dateValue.IsZero() {
		apparent = 0
	}
	corrected := ageValue + responseTime.Sub(requestTime)
	return max(apparent, corrected) + now.Sub(responseTime)
}

// The Cache-Control directives lb acts on.
const (
	dirOther = iota
	dirNoStore
	dirNoCache
	dirOnlyIfCached
	dirMaxAge
	dirMaxStale
	dirMinFresh
	dirSMaxAge
	dirPublic
	dirPrivate
	dirMustRevalidate
	dirProxyRevalidate
	dirStaleWhileRevalidate
	dirStaleIfError
	dirMustUnderstand
)

var directiveNames = []string{
	dirNoStore: "no-store", dirNoCache: "no-cache", dirOnlyIfCached: "only-if-cached",
	dirMaxAge: "max-age", dirMaxStale: "max-stale", dirMinFresh: "min-fresh", dirSMaxAge: "s-maxage",
	dirPublic: "public", dirPrivate: "private", dirMustRevalidate: "must-revalidate",
	dirProxyRevalidate: "proxy-revalidate", dirStaleWhileRevalidate: "stale-while-revalidate",
	dirStaleIfError: "stale-if-error", dirMustUnderstand: "must-understand",
}

// directives calls f with each directive of a Cache-Control field, given
// as all its lines (RFC 9110 section 5.3: repeated lines are one list, so
// a "private" on a second line counts as much as on the first): which
// one (dirOther for those lb does not act on; names are matched without
// regard to case) and its value unquoted ("" when none).
func directives(lines [][]byte, f func(dir int, value []byte)) {
	for _, v := range lines {
		directivesOf(v, f)
	}
}

// directivesOf is directives for one field line.
func directivesOf(v []byte, f func(dir int, value []byte)) {
	for len(v) > 0 {
		var d []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			d, v = v[:i], v[i+1:]
		} else {
			d, v = v, nil
		}
		d = bytes.TrimSpace(d)
		if len(d) == 0 {
			continue
		}
		name, value := d, []byte(nil)
		if i := bytes.IndexByte(d, '='); i >= 0 {
			name, value = bytes.TrimSpace(d[:i]), bytes.Trim(bytes.TrimSpace(d[i+1:]), `"`)
		}
		dir := dirOther
		for id, n := range directiveNames {
			if n != "" && len(n) == len(name) && bytes.EqualFold(name, []byte(n)) {
				dir = id
				break
			}
		}
		f(dir, value)
	}
}

// listHas reports whether the list made of a field's lines has member
// (compared without regard to case).
func listHas(lines [][]byte, member string) bool {
	for _, v := range lines {
		for len(v) > 0 {
			var m []byte
			m, v, _ = bytes.Cut(v, []byte{','})
			if m = bytes.TrimSpace(m); len(m) == len(member) && bytes.EqualFold(m, []byte(member)) {
				return true
			}
		}
	}
	return false
}

// seconds parses a delta-seconds value; a bad one counts as 0 (RFC 9111
// 1.2.2: treat an invalid max-age as stale), a huge one is capped.
func seconds(v []byte) int64 {
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange && len(v) > 0 && v[0] != '-' {
			return 1<<31 - 1
		}
		return 0
	}
	return min(max(n, 0), 1<<31-1)
}

// httpDate parses an HTTP date; the zero time when v is not one.
func httpDate(v []byte) time.Time {
	if len(v) == 0 {
		return time.Time{}
	}
	t, ok := parseHTTPDate(v)
	if !ok {
		return time.Time{}
	}
	return t
}
