package proxy

import (
	"bufio"
	"net"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

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
	go srv.Serve(ln)                      //nolint:errcheck
	tb.Cleanup(func() { srv.Shutdown() }) //nolint:errcheck
	return ln.Addr().String()
}

// BenchmarkProxyRequest measures the whole L7 path in one process: a
// fasthttp client on an in-memory connection, lb's server and handler,
// and a fasthttp backend on loopback. allocs/op counts all three.
func BenchmarkProxyRequest(b *testing.B) {
	hs := newHarness(&testing.T{}, harnessOpts{backends: []string{startFastBackend(b)}})
	benchRequests(b, hs)
}

// benchRequests sends GETs through hs from parallel clients until b is
// done.
func benchRequests(b *testing.B, hs *harness) {
	defer hs.srv.Shutdown() //nolint:errcheck
	client := &fasthttp.HostClient{
		Addr: "lb.test",
		Dial: func(string) (net.Conn, error) { return hs.ln.DialWithLocalAddr(clientAddr) },
	}
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

// BenchmarkPrepareRequest measures header rewriting alone.
func BenchmarkPrepareRequest(b *testing.B) {
	var ctx fasthttp.RequestCtx
	ctx.Init(&fasthttp.Request{}, clientAddr, nil)
	raw := "GET /a/b?c=d HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n" +
		"X-Forwarded-For: 10.1.2.3\r\nConnection: keep-alive\r\nCookie: a=b\r\n\r\n"
	src := strings.NewReader(raw)
	br := bufio.NewReader(src)
	b.ReportAllocs()
	for b.Loop() {
		ctx.Request.Reset()
		src.Reset(raw)
		br.Reset(src)
		if err := ctx.Request.Header.Read(br); err != nil {
			b.Fatal(err)
		}
		_, mask := checkRequest(&ctx)
		prepareRequest(&ctx, true, mask)
	}
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
