package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/offloadlb/lb/pkg/cache"
)

// origin is a backend whose answer a test case writes; it counts hits and
// keeps the last request's conditional headers.
type origin struct {
	addr string
	hits atomic.Int64
	mu   sync.Mutex
	inm  string // If-None-Match of the last request
	rng  string // Range of the last request
}

func startOrigin(t *testing.T, answer func(n int64, w http.ResponseWriter, r *http.Request)) *origin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &origin{addr: ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := o.hits.Add(1)
		o.mu.Lock()
		o.inm = r.Header.Get("If-None-Match")
		o.rng = r.Header.Get("Range")
		o.mu.Unlock()
		answer(n, w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return o
}

// fixed answers every request with a 200, these header pairs and body
// "v<hit number>", and 304 to a request whose If-None-Match is the ETag.
func fixed(hdr ...string) func(n int64, w http.ResponseWriter, r *http.Request) {
	return func(n int64, w http.ResponseWriter, r *http.Request) {
		etag := ""
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
			if hdr[i] == "ETag" {
				etag = hdr[i+1]
			}
		}
		if etag != "" && r.Header.Get("If-None-Match") == etag {
			w.Header().Del("Age") // the origin's copy is new
			w.WriteHeader(http.StatusNotModified)
			return
		}
		fmt.Fprintf(w, "v%d", n)
	}
}

// lines answers every request with a 200, these header lines (a name
// may come twice: each pair is a line of its own) and body "v<hit
// number>".
func lines(hdr ...string) func(n int64, w http.ResponseWriter, r *http.Request) {
	return func(n int64, w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Add(hdr[i], hdr[i+1])
		}
		fmt.Fprintf(w, "v%d", n)
	}
}

// cacheStep is one request of a case and what must come of it.
type cacheStep struct {
	method string
	hdr    []string
	status int
	xcache string
	hits   int64  // origin hits after the step
	body   string // "" for any
}

func get(x string, hits int64, hdr ...string) cacheStep {
	return cacheStep{method: "GET", hdr: hdr, status: 200, xcache: x, hits: hits}
}

