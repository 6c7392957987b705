package proxy

import (
	"bytes"
	"net"
	"testing"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

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
	defer hs.srv.Shutdown() //nolint:errcheck
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

// BenchmarkHTTP2Head decodes a request's HEADERS frame into the request
// fasthttp serves, as an HTTP/2 connection does for each request once the
// client's fields are in the HPACK dynamic table (they are after its
// first request).
func BenchmarkHTTP2Head(b *testing.B) {
	decode := h2HeadLoop(b)
	b.ReportAllocs()
	for b.Loop() {
		decode()
	}
}

// h2HeadLoop returns one round of decoding a HEADERS frame whose fields
// are all in the HPACK table into a request, the first frame (which puts
// them there) decoded already.
func h2HeadLoop(tb testing.TB) func() {
	a := NewHTTP2(nil, HTTP2Options{MaxHead: 8192, MaxBody: 1 << 20})
	hb := newHeadBlock(h2HeaderListSize(8192))
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	frame := func() []byte {
		block.Reset()
		for _, f := range [][2]string{
			{":method", "GET"}, {":scheme", "https"}, {":authority", "www.example.com"},
			{":path", "/a/b?c=d"}, {"user-agent", "bench"}, {"accept", "*/*"},
			{"cookie", "a=b"}, {"cookie", "c=d"},
		} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}) //nolint:errcheck
		}
		var wire bytes.Buffer
		http2.NewFramer(&wire, nil).WriteHeaders(http2.HeadersFrameParam{ //nolint:errcheck
			StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true,
		})
		return wire.Bytes()
	}
	first, repeat := frame(), frame() // the second is all table references
	src := bytes.NewReader(nil)
	fr := http2.NewFramer(nil, src)
	var ctx fasthttp.RequestCtx
	head := make([]byte, 0, 1024)
	decode := func(wire []byte) {
		src.Reset(wire)
		f, err := fr.ReadFrame()
		if err != nil {
			tb.Fatal(err)
		}
		hb.start(head)
		if err := hb.decode(f.(*http2.HeadersFrame), fr); err != nil || hb.refused() {
			tb.Fatal(err, hb.refused())
		}
		ctx.Request.Reset()
		if _, err := hb.request(&ctx, a); err != nil {
			tb.Fatal(err)
		}
		head = hb.head
	}
	decode(first)
	if got := string(ctx.Request.Header.Peek("Cookie")); got != "a=b; c=d" {
		tb.Fatalf("cookie %q", got)
	}
	return func() { decode(repeat) }
}

// TestHotPathsAllocateNothing keeps the request paths the benchmarks
// measure free of allocations in steady state: a whole HTTP/1.1 request
// through lb to a backend, a cache hit, and HTTP/2
// header decoding (one allocation: x/net's HEADERS frame).
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
		{"HTTP/2 header block", func() func() { return h2HeadLoop(t) }, 1},
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
