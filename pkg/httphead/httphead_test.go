package httphead

import (
	"bufio"
	"net"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

var clientAddr = &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}

// TestSpaceInFieldNameRefused covers what fasthttp lets through to the
// handler and net/http, the echo backend, would refuse by itself (so
// TestRejectedRequestsNeverReachBackend cannot tell who refused it).
func TestSpaceInFieldNameRefused(t *testing.T) {
	for _, tc := range []struct {
		head string
		want int
	}{
		{"POST / HTTP/1.1\r\nHost: x\r\nTransfer Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400},
		{"GET / HTTP/1.0\r\nX Y: 1\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: x\r\nX-A: a b: c\r\n\r\n", 0},
		{"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b: c\r\n\r\n", 400}, // obs-fold
		{"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n", 0},
	} {
		var ctx fasthttp.RequestCtx
		ctx.Init(&fasthttp.Request{}, clientAddr, nil)
		if err := ctx.Request.Header.Read(bufio.NewReader(strings.NewReader(tc.head))); err != nil {
			t.Fatalf("%q: %v", tc.head, err)
		}
		if got, _ := Check(&ctx); got != tc.want {
			t.Errorf("%q: Check = %d, want %d", tc.head, got, tc.want)
		}
	}
}

func TestValidHost(t *testing.T) {
	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{"www.example.com", true},
		{"www.example.com:8443", true},
		{"127.0.0.1:80", true},
		{"[::1]", true},
		{"[::1]:8080", true},
		{"[::ffff:10.0.0.1]:1", true},
		{"xn--bcher-kva.example", true},
		{"a%2Eb", true},
		{"www.example.com:", true}, // port = *DIGIT
		{"evil@www.example.com", false},
		{"www.example.com/x", false},
		{"www.exa mple.com", false},
		{"www.example.com:80x", false},
		{"a:1:2", false},
		{"[::1", false},
		{"[::1]x", false},
		{"[v1.x]", false},
		{"a\x00b", false},
		{"caf\xc3\xa9", false},
	} {
		if got := validHost([]byte(tc.host)); got != tc.ok {
			t.Errorf("validHost(%q) = %v, want %v", tc.host, got, tc.ok)
		}
	}
}

func TestScanRequestHeadersFraming(t *testing.T) {
	for _, tc := range []struct {
		head string
		want Mask // flags of badFraming|fieldContentLength|fieldTransferEncoding
	}{
		{"Content-Length: 5\r\n", fieldContentLength},
		{"Transfer-Encoding: chunked\r\n", fieldTransferEncoding},
		{"transfer-encoding:  Chunked \r\n", fieldTransferEncoding},
		{"Transfer-Encoding: identity\r\n", fieldTransferEncoding | badTransfer},
		{"X-A: a\r\n b\r\n", badFold},
		{"X-A: a\r\n\tb\r\n", badFold},
		{"X A: b\r\n", badName},
		{"X-A: a\nX-B: b\r\n", badLF},
		{"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n", fieldContentLength | fieldTransferEncoding},
	} {
		var h fasthttp.RequestHeader
		if err := h.Read(bufio.NewReader(strings.NewReader("POST / HTTP/1.1\r\nHost: x\r\n" + tc.head + "\r\n"))); err != nil {
			t.Errorf("%q: %v", tc.head, err)
			continue
		}
		if got := scan(&h) &^ hopMask; got != tc.want {
			t.Errorf("%q: flags %b, want %b", tc.head, got, tc.want)
		}
	}
}

func TestAppendForwarded(t *testing.T) {
	for _, tc := range []struct {
		client net.Addr
		host   string
		tls    bool
		want   string
	}{
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 1}, "example.com", true, "for=192.0.2.7;host=example.com;proto=https"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1}, "example.com:8080", false, `for="[2001:db8::1]";host="example.com:8080";proto=http`},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.9"), Port: 1}, "[2001:db8::2]:443", true, `for=192.0.2.9;host="[2001:db8::2]:443";proto=https`},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 1}, `a"b\c`, true, `for="[::1]";host="a\"b\\c";proto=https`},
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1}, "", false, "for=10.0.0.1;proto=http"},
	} {
		if got := string(appendForwarded(nil, tc.client, []byte(tc.host), tc.tls)); got != tc.want {
			t.Errorf("appendForwarded(%v, %q) = %s, want %s", tc.client, tc.host, got, tc.want)
		}
	}
}

func TestForwardingHeaderNames(t *testing.T) {
	for name, want := range map[string]int{
		"X-Forwarded-For":    fwXFF,
		"x-forwarded-for":    fwXFF,
		"X_Forwarded_For":    fwOwned,
		"X-Forwarded_For":    fwOwned,
		"X-Forwarded-Host":   fwOwned,
		"X_FORWARDED_HOST":   fwOwned,
		"X-Forwarded-Prefix": fwOwned,
		"X-Real-IP":          fwOwned,
		"forwarded":          fwOwned,
		"Forwarded-For":      fwNone,
		"X-Forwarded-Hosts":  fwNone,
		"X-Forwarded":        fwNone,
		"X-Client-Verify":    fwNone,
		"X-Forwardex-Host":   fwNone,
	} {
		if got := forwardingHeader([]byte(name)); got != want {
			t.Errorf("forwardingHeader(%q) = %d, want %d", name, got, want)
		}
	}
}

// BenchmarkPrepareRequest measures header rewriting alone.
func BenchmarkPrepareRequest(b *testing.B) {
	prepare := prepareLoop(b)
	b.ReportAllocs()
	for b.Loop() {
		prepare()
	}
}

// prepareLoop returns one round of reading a request head, checking it
// and rewriting it for a backend.
func prepareLoop(tb testing.TB) func() {
	var ctx fasthttp.RequestCtx
	ctx.Init(&fasthttp.Request{}, clientAddr, nil)
	raw := "GET /a/b?c=d HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n" +
		"X-Forwarded-For: 10.1.2.3\r\nConnection: keep-alive\r\nCookie: a=b\r\n\r\n"
	src := strings.NewReader(raw)
	br := bufio.NewReader(src)
	return func() {
		ctx.Request.Reset()
		src.Reset(raw)
		br.Reset(src)
		if err := ctx.Request.Header.Read(br); err != nil {
			tb.Fatal(err)
		}
		_, mask := Check(&ctx)
		Prepare(&ctx, mask, Client{TLS: true})
	}
}

// TestHeaderRewritingAllocatesNothing keeps checking and rewriting a
// common request head free of allocations in steady state.
func TestHeaderRewritingAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocations")
	}
	f := prepareLoop(t)
	for range 200 { // buffers reach their steady size
		f()
	}
	if got := testing.AllocsPerRun(500, f); got != 0 {
		t.Errorf("%v allocations per run, want 0", got)
	}
}