// TestCacheRules is the table of RFC 9111 cases: what is stored, what is
// served from the cache, what is revalidated, and what the origin sees.
func TestCacheRules(t *testing.T) {
	old := time.Now().Add(-240 * time.Hour).UTC().Format(http.TimeFormat)
	soon := func() string { return time.Now().Add(time.Minute).UTC().Format(http.TimeFormat) }
	past := time.Now().Add(-time.Minute).UTC().Format(http.TimeFormat)
	cases := []struct {
		name   string
		opts   cache.Options
		answer func(n int64, w http.ResponseWriter, r *http.Request)
		steps  []cacheStep
	}{
		{"max-age is served from the cache", cache.Options{}, fixed("Cache-Control", "max-age=60"),
			[]cacheStep{get("MISS", 1), get("HIT", 1), get("HIT", 1)}},
		{"no-store is never stored", cache.Options{}, fixed("Cache-Control", "no-store, max-age=60"),
			[]cacheStep{get("MISS", 1), get("MISS", 2)}},
		{"private is not for a shared cache", cache.Options{}, fixed("Cache-Control", "private, max-age=60"),
			[]cacheStep{get("MISS", 1), get("MISS", 2)}},
		{"no freshness and no heuristics: not stored", cache.Options{}, fixed("Last-Modified", old),
			[]cacheStep{get("MISS", 1), get("MISS", 2)}},
		{"heuristic freshness when enabled", cache.Options{Heuristic: true}, fixed("Last-Modified", old),
			[]cacheStep{get("MISS", 1), get("HIT", 1)}},
		{"s-maxage overrides max-age", cache.Options{}, fixed("Cache-Control", "max-age=0, s-maxage=60"),
			[]cacheStep{get("MISS", 1), get("HIT", 1)}},
		{"Expires in the future", cache.Options{}, func(n int64, w http.ResponseWriter, r *http.Request) {
			fixed("Expires", soon())(n, w, r)
		}, []cacheStep{get("MISS", 1), get("HIT", 1)}},
		{"Expires in the past, no validator: fetched again", cache.Options{}, fixed("Expires", past),
			[]cacheStep{get("MISS", 1), get("MISS", 2)}},
		{"no-cache is revalidated each time", cache.Options{}, fixed("Cache-Control", "no-cache", "ETag", `"a"`),
			[]cacheStep{get("MISS", 1), get("REVALIDATED", 2), get("REVALIDATED", 3)}},
		{"Set-Cookie is not stored", cache.Options{}, fixed("Cache-Control", "max-age=60", "Set-Cookie", "s=1"),
			[]cacheStep{get("MISS", 1), get("MISS", 2)}},
		{"Set-Cookie stored when configured", cache.Options{StoreSetCookie: true}, fixed("Cache-Control", "max-age=60", "Set-Cookie", "s=1"),
			[]cacheStep{get("MISS", 1), get("HIT", 1)}},
		{"Authorization: not stored", cache.Options{}, fixed("Cache-Control", "max-age=60"),
			[]cacheStep{get("MISS", 1, "Authorization", "Basic eDp5"), get("MISS", 2)}},
		{"Authorization with public: stored", cache.Options{}, fixed("Cache-Control", "public, max-age=60"),
			[]cacheStep{get("MISS", 1, "Authorization", "Basic eDp5"), get("HIT", 1)}},
		{"Vary keeps a variant per header value", cache.Options{}, fixed("Cache-Control", "max-age=60", "Vary", "Accept-Encoding"),
			[]cacheStep{get("MISS", 1, "Accept-Encoding", "gzip"), get("HIT", 1, "Accept-Encoding", "gzip"),
				get("MISS", 2, "Accept-Encoding", "br"), get("HIT", 2, "Accept-Encoding", "br"), get("HIT", 2, "Accept-Encoding", "gzip")}},
		{"Vary: * is not stored", cache.Options{}, fixed("Cache-Control", "max-age=60", "Vary", "*"),
			[]cacheStep{get("MISS", 1), get("MISS", 2)}},
		{"stale with a validator: revalidated, 304 refreshes", cache.Options{}, fixed("Cache-Control", "max-age=60", "Age", "120", "ETag", `"e1"`),
			[]cacheStep{get("MISS", 1), {method: "GET", status: 200, xcache: "REVALIDATED", hits: 2, body: "v1"}, get("HIT", 2)}},
		{"stale, origin sends a new version", cache.Options{}, fixed("Cache-Control", "max-age=60", "Age", "120"),
			[]cacheStep{get("MISS", 1), {method: "GET", status: 200, xcache: "MISS", hits: 2, body: "v2"}}},
		{"client no-cache revalidates", cache.Options{}, fixed("Cache-Control", "max-age=60", "ETag", `"e"`),
			[]cacheStep{get("MISS", 1), get("REVALIDATED", 2, "Cache-Control", "no-cache"), get("HIT", 2)}},
		{"client max-age=0 revalidates", cache.Options{}, fixed("Cache-Control", "max-age=60", "ETag", `"e"`),
			[]cacheStep{get("MISS", 1), get("REVALIDATED", 2, "Cache-Control", "max-age=0")}},
		{"client no-cache ignored when configured", cache.Options{IgnoreClientNoCache: true}, fixed("Cache-Control", "max-age=60", "ETag", `"e"`),
			[]cacheStep{get("MISS", 1), get("HIT", 1, "Cache-Control", "no-cache"), get("HIT", 1, "Pragma", "no-cache")}},
		{"client max-stale accepts a stale entry", cache.Options{}, fixed("Cache-Control", "max-age=60", "Age", "90"),
			[]cacheStep{get("MISS", 1), get("STALE", 1, "Cache-Control", "max-stale=60"), get("MISS", 2, "Cache-Control", "max-stale=10")}},
		{"stale-if-error serves stale when the origin fails", cache.Options{}, func(n int64, w http.ResponseWriter, r *http.Request) {
			if n > 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			fixed("Cache-Control", "max-age=60, stale-if-error=600", "Age", "120", "ETag", `"e"`)(n, w, r)
		}, []cacheStep{get("MISS", 1), {method: "GET", status: 200, xcache: "STALE", hits: 2, body: "v1"}}},
		{"must-revalidate: no stale on error", cache.Options{}, func(n int64, w http.ResponseWriter, r *http.Request) {
			if n > 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			fixed("Cache-Control", "max-age=60, must-revalidate, stale-if-error=600", "Age", "120", "ETag", `"e"`)(n, w, r)
		}, []cacheStep{get("MISS", 1), {method: "GET", status: 503, xcache: "MISS", hits: 2}}},
		{"a POST invalidates the URL", cache.Options{}, fixed("Cache-Control", "max-age=60"),
			[]cacheStep{get("MISS", 1), get("HIT", 1), {method: "POST", status: 200, xcache: "BYPASS", hits: 2}, get("MISS", 3), get("HIT", 3)}},
		{"HEAD is answered from a stored GET", cache.Options{}, fixed("Cache-Control", "max-age=60"),
			[]cacheStep{get("MISS", 1), {method: "HEAD", status: 200, xcache: "HIT", hits: 1}}},
		{"a client's If-None-Match is answered 304 by lb", cache.Options{}, fixed("Cache-Control", "max-age=60", "ETag", `"t"`),
			[]cacheStep{get("MISS", 1), {method: "GET", hdr: []string{"If-None-Match", `"x", W/"t"`}, status: 304, xcache: "HIT", hits: 1}}},
		{"a client's condition on a miss goes to the origin; its 304 is not stored", cache.Options{}, fixed("Cache-Control", "max-age=60", "ETag", `"t"`),
			[]cacheStep{{method: "GET", hdr: []string{"If-None-Match", `"t"`}, status: 304, xcache: "MISS", hits: 1}, get("MISS", 2), get("HIT", 2)}},
		{"404 with max-age is stored", cache.Options{}, func(n int64, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "max-age=60")
			w.WriteHeader(http.StatusNotFound)
		}, []cacheStep{{method: "GET", status: 404, xcache: "MISS", hits: 1}, {method: "GET", status: 404, xcache: "HIT", hits: 1}}},
		{"500 is not stored", cache.Options{}, func(n int64, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "max-age=60")
			w.WriteHeader(http.StatusInternalServerError)
		}, []cacheStep{{method: "GET", status: 500, xcache: "MISS", hits: 1}, {method: "GET", status: 500, xcache: "MISS", hits: 2}}},
		{"a Range miss goes to the origin, its 206 unstored; a hit is cut from the entry", cache.Options{}, func(n int64, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "max-age=60")
			http.ServeContent(w, r, "", time.Time{}, strings.NewReader(fmt.Sprintf("v%d", n)))
		}, []cacheStep{{method: "GET", hdr: []string{"Range", "bytes=0-0"}, status: 206, xcache: "MISS", hits: 1, body: "v"},
			{method: "GET", status: 200, xcache: "MISS", hits: 2, body: "v2"},
			{method: "GET", hdr: []string{"Range", "bytes=1-1"}, status: 206, xcache: "HIT", hits: 2, body: "2"}}},
		{"a stale entry is revalidated whole for a Range, then cut", cache.Options{}, fixed("Cache-Control", "max-age=60", "Age", "120", "ETag", `"e1"`),
			[]cacheStep{get("MISS", 1), {method: "GET", hdr: []string{"Range", "bytes=1-1"}, status: 206, xcache: "REVALIDATED", hits: 2, body: "1"}}},
		{"a range's 416 is not stored for the URL", cache.Options{}, func(n int64, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "max-age=60")
			if r.Header.Get("Range") != "" {
				w.WriteHeader(http.StatusRequestedRangeNotSatisfiable) // no Content-Range
				return
			}
			fmt.Fprintf(w, "v%d", n)
		}, []cacheStep{{method: "GET", hdr: []string{"Range", "bytes=999-"}, status: 416, xcache: "MISS", hits: 1},
			{method: "GET", status: 200, xcache: "MISS", hits: 2, body: "v2"}, get("HIT", 2)}},
		{"a Range miss answered whole is stored", cache.Options{}, fixed("Cache-Control", "max-age=60"),
			[]cacheStep{{method: "GET", hdr: []string{"Range", "bytes=0-0"}, status: 200, xcache: "MISS", hits: 1, body: "v1"}, get("HIT", 1)}},
		{"private on a second Cache-Control line is not stored", cache.Options{}, lines("Cache-Control", "public, max-age=600", "Cache-Control", "private"),
			[]cacheStep{get("MISS", 1), get("MISS", 2)}},
		{"no-store on a second Cache-Control line is not stored", cache.Options{}, lines("Cache-Control", "max-age=600", "Cache-Control", "no-store"),
			[]cacheStep{get("MISS", 1), get("MISS", 2)}},
		{"s-maxage on a second Cache-Control line wins", cache.Options{}, lines("Cache-Control", "max-age=3600", "Cache-Control", "s-maxage=0"),
			[]cacheStep{get("MISS", 1), get("MISS", 2)}},
		{"Vary on a second line keeps a variant per cookie", cache.Options{}, lines("Cache-Control", "max-age=600", "Vary", "Accept-Encoding", "Vary", "Cookie"),
			[]cacheStep{get("MISS", 1, "Cookie", "user=alice"), get("HIT", 1, "Cookie", "user=alice"), get("MISS", 2, "Cookie", "user=bob")}},
		{"Vary: * on a second line is not stored", cache.Options{}, lines("Cache-Control", "max-age=600", "Vary", "", "Vary", "*"),
			[]cacheStep{get("MISS", 1), get("MISS", 2)}},
		{"a request header of several lines is matched whole", cache.Options{}, lines("Cache-Control", "max-age=600", "Vary", "Accept-Language"),
			[]cacheStep{get("MISS", 1, "Accept-Language", "en", "Accept-Language", "fr"), get("HIT", 1, "Accept-Language", "en, fr"), get("MISS", 2, "Accept-Language", "en")}},
		{"client no-cache on a second Cache-Control line revalidates", cache.Options{}, fixed("Cache-Control", "max-age=60", "ETag", `"e"`),
			[]cacheStep{get("MISS", 1), get("REVALIDATED", 2, "Cache-Control", "max-stale=10", "Cache-Control", "no-cache")}},
		{"client no-store on a second Cache-Control line bypasses", cache.Options{}, fixed("Cache-Control", "max-age=60"),
			[]cacheStep{get("MISS", 1), get("BYPASS", 2, "Cache-Control", "max-stale=10", "Cache-Control", "no-store")}},
		{"Pragma: no-cache on a second line revalidates", cache.Options{}, fixed("Cache-Control", "max-age=60", "ETag", `"e"`),
			[]cacheStep{get("MISS", 1), get("REVALIDATED", 2, "Pragma", "x-other", "Pragma", "no-cache")}},
		{"Vary ignores spacing and empty list members", cache.Options{}, fixed("Cache-Control", "max-age=60", "Vary", "Foo"),
			[]cacheStep{get("MISS", 1, "Foo", "1,2"), get("HIT", 1, "Foo", " 1, 2 "), get("HIT", 1, "Foo", "1", "Foo", "2"), get("MISS", 2, "Foo", "2, 1")}},
		{"Vary: Accept-Language is compared as a set without case", cache.Options{}, fixed("Cache-Control", "max-age=60", "Vary", "Accept-Language"),
			[]cacheStep{get("MISS", 1, "Accept-Language", "en, de"), get("HIT", 1, "Accept-Language", "De,EN"), get("HIT", 1, "Accept-Language", " en ,   de"), get("MISS", 2, "Accept-Language", "en"), get("MISS", 3, "Accept-Language", "en, fr")}},
		{"must-understand on a status lb knows overrides no-store", cache.Options{}, fixed("Cache-Control", "max-age=60, no-store, must-understand"),
			[]cacheStep{get("MISS", 1), get("HIT", 1)}},
		{"a client's If-Modified-Since is judged by Date without Last-Modified", cache.Options{}, fixed("Cache-Control", "max-age=60"),
			[]cacheStep{get("MISS", 1), {method: "GET", hdr: []string{"If-Modified-Since", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)}, status: 304, xcache: "HIT", hits: 1},
				{method: "GET", hdr: []string{"If-Modified-Since", old}, status: 200, xcache: "HIT", hits: 1}}},
		{"client no-store bypasses", cache.Options{}, fixed("Cache-Control", "max-age=60"),
			[]cacheStep{get("BYPASS", 1, "Cache-Control", "no-store"), get("MISS", 2)}},
		{"only-if-cached on a miss is 504", cache.Options{}, fixed("Cache-Control", "max-age=60"),
			[]cacheStep{{method: "GET", hdr: []string{"Cache-Control", "only-if-cached"}, status: 504, xcache: "MISS", hits: 0}, get("MISS", 1), get("HIT", 1, "Cache-Control", "only-if-cached")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := startOrigin(t, tc.answer)
			opts := tc.opts
			opts.XCache = true
			c := cache.New(1<<20, 64<<10, opts)
			hs := newHarness(t, harnessOpts{backends: []string{o.addr}, cache: c})
			for i, s := range tc.steps {
				resp, body := hs.do(s.method, "/page", nil, s.hdr...)
				if resp.StatusCode != s.status || resp.Header.Get("X-Cache") != s.xcache || o.hits.Load() != s.hits {
					t.Fatalf("step %d (%s %v): status %d, X-Cache %q, origin hits %d; want %d, %q, %d",
						i+1, s.method, s.hdr, resp.StatusCode, resp.Header.Get("X-Cache"), o.hits.Load(), s.status, s.xcache, s.hits)
				}
				if s.body != "" && body != s.body {
					t.Fatalf("step %d: body %q, want %q", i+1, body, s.body)
				}
				o.mu.Lock()
				rng := o.rng
				o.mu.Unlock()
				if s.xcache == "REVALIDATED" && rng != "" {
					t.Errorf("step %d: the origin was asked for a range (%q) to revalidate the whole", i+1, rng)
				}
				if s.xcache == "HIT" && resp.Header.Get("Age") == "" {
					t.Errorf("step %d: a hit without Age", i+1)
				}
				if s.method == "HEAD" && (body != "" || resp.ContentLength != 2) {
					t.Errorf("HEAD: body %q, Content-Length %d", body, resp.ContentLength)
				}
			}
		})
	}
}

