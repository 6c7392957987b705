package h2

import (
	"bytes"
	"crypto/tls"
	"errors"
	"maps"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/offloadlb/lb/internal/testutil"
)

// answer is a Handler that answers every request itself: with serve, or
// with 200 and the request's path if serve is nil. Requests that are not
// served get the status lb's own handler gives their error.
type answer func(ctx *fasthttp.RequestCtx)

func (f answer) Serve(ctx *fasthttp.RequestCtx) {
	if f == nil {
		ctx.SetBody(ctx.Path())
		return
	}
	f(ctx)
}

func (answer) ServeError(ctx *fasthttp.RequestCtx, err error) {
	code := fasthttp.StatusBadRequest
	var ne net.Error
	switch {
	case errors.Is(err, ErrHeadTooLarge):
		code = fasthttp.StatusRequestHeaderFieldsTooLarge
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		code = fasthttp.StatusRequestEntityTooLarge
	case errors.As(err, &ne) && ne.Timeout():
		code = fasthttp.StatusRequestTimeout
	}
	ctx.Response.Reset()
	ctx.SetStatusCode(code)
}

type quietLogger struct{}

func (quietLogger) Printf(string, ...any) {}

// serveTest serves HTTP/2 over TLS on 127.0.0.1 with h, as a listener
// does, and returns its address and the Server. It stops when the test
// ends.
func serveTest(t *testing.T, h Handler, o Options) (string, *Server) {
	t.Helper()
	if o.MaxHead == 0 {
		o.MaxHead = 16 << 10
	}
	if o.MaxBody == 0 {
		o.MaxBody = 1 << 20
	}
	o.Logger = quietLogger{}
	s := NewServer(h, o)
	addr := testutil.ServeTLS(t, []string{"h2"}, func(c *tls.Conn) { s.ServeConn(c) }, s.GoAway, s.Close)
	return addr, s
}

// TestWorkerPoolReusesAndExpires: request goroutines are reused, and end
// after their idle time without work.
func TestWorkerPoolReusesAndExpires(t *testing.T) {
	addr, s := serveTest(t, answer(nil), Options{workerIdle: 100 * time.Millisecond})
	r := testutil.DialH2(t, addr)
	for i := range 20 {
		id := uint32(2*i + 1)
		r.Request(id, "GET", "/"+strconv.Itoa(i), true)
		if resp := r.Response(id, nil); resp.Status != "200" {
			t.Fatalf("%+v", resp)
		}
	}
	// One worker serves them all, or two when the next request came in
	// before the first worker was back in the pool. The last one goes
	// back just after its response is written.
	for deadline := time.Now().Add(50 * time.Millisecond); s.workers.Idle() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if n := s.workers.Idle(); n < 1 || n > 2 {
		t.Errorf("%d idle workers after 20 requests one at a time, want 1 or 2", n)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		n := s.workers.Idle()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still idle", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHPACKEncoding: header blocks lb writes decode, with x/net's
// decoder, to the fields meant, long values and unusual statuses
// included.
func TestHPACKEncoding(t *testing.T) {
	long := strings.Repeat("v", 300) // lengths past the 7-bit prefix
	for _, code := range []int{200, 204, 206, 304, 400, 404, 500, 201, 418, 599} {
		var resp fasthttp.Response
		resp.SetStatusCode(code)
		resp.Header.Set("X-Long", long)
		resp.Header.Set("Content-Type", "text/plain")
		resp.Header.Set("ETag", `"e"`)
		resp.Header.Set("Strict-Transport-Security", "max-age=1")
		c := &conn{}
		block := c.encodeHead(&resp, 1234567)
		got := map[string]string{}
		if _, err := hpack.NewDecoder(4096, func(f hpack.HeaderField) { got[f.Name] = f.Value }).Write(block); err != nil {
			t.Fatalf("%d: %v", code, err)
		}
		want := map[string]string{":status": strconv.Itoa(code), "x-long": long, "content-type": "text/plain", "content-length": "1234567",
			"etag": `"e"`, "strict-transport-security": "max-age=1"}
		if code == 204 || code == 304 {
			delete(want, "content-length")
		}
		if !maps.Equal(got, want) {
			t.Errorf("%d: decoded %v", code, got)
		}
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
	a := NewServer(nil, Options{MaxHead: 8192, MaxBody: 1 << 20})
	hb := newHeadBlock(headerListSize(8192))
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	frame := func() []byte {
		block.Reset()
		for _, f := range [][2]string{
			{":method", "GET"}, {":scheme", "https"}, {":authority", "www.example.com"},
			{":path", "/a/b?c=d"}, {"user-agent", "bench"}, {"accept", "*/*"},
			{"cookie", "a=b"}, {"cookie", "c=d"},
		} {
			if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
				tb.Fatal(err)
			}
		}
		var wire bytes.Buffer
		if err := http2.NewFramer(&wire, nil).WriteHeaders(http2.HeadersFrameParam{
			StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true,
		}); err != nil {
			tb.Fatal(err)
		}
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

// TestHotPathsAllocateNothing keeps HTTP/2 header decoding, which the
// benchmark measures, down to one allocation in steady state: x/net's
// HEADERS frame.
func TestHotPathsAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocations")
	}
	f := h2HeadLoop(t)
	for range 200 { // pools and buffers reach their steady size
		f()
	}
	// Whole allocations per run: a rare one (a pool emptied by a
	// collection) does not count.
	if got := testing.AllocsPerRun(500, f); got != 1 {
		t.Errorf("HTTP/2 header block: %v allocations per run, want 1", got)
	}
}
