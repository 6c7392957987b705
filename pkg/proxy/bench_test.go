package proxy

import (
	"io"
	"net"
	"testing"

	"github.com/offloadlb/lb/pkg/policy"

	"github.com/offloadlb/lb/pkg/affinity"
	"github.com/offloadlb/lb/pkg/balancer"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/accesslog"
	"github.com/offloadlb/lb/pkg/cache"
)

// startFastBackend serves a fixed 100-byte body with fasthttp on
// 127.0.0.1; header pairs are added to each answer.
func startFastBackend(tb testing.TB, header ...string) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	body := make([]byte, 100)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		for i := 0; i+1 < len(header); i += 2 {
			ctx.Response.Header.Set(header[i], header[i+1])
		}
		ctx.SetBody(body)
	}}
	go srv.Serve(ln)                      // ends when Shutdown closes ln
	tb.Cleanup(func() { srv.Shutdown() }) // the test is over
	return ln.Addr().String()
}

// BenchmarkProxyRequest measures the whole L7 path in one process: a
// fasthttp client on an in-memory connection, lb's server and handler,
// and a fasthttp backend on loopback. allocs/op counts all three.
func BenchmarkProxyRequest(b *testing.B) {
	hs := newHarness(&testing.T{}, harnessOpts{backends: []string{startFastBackend(b)}})
	benchRequests(b, hs)
}

// lbClient is a fasthttp client of hs's lb, over its in-memory listener.
func lbClient(hs *harness) *fasthttp.HostClient {
	return &fasthttp.HostClient{
		Addr: "lb.test",
		Dial: func(string) (net.Conn, error) { return hs.ln.DialWithLocalAddr(clientAddr) },
	}
}

// benchRequests sends GETs through hs from parallel clients until b is
// done.
func benchRequests(b *testing.B, hs *harness) {
	defer hs.srv.Shutdown() // the benchmark is over
	client := lbClient(hs)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI("http://lb.test/bench?x=1")
		req.Header.Set("X-Forwarded-For", "10.1.2.3")
		for pb.Next() {
			if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 {
				b.Errorf("status %d: %v", resp.StatusCode(), err)
				return
			}
		}
	})
}

// BenchmarkProxyRequestLogged is BenchmarkProxyRequest with each request
// written to an access log, in each format, that writes to nowhere.
func BenchmarkProxyRequestLogged(b *testing.B) {
	for _, f := range []struct {
		name string
		f    accesslog.Format
	}{{"text", accesslog.Text}, {"json", accesslog.JSON}, {"combined", accesslog.Combined}} {
		b.Run(f.name, func(b *testing.B) { benchRequests(b, loggedHarness(b, f.f)) })
	}
}

// loggedHarness is a harness whose requests are written to an access log
// in format f that writes to nowhere.
func loggedHarness(tb testing.TB, f accesslog.Format) *harness {
	w := accesslog.NewWriter(io.Discard, nil)
	tb.Cleanup(w.Close)
	t, _ := tb.(*testing.T)
	if t == nil {
		t = &testing.T{}
	}
	return newHarness(t, harnessOpts{backends: []string{startFastBackend(tb)}, site: func(l *Site) { l.Access = accesslog.New(f, w) }})
}

// BenchmarkCacheHit is BenchmarkProxyRequest answered from the pool's
// cache: no backend exchange.
func BenchmarkCacheHit(b *testing.B) {
	c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
	hs := newHarness(&testing.T{}, harnessOpts{backends: []string{startFastBackend(b, "Cache-Control", "max-age=3600")}, cache: c})
	benchRequests(b, hs)
	if st := c.Stats(); st.Results["MISS"] != 1 {
		b.Errorf("results %v: want one miss", st.Results)
	}
}