// TestCacheRanges: Range requests answered from a stored whole response
// (RFC 9110 section 14).
func TestCacheRanges(t *testing.T) {
	const body = "abcdefghijklmnopqrstuvwxyz"
	lastMod := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	o := startOrigin(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("ETag", `"r1"`)
		w.Header().Set("Last-Modified", lastMod)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, body)
	})
	c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
	hs := newHarness(t, harnessOpts{backends: []string{o.addr}, cache: c})
	if resp, _ := hs.do("GET", "/r", nil); resp.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("fill: %s", resp.Header.Get("X-Cache"))
	}
	for _, tc := range []struct {
		hdr          []string
		status       int
		body, crange string
	}{
		{[]string{"Range", "bytes=0-4"}, 206, "abcde", "bytes 0-4/26"},
		{[]string{"Range", "bytes=20-"}, 206, "uvwxyz", "bytes 20-25/26"},
		{[]string{"Range", "bytes=20-100"}, 206, "uvwxyz", "bytes 20-25/26"},
		{[]string{"Range", "bytes=-3"}, 206, "xyz", "bytes 23-25/26"},
		{[]string{"Range", "bytes=-100"}, 206, body, "bytes 0-25/26"},
		{[]string{"Range", "Bytes = 25-25"}, 206, "z", "bytes 25-25/26"},
		{[]string{"Range", "bytes=26-"}, 416, "", "bytes */26"},
		{[]string{"Range", "bytes=-0"}, 416, "", "bytes */26"},
		{[]string{"Range", "bytes=0-1,5-6"}, 200, body, ""}, // several: the whole
		{[]string{"Range", "bytes=5-2"}, 200, body, ""},     // malformed
		{[]string{"Range", "items=0-1"}, 200, body, ""},     // another unit
		{[]string{"Range", "bytes=x-1"}, 200, body, ""},
		{[]string{"Range", "bytes=0-1", "If-Range", `"r1"`}, 206, "ab", "bytes 0-1/26"},
		{[]string{"Range", "bytes=0-1", "If-Range", `"r0"`}, 200, body, ""},
		{[]string{"Range", "bytes=0-1", "If-Range", `W/"r1"`}, 200, body, ""}, // weak never matches
		{[]string{"Range", "bytes=0-1", "If-Range", lastMod}, 206, "ab", "bytes 0-1/26"},
		{[]string{"Range", "bytes=0-1", "If-None-Match", `"r1"`}, 304, "", ""},
	} {
		resp, got := hs.do("GET", "/r", nil, tc.hdr...)
		if resp.StatusCode != tc.status || got != tc.body || resp.Header.Get("Content-Range") != tc.crange {
			t.Errorf("%q: %d %q Content-Range %q; want %d %q %q", tc.hdr, resp.StatusCode, got,
				resp.Header.Get("Content-Range"), tc.status, tc.body, tc.crange)
		}
		if x := resp.Header.Get("X-Cache"); x != "HIT" {
			t.Errorf("%q: X-Cache %q", tc.hdr, x)
		}
		if resp.StatusCode == 206 && resp.Header.Get("Content-Type") != "text/plain" {
			t.Errorf("%q: 206 without the entry's Content-Type", tc.hdr)
		}
	}
	if resp, got := hs.do("HEAD", "/r", nil, "Range", "bytes=0-4"); resp.StatusCode != 200 || got != "" || resp.ContentLength != 26 {
		t.Errorf("HEAD with Range: %d %q length %d", resp.StatusCode, got, resp.ContentLength)
	}
	if n := o.hits.Load(); n != 1 {
		t.Errorf("%d origin hits; ranges of a stored response need none", n)
	}
}

// TestCacheStaleWhileRevalidate: a stale entry within the window is
// served at once, and revalidated in the background, once.
func TestCacheStaleWhileRevalidate(t *testing.T) {
	o := startOrigin(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		time.Sleep(100 * time.Millisecond)
		fixed("Cache-Control", "max-age=60, stale-while-revalidate=600", "Age", "90", "ETag", `"e"`)(n, w, r)
	})
	c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
	hs := newHarness(t, harnessOpts{backends: []string{o.addr}, cache: c})
	if resp, _ := hs.do("GET", "/swr", nil); resp.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("first: %s", resp.Header.Get("X-Cache"))
	}
	start := time.Now()
	for range 3 {
		resp, body := hs.do("GET", "/swr", nil)
		if resp.Header.Get("X-Cache") != "STALE" || body != "v1" {
			t.Fatalf("while revalidating: %s %q", resp.Header.Get("X-Cache"), body)
		}
	}
	if d := time.Since(start); d > 90*time.Millisecond {
		t.Errorf("stale answers took %s: they waited for the origin", d)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		resp, _ := hs.do("GET", "/swr", nil)
		if resp.Header.Get("X-Cache") == "HIT" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the background revalidation never refreshed the entry")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := o.hits.Load(); n != 2 {
		t.Errorf("origin hits %d, want 2 (one fill, one background revalidation)", n)
	}
	if o.inm != `"e"` {
		t.Errorf("revalidation sent If-None-Match %q", o.inm)
	}
}