// TestHotPathsAllocateNothing keeps the request paths the benchmarks
// measure free of allocations in steady state: a whole HTTP/1.1 request
// through lb to a backend, and a cache hit; on a listener with
// [listener.compress], an answer that is not compressed. (Header rewriting is guarded
// by pkg/httphead's test, HTTP/2 header decoding by pkg/h2's.)
func TestHotPathsAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocations")
	}
	request := func(hs *harness) func() {
		client := lbClient(hs)
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI("http://lb.test/bench?x=1")
		return func() {
			if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 {
				t.Fatalf("status %d: %v", resp.StatusCode(), err)
			}
		}
	}
	c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
	for _, tc := range []struct {
		name string
		loop func() func()
		want float64
	}{
		{"request through lb", func() func() {
			return request(newHarness(t, harnessOpts{backends: []string{startFastBackend(t)}}))
		}, 0},
		{"cache hit", func() func() {
			return request(newHarness(t, harnessOpts{backends: []string{startFastBackend(t, "Cache-Control", "max-age=3600")}, cache: c}))
		}, 0},
		{"request through lb, logged as text", func() func() { return request(loggedHarness(t, accesslog.Text)) }, 0},
		{"request through lb, logged as JSON", func() func() { return request(loggedHarness(t, accesslog.JSON)) }, 0},
		{"request through lb, logged as combined", func() func() { return request(loggedHarness(t, accesslog.Combined)) }, 0},
		{"request through a limited listener with header rules and a stripping route", func() func() {
			rules := policy.NewHeaderRules(policy.HeaderConfig{
				RequestSet: map[string]string{"X-Env": "prod"}, RequestRemove: []string{"X-Debug"},
				ResponseSet: map[string]string{"X-Frame-Options": "DENY"}, ResponseRemove: []string{"Server"},
			})
			deny, _ := policy.NewFilter(nil, []string{"203.0.113.0/24"})
			return request(newHarness(t, harnessOpts{
				backends: []string{startFastBackend(t)},
				rules:    []Rule{{PathPrefix: "/bench", Policy: &RoutePolicy{StripPrefix: "/bench", Access: deny, Headers: rules, Limit: policy.NewLimiter(1e9, 1e9)}}},
				site:     func(s *Site) { s.Headers, s.Limit = rules, policy.NewLimiter(1e9, 1e9) },
			}))
		}, 0},
		{"request to a sticky pool hashed by cookie, with its cookie", func() func() { return affinityRequest(t, true) }, 0},
		{"request to a sticky pool hashed by cookie, given a cookie", func() func() { return affinityRequest(t, false) }, 0},
		{"request through lb with compression, not asked", func() func() { return compressRequest(t, 1024, "") }, 0},
		{"request through lb with compression, below min_size", func() func() { return compressRequest(t, 1024, "gzip, br, zstd") }, 0},
		{"request through lb with compression, refused (Vary added)", func() func() { return compressRequest(t, 0, "gzip;q=0, br;q=0, zstd;q=0") }, 0},
	} {
		f := tc.loop()
		for range 200 { // pools and buffers reach their steady size
			f()
		}
		// Whole allocations per run: a rare one (a pool emptied by a
		// collection) does not count.
		if got := testing.AllocsPerRun(500, f); got != tc.want {
			t.Errorf("%s: %v allocations per run, want %v", tc.name, got, tc.want)
		}
	}
}

// affinityRequest is a request to a pool hashed by a cookie and sticky,
// that has the sticky cookie or is given one each time.
func affinityRequest(t *testing.T, withCookie bool) func() {
	hs := newHarness(t, harnessOpts{backends: []string{startFastBackend(t), startFastBackend(t)}, algorithm: balancer.Hash})
	hs.up.Key = affinity.NewKey("cookie", "user")
	hs.up.Sticky = affinity.NewSticky(affinity.StickyConfig{Cookie: "lb_srv", HTTPOnly: true, SameSite: "lax"}, "web", hs.up.Pool.Backends, []byte("0123456789abcdef"), nil)
	client := lbClient(hs)
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	cookie := "user=alice"
	if withCookie {
		cookie += "; lb_srv=" + hs.up.Sticky.TokenOf(1)
	}
	return func() {
		req.Reset()
		req.SetRequestURI("http://lb.test/bench?x=1")
		req.Header.Set("Cookie", cookie)
		if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 {
			t.Fatalf("status %d: %v", resp.StatusCode(), err)
		}
		if set := len(resp.Header.PeekCookie("lb_srv")) > 0; set == withCookie {
			t.Fatalf("with cookie %v: Set-Cookie %v", withCookie, set)
		}
	}
}