// TestCacheCollapsesMisses: 200 concurrent misses for one URL reach the
// origin once, for a body with a length and for a chunked one.
func TestCacheCollapsesMisses(t *testing.T) {
	for _, size := range []int{2, 20 << 10} {
		t.Run(fmt.Sprintf("%d bytes", size), func(t *testing.T) {
			body := strings.Repeat("v", size)
			o := startOrigin(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				time.Sleep(200 * time.Millisecond)
				w.Header().Set("Cache-Control", "max-age=60")
				// net/http sends past 2 KiB chunked.
				io.WriteString(w, body)
			})
			c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
			hs := newHarness(t, harnessOpts{backends: []string{o.addr}, cache: c, responseTimeout: 5 * time.Second})
			hs.client.Transport.(*http.Transport).MaxIdleConnsPerHost = 200
			var wg sync.WaitGroup
			var bad atomic.Int64
			results := map[string]int{}
			var mu sync.Mutex
			for range 200 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, got := hs.do("GET", "/hot", nil)
					if resp.StatusCode != 200 || got != body {
						bad.Add(1)
					}
					mu.Lock()
					results[resp.Header.Get("X-Cache")]++
					mu.Unlock()
				}()
			}
			wg.Wait()
			if n := o.hits.Load(); n != 1 {
				t.Errorf("200 concurrent misses reached the origin %d times, want 1", n)
			}
			if bad.Load() > 0 || results["MISS"] != 1 {
				t.Errorf("%d wrong answers; results %v", bad.Load(), results)
			}
		})
	}
}

// TestCacheBoundedLRU: the cache holds at most max_size bytes, evicting
// the least recently used, and does not store bodies over max_object
// (they stream through whole).
func TestCacheBoundedLRU(t *testing.T) {
	big := strings.Repeat("b", 200<<10)
	o := startOrigin(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		if r.URL.Path == "/big" {
			io.WriteString(w, big)
			return
		}
		io.WriteString(w, strings.Repeat("x", 10<<10))
	})
	c := cache.New(64<<10, 100<<10, cache.Options{XCache: true})
	hs := newHarness(t, harnessOpts{backends: []string{o.addr}, cache: c})
	// The origin answers chunked (net/http does past 2 KiB): read whole
	// and stored.
	for i := range 10 {
		hs.do("GET", fmt.Sprintf("/p%d", i), nil)
		hs.do("GET", "/p0", nil) // keeps /p0 recently used
	}
	st := c.Stats()
	if st.Bytes > 64<<10 || st.Objects >= 10 {
		t.Errorf("%d bytes in %d objects, limit 64 KiB", st.Bytes, st.Objects)
	}
	if resp, _ := hs.do("GET", "/p0", nil); resp.Header.Get("X-Cache") != "HIT" {
		t.Error("the most used entry was evicted")
	}
	if resp, _ := hs.do("GET", "/p1", nil); resp.Header.Get("X-Cache") != "MISS" {
		t.Error("the least recently used entry was kept")
	}
	for range 2 {
		resp, body := hs.do("GET", "/big", nil)
		if body != big || resp.Header.Get("X-Cache") != "MISS" {
			t.Fatalf("a body over max_object: %d bytes, %s", len(body), resp.Header.Get("X-Cache"))
		}
	}
}

// TestCacheSharedByHTTP2: HTTP/1.1 and HTTP/2 clients share entries.
func TestCacheSharedByHTTP2(t *testing.T) {
	o := startOrigin(t, fixed("Cache-Control", "max-age=60"))
	c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
	hs := newHarness(t, harnessOpts{backends: []string{o.addr}, cache: c, tls: true})
	if resp, _ := hs.do("GET", "/shared", nil, "Host", "127.0.0.1"); resp.Header.Get("X-Cache") != "MISS" {
		t.Fatal(resp.Header.Get("X-Cache"))
	}
	client, url := h2Front(t, hs, 1<<20)
	req, _ := http.NewRequest("GET", url+"/shared", nil)
	req.Host = "127.0.0.1"
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.Header.Get("X-Cache") != "HIT" || string(body) != "v1" || o.hits.Load() != 1 {
		t.Errorf("HTTP/2: %s %s %q, origin hits %d", resp.Proto, resp.Header.Get("X-Cache"), body, o.hits.Load())
	}
}

// TestCacheStaleIfErrorWithBackendGone: with the only backend gone, a
// stale entry within stale-if-error answers instead of a 502.
func TestCacheStaleIfErrorWithBackendGone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60, stale-if-error=600")
		w.Header().Set("Age", "120")
		io.WriteString(w, "kept")
	})}
	go srv.Serve(ln)
	c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
	hs := newHarness(t, harnessOpts{backends: []string{ln.Addr().String()}, cache: c})
	if resp, _ := hs.do("GET", "/p", nil); resp.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("first: %s", resp.Header.Get("X-Cache"))
	}
	srv.Close()
	resp, body := hs.do("GET", "/p", nil)
	if resp.StatusCode != 200 || body != "kept" || resp.Header.Get("X-Cache") != "STALE" {
		t.Errorf("backend gone: %d %q %s", resp.StatusCode, body, resp.Header.Get("X-Cache"))
	}
}

// TestCacheKeyedByScheme: one pool (one cache) behind a plaintext and a
// TLS listener keeps a page per scheme, as the backend builds them
// differently (X-Forwarded-Proto).
func TestCacheKeyedByScheme(t *testing.T) {
	o := startOrigin(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		fmt.Fprintf(w, "%s://www.example.com/login", r.Header.Get("X-Forwarded-Proto"))
	})
	c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
	plain := newHarness(t, harnessOpts{backends: []string{o.addr}, cache: c})
	secure := newHarness(t, harnessOpts{backends: []string{o.addr}, cache: c, tls: true})
	for i, s := range []struct {
		hs           *harness
		xcache, body string
	}{
		{plain, "MISS", "http://www.example.com/login"},
		{secure, "MISS", "https://www.example.com/login"},
		{plain, "HIT", "http://www.example.com/login"},
		{secure, "HIT", "https://www.example.com/login"},
	} {
		resp, body := s.hs.do("GET", "/p", nil, "Host", "www.example.com")
		if resp.Header.Get("X-Cache") != s.xcache || body != s.body {
			t.Errorf("request %d: X-Cache %q, body %q; want %q, %q", i+1, resp.Header.Get("X-Cache"), body, s.xcache, s.body)
		}
	}
}

// TestCacheStaleIfErrorCountedAsCacheAnswer: a stale entry served because
// the backend failed (refused, or answered 5xx) is the cache's answer:
// counted with no backend, and neither the backend's answer nor its
// latency; the backend's failure is counted as one.
func TestCacheStaleIfErrorCountedAsCacheAnswer(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprintf("refused=%v", refuse), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var n atomic.Int64
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) > 1 {
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				w.Header().Set("Cache-Control", "max-age=60, stale-if-error=600")
				w.Header().Set("Age", "120")
				io.WriteString(w, "kept")
			})}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
			c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
			hs := newHarness(t, harnessOpts{backends: []string{ln.Addr().String()}, cache: c})
			hs.do("GET", "/p", nil)
			dest, b := hs.site.Default, hs.up.Pool.Backend(ln.Addr().String())
			latency, failures := b.LatencySum(), b.Failures()
			if refuse {
				srv.Close()
			}
			resp, body := hs.do("GET", "/p", nil)
			if resp.StatusCode != 200 || body != "kept" || resp.Header.Get("X-Cache") != "STALE" {
				t.Fatalf("stale-if-error: %d %q %s", resp.StatusCode, body, resp.Header.Get("X-Cache"))
			}
			if got := dest.Codes[b.Index].Get(200); got != 1 {
				t.Errorf("the backend is counted %d answers of 200, want 1 (the first request's)", got)
			}
			if got := dest.NoBackend.Get(200); got != 1 {
				t.Errorf("%d answers of 200 counted as the cache's, want 1", got)
			}
			if b.LatencySum() != latency {
				t.Errorf("the cache's answer added %s to the backend's latency", b.LatencySum()-latency)
			}
			if refuse && b.Failures() != failures+1 {
				t.Errorf("backend failures %d, want %d", b.Failures(), failures+1)
			}
		})
	}
}

// TestCacheDateAnd304Refresh: a hit carries the stored Date, not the
// time it was served (RFC 9110 section 6.6.1); a 304 restarts the
// entry's freshness from its own Date and updates the stored fields, so
// the next request is a hit with them.
func TestCacheDateAnd304Refresh(t *testing.T) {
	first := time.Now().Add(-5 * time.Second).UTC().Format(http.TimeFormat)
	o := startOrigin(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		d := time.Now().UTC().Format(http.TimeFormat)
		if n == 1 {
			d = first // stale at once: max-age=2
		}
		w.Header().Set("Date", d)
		w.Header().Set("Cache-Control", "max-age=2")
		w.Header().Set("ETag", `"x"`)
		w.Header().Set("Test-Header", fmt.Sprint("v", n))
		if n > 1 {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		io.WriteString(w, "body")
	})
	c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
	hs := newHarness(t, harnessOpts{backends: []string{o.addr}, cache: c})
	hs.do("GET", "/p", nil)
	resp, _ := hs.do("GET", "/p", nil)
	if resp.Header.Get("X-Cache") != "REVALIDATED" || resp.Header.Get("Test-Header") != "v2" {
		t.Fatalf("second: X-Cache %q, Test-Header %q", resp.Header.Get("X-Cache"), resp.Header.Get("Test-Header"))
	}
	date := resp.Header.Get("Date")
	resp, body := hs.do("GET", "/p", nil)
	if resp.Header.Get("X-Cache") != "HIT" || resp.Header.Get("Test-Header") != "v2" || body != "body" || o.hits.Load() != 2 {
		t.Errorf("after the 304: X-Cache %q, Test-Header %q, body %q, origin hits %d; want a hit with the 304's fields",
			resp.Header.Get("X-Cache"), resp.Header.Get("Test-Header"), body, o.hits.Load())
	}
	if resp.Header.Get("Date") != date || date == first {
		t.Errorf("Date %q on the hit, %q from the 304, %q first", resp.Header.Get("Date"), date, first)
	}
}

// TestCacheWithoutBodyMemory: with no room left in the process's body
// memory, a cacheable answer streams through, intact, and is not stored;
// once there is room it is.
func TestCacheWithoutBodyMemory(t *testing.T) {
	page := strings.Repeat("x", 2000)
	o := startOrigin(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		fmt.Fprintf(w, "%s%d", page, n)
	})
	c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
	hs := newHarness(t, harnessOpts{backends: []string{o.addr}, cache: c})
	bodymem.SetLimit(bodymem.Used())
	defer bodymem.SetLimit(bodymem.DefaultLimit)
	for i := range 2 {
		resp, body := hs.do("GET", "/p", nil)
		if want := fmt.Sprintf("%s%d", page, i+1); body != want || resp.Header.Get("X-Cache") != "MISS" {
			t.Errorf("with no body memory, request %d: X-Cache %q, %d bytes, want a MISS of %d", i+1, resp.Header.Get("X-Cache"), len(body), len(want))
		}
	}
	bodymem.SetLimit(bodymem.DefaultLimit)
	for i, want := range []string{"MISS", "HIT"} {
		resp, body := hs.do("GET", "/p", nil)
		if resp.Header.Get("X-Cache") != want || body != page+"3" {
			t.Errorf("with room, request %d: X-Cache %q, %d bytes, want %s of the third answer", i+1, resp.Header.Get("X-Cache"), len(body), want)
		}
	}
}
