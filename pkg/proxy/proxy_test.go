package proxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offloadlb/lb/pkg/config"
)

func TestForwardedHeaders(t *testing.T) {
	e := startEcho(t)
	for _, tc := range []struct {
		name      string
		tls       bool
		prior     []string
		wantXFF   string
		wantProto string
	}{
		{"plain, no prior", false, nil, "192.0.2.7", "http"},
		{"tls, appended", true, []string{"X-Forwarded-For", "10.0.0.1"}, "10.0.0.1, 192.0.2.7", "https"},
		{"two prior headers joined", false, []string{"X-Forwarded-For", "10.0.0.1", "X-Forwarded-For", "10.0.0.2, 10.0.0.3"}, "10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7", "http"},
		{"spoofed proto replaced", true, []string{"X-Forwarded-Proto", "gopher", "X-Forwarded-Host", "evil"}, "192.0.2.7", "https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, harnessOpts{backends: []string{e.addr}, tls: tc.tls})
			resp, body := hs.do("GET", "/x", nil, append([]string{"Host", "shop.example.com:8443"}, tc.prior...)...)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			s := decodeSeen(t, body)
			if got := strings.Join(s.Header.Values("X-Forwarded-For"), "|"); got != tc.wantXFF {
				t.Errorf("X-Forwarded-For = %q, want %q", got, tc.wantXFF)
			}
			if got := strings.Join(s.Header.Values("X-Forwarded-Proto"), "|"); got != tc.wantProto {
				t.Errorf("X-Forwarded-Proto = %q, want %q", got, tc.wantProto)
			}
			if got := strings.Join(s.Header.Values("X-Forwarded-Host"), "|"); got != "shop.example.com:8443" {
				t.Errorf("X-Forwarded-Host = %q", got)
			}
			if s.Host != "shop.example.com:8443" {
				t.Errorf("Host = %q, want the client's", s.Host)
			}
		})
	}
}

func TestRequestTargetAndHopHeaders(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	resp := hs.raw("GET /a//b/../c%2Fd?q=1&r=%20 HTTP/1.1\r\nHost: x\r\n" +
		"Connection: keep-alive, X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\n" +
		"TE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\n" +
		"X-Keep: yes\r\n\r\n")
	if !strings.HasPrefix(resp, "HTTP/1.1 200") {
		t.Fatalf("response: %q", resp)
	}
	s := e.lastSeen()
	if s.URI != "/a//b/../c%2Fd?q=1&r=%20" {
		t.Errorf("backend got target %q; the client's must pass unchanged", s.URI)
	}
	for _, h := range []string{"Connection", "X-Private", "Keep-Alive", "Te", "Upgrade", "Proxy-Connection", "Proxy-Authorization"} {
		if v := s.Header.Get(h); v != "" {
			t.Errorf("hop-by-hop header %s: %q reached the backend", h, v)
		}
	}
	if s.Header.Get("X-Keep") != "yes" {
		t.Errorf("end-to-end header lost: %v", s.Header)
	}
	if s.Proto != "HTTP/1.1" {
		t.Errorf("backend spoken to in %s", s.Proto)
	}
}

// TestRequestBodyTypeUnchanged: a body the client sent without a
// Content-Type reaches the backend without one, and one with a type keeps
// it.
func TestRequestBodyTypeUnchanged(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	for _, typ := range []string{"", "application/json"} {
		head := "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
		if typ != "" {
			head += "Content-Type: " + typ + "\r\n"
		}
		if resp := hs.raw(head + "\r\n{}"); !strings.HasPrefix(resp, "HTTP/1.1 200") {
			t.Fatalf("response: %q", resp)
		}
		s := e.lastSeen()
		if got := s.Header.Values("Content-Type"); len(got) != len(strings.Fields(typ)) || typ != "" && got[0] != typ {
			t.Errorf("sent Content-Type %q, backend got %q", typ, got)
		}
		if s.Body != "{}" {
			t.Errorf("body %q", s.Body)
		}
	}
}

// TestRequestTrailersPassedOn sends trailer fields after a chunked
// body, announced by Trailer or not. lb sends the body on chunked, with
// the client's trailer fields but those lb owns: deleting Trailer used to
// move the fields among the header fields, where X-Client-Verify passed
// for lb's, and a backend that merges trailers into headers would do the
// same with a trailer.
func TestRequestTrailersPassedOn(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	for _, announce := range []string{"Trailer: X-Client-Verify, X-Sum\r\n", ""} {
		for _, body := range []string{"5\r\nhello\r\n", strings.Repeat("10000\r\n"+strings.Repeat("h", 0x10000)+"\r\n", 2)} {
			resp := hs.raw("POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + announce +
				"\r\n" + body + "0\r\nX-Client-Verify: SUCCESS\r\nX-Client-Cert-Subject: CN=admin\r\nX-Sum: 1\r\n\r\n")
			if !strings.HasPrefix(resp, "HTTP/1.1 200") {
				t.Fatalf("response: %q", resp)
			}
			s := e.lastSeen()
			if want := len(body) > 20; !s.Chunked || (len(s.Body) > 5) != want {
				t.Errorf("backend got %d bytes (chunked %v)", len(s.Body), s.Chunked)
			}
			for _, name := range []string{"X-Client-Verify", "X-Sum"} {
				if v := s.Header.Get(name); v != "" {
					t.Errorf("%q: client's trailer field %s reached the backend as a header: %q", announce, name, v)
				}
			}
			if len(s.Trailer) != 1 || s.Trailer.Get("X-Sum") != "1" {
				t.Errorf("%q: the backend got trailer fields %v, want X-Sum alone", announce, s.Trailer)
			}
		}
	}
}

func TestHTTP10ClientGetsHTTP11Backend(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	resp := hs.raw("GET /old HTTP/1.0\r\n\r\n")
	if !strings.Contains(resp, " 200 ") {
		t.Fatalf("response: %q", resp)
	}
	if e.lastSeen().Proto != "HTTP/1.1" || e.lastSeen().Host == "" {
		t.Errorf("backend saw %s with Host %q", e.lastSeen().Proto, e.lastSeen().Host)
	}
	hs.raw("GET //x/y HTTP/1.0\r\n\r\n")
	if s := e.lastSeen(); s.URI != "//x/y" || s.Host == "x" {
		t.Errorf("backend got target %q on host %q; want the path //x/y", s.URI, s.Host)
	}
}

func TestResponseHeadersCleaned(t *testing.T) {
	rb := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := readRequest(br); err == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	hs := newHarness(t, harnessOpts{backends: []string{rb.addr}})
	for i := range 3 {
		resp, body := hs.do("GET", "/", nil)
		if body != "ok" || resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		for _, h := range []string{"Connection", "X-Hop", "Keep-Alive"} {
			if v := resp.Header.Get(h); v != "" {
				t.Errorf("hop-by-hop %s: %q reached the client", h, v)
			}
		}
		if resp.Header.Get("X-End") != "2" || len(resp.Header.Values("Date")) != 1 {
			t.Errorf("end-to-end headers changed: %v", resp.Header)
		}
		if resp.Close {
			t.Errorf("the backend's Connection: close reached the client connection")
		}
	}
	if n := rb.conns.Load(); n != 3 {
		t.Errorf("backend connections = %d, want 3 (one per request: it asked to close)", n)
	}
}

func TestDateAndContentType(t *testing.T) {
	rb := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := readRequest(br); err == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
		}
	})
	hs := newHarness(t, harnessOpts{backends: []string{rb.addr}})
	resp, _ := hs.do("GET", "/", nil)
	if _, err := http.ParseTime(resp.Header.Get("Date")); err != nil {
		t.Fatalf("Date %q: %v", resp.Header.Get("Date"), err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		t.Errorf("Content-Type %q invented for a response without one", ct)
	}
}

func TestKeepAliveBothSides(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	for range 20 {
		if resp, _ := hs.do("GET", "/", nil); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
	}
	if conns := e.conns.Load(); conns != 1 {
		t.Fatalf("20 sequential requests opened %d backend connections, want 1", conns)
	}
}

func TestBodies(t *testing.T) {
	big := make([]byte, 3<<20)
	rand.Read(big)
	e := startEcho(t, func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/big":
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			w.Write(big)
		case "/chunked":
			f := w.(http.Flusher)
			for i := range 5 {
				fmt.Fprintf(w, "part %d\n", i)
				f.Flush()
			}
		case "/echo":
			io.Copy(w, r.Body)
		default:
			return false
		}
		return true
	})
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, maxBody: 1 << 20})

	t.Run("large response streams intact", func(t *testing.T) {
		resp, body := hs.do("GET", "/big", nil)
		if resp.StatusCode != 200 || !bytes.Equal([]byte(body), big) {
			t.Fatalf("status %d, %d bytes (want %d, equal=%v)", resp.StatusCode, len(body), len(big), bytes.Equal([]byte(body), big))
		}
	})
	t.Run("chunked response", func(t *testing.T) {
		resp, body := hs.do("GET", "/chunked", nil)
		if want := "part 0\npart 1\npart 2\npart 3\npart 4\n"; body != want {
			t.Fatalf("body %q, want %q", body, want)
		}
		if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
			t.Errorf("transfer encoding %v", resp.TransferEncoding)
		}
	})
	t.Run("request body", func(t *testing.T) {
		in := strings.Repeat("0123456789", 50_000)
		_, body := hs.do("POST", "/echo", strings.NewReader(in))
		if body != in {
			t.Fatalf("echoed %d bytes, want %d", len(body), len(in))
		}
	})
	t.Run("chunked request body", func(t *testing.T) {
		resp := hs.raw("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
		if !strings.HasPrefix(resp, "HTTP/1.1 200") {
			t.Fatalf("response %q", resp)
		}
		if e.lastSeen().Body != "hello world" {
			t.Fatalf("backend got body %q", e.lastSeen().Body)
		}
	})
	t.Run("request body over max_request_body", func(t *testing.T) {
		before := e.hits.Load()
		// The head announces 2 MiB; lb answers before the body is sent.
		resp := hs.raw("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n")
		if !strings.HasPrefix(resp, "HTTP/1.1 413") {
			t.Fatalf("response %q, want 413", firstLine(resp))
		}
		if e.hits.Load() != before {
			t.Fatal("the oversized request reached the backend")
		}
	})
	t.Run("HEAD keeps Content-Length, has no body", func(t *testing.T) {
		resp := hs.raw("HEAD /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		head, rest, _ := strings.Cut(resp, "\r\n\r\n")
		if !strings.Contains(head, fmt.Sprintf("Content-Length: %d", len(big))) || rest != "" {
			t.Fatalf("HEAD response %q + %d body bytes", head, len(rest))
		}
	})
}

func TestStatusCodes(t *testing.T) {
	slow := startEcho(t, func(w http.ResponseWriter, r *http.Request) bool {
		time.Sleep(300 * time.Millisecond)
		return false
	})
	garbage := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := readRequest(br); err == nil {
			io.WriteString(c, "SSH-2.0-OpenSSH_9.2\r\n\r\n")
		}
	})
	hangup := startRaw(t, func(c net.Conn, br *bufio.Reader) { readRequest(br) })
	for _, tc := range []struct {
		name    string
		backend string
		timeout time.Duration
		method  string
		want    int
	}{
		{"refused", deadAddr(t), 0, "GET", 502},
		{"garbage", garbage.addr, 0, "GET", 502},
		{"closed without answer", hangup.addr, 0, "POST", 502},
		{"too slow", slow.addr, 100 * time.Millisecond, "GET", 504},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, harnessOpts{backends: []string{tc.backend}, responseTimeout: tc.timeout})
			start := time.Now()
			resp, body := hs.do(tc.method, "/", nil)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d (%q)", resp.StatusCode, tc.want, body)
			}
			if strings.Contains(body, "127.0.0.1") || strings.Contains(body, "fasthttp") {
				t.Errorf("error body leaks internals: %q", body)
			}
			if time.Since(start) > 2*time.Second {
				t.Errorf("took %s", time.Since(start))
			}
		})
	}
	t.Run("no usable backend", func(t *testing.T) {
		e := startEcho(t)
		hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
		hs.up.Pool.Backends[0].SetUp(false)
		hs.up.Pool.Refresh()
		resp, _ := hs.do("GET", "/", nil)
		if resp.StatusCode != 503 || e.hits.Load() != 0 {
			t.Fatalf("status %d, backend hits %d; want 503 and none", resp.StatusCode, e.hits.Load())
		}
	})
}

func TestRetries(t *testing.T) {
	good := startEcho(t)
	hangup := startRaw(t, func(c net.Conn, br *bufio.Reader) { readRequest(br) })

	t.Run("connect failure retried for any method", func(t *testing.T) {
		hs := newHarness(t, harnessOpts{backends: []string{deadAddr(t), good.addr}, retries: 1})
		for range 4 {
			resp, body := hs.do("POST", "/", strings.NewReader("x"))
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
		}
	})
	t.Run("broken answer retried for GET, not POST", func(t *testing.T) {
		hs := newHarness(t, harnessOpts{backends: []string{hangup.addr, good.addr}, retries: 1})
		for range 4 {
			if resp, _ := hs.do("GET", "/", nil); resp.StatusCode != 200 {
				t.Fatalf("GET status %d", resp.StatusCode)
			}
		}
		fails := 0
		for range 4 {
			if resp, _ := hs.do("POST", "/", strings.NewReader("x")); resp.StatusCode == 502 {
				fails++
			}
		}
		if fails != 2 {
			t.Fatalf("%d of 4 POSTs failed; want the 2 sent to the broken backend", fails)
		}
	})
	t.Run("retries 0", func(t *testing.T) {
		hs := newHarness(t, harnessOpts{backends: []string{deadAddr(t), good.addr}, retries: 0})
		codes := map[int]int{}
		for range 4 {
			resp, _ := hs.do("GET", "/", nil)
			codes[resp.StatusCode]++
		}
		if codes[502] != 2 || codes[200] != 2 {
			t.Fatalf("codes %v, want two 502 and two 200", codes)
		}
	})
	t.Run("all tried", func(t *testing.T) {
		hs := newHarness(t, harnessOpts{backends: []string{deadAddr(t), deadAddr(t)}, retries: 5})
		resp, _ := hs.do("GET", "/", nil)
		if resp.StatusCode != 502 {
			t.Fatalf("status %d, want 502", resp.StatusCode)
		}
	})
}

func TestStaleKeepAliveConnectionIsRetried(t *testing.T) {
	// A backend that closes every connection after one response without
	// saying so: the pooled connection is dead when the next request
	// takes it.
	rb := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := readRequest(br); err == nil {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		time.Sleep(20 * time.Millisecond)
	})
	hs := newHarness(t, harnessOpts{backends: []string{rb.addr}})
	for i := range 5 {
		resp, body := hs.do("GET", "/", nil)
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPassiveHealth(t *testing.T) {
	good := startEcho(t)
	dead := deadAddr(t)
	hc := config.Health{Check: "none", Interval: config.Duration{Duration: time.Hour}, PassiveFailures: 2}
	hs := newHarness(t, harnessOpts{backends: []string{dead, good.addr}, retries: 1, health: &hc})
	for range 6 {
		if resp, _ := hs.do("GET", "/", nil); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	b := hs.up.Pool.Backends[0]
	if b.Up() {
		t.Fatal("backend refusing connections is still up after passive failures")
	}
	if !strings.Contains(b.LastError(), "connection refused") {
		t.Errorf("last error %q", b.LastError())
	}
}

func TestRouting(t *testing.T) {
	web, api, wild, static := startEcho(t), startEcho(t), startEcho(t), startEcho(t)
	o := harnessOpts{backends: []string{web.addr}}
	apiUp := newUpstream(t, "api", []string{api.addr}, o)
	wildUp := newUpstream(t, "wild", []string{wild.addr}, o)
	staticUp := newUpstream(t, "static", []string{static.addr}, o)
	o.rules = []Rule{
		{Host: "api.example.com", PathPrefix: "/v1/", Dest: destFor(apiUp)},
		{Host: "*.example.org", Dest: destFor(wildUp)},
		{PathPrefix: "/static/", Dest: destFor(staticUp)},
	}
	hs := newHarness(t, o)
	for _, tc := range []struct {
		host, path string
		want       *echoBackend
	}{
		{"api.example.com", "/v1/users", api},
		{"API.Example.COM:8443", "/v1/", api},
		{"api.example.com", "/v2/users", web},
		{"api.example.com", "/static/a.css", static},
		{"www.example.org", "/", wild},
		{"a.b.example.org", "/v1/", wild},
		{"example.org", "/", web},
		{"other.test", "/static/x", static},
		{"other.test", "/", web},
		{"api.example.com", "/x/../v1/users", api}, // routed on the normalised path
	} {
		resp, body := hs.do("GET", tc.path, nil, "Host", tc.host)
		if resp.StatusCode != 200 {
			t.Fatalf("%s%s: %d", tc.host, tc.path, resp.StatusCode)
		}
		if got := decodeSeen(t, body).Backend; got != tc.want.addr {
			t.Errorf("%s%s went to %s, want %s", tc.host, tc.path, got, tc.want.addr)
		}
	}
}

func TestRejectedRequestsNeverReachBackend(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	for _, tc := range []struct {
		name, req string
		want      string
	}{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"},
		{"TE and CL", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length : 4\r\n\r\n0\r\n\r\n", "400"},
		{"duplicate CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "400"},
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", "400"},
		{"unknown transfer coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", "400"},
		{"no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", "400"},
		{"no Host, absolute form", "GET http://x/y HTTP/1.1\r\n\r\n", "400"},
		{"no Host, a path that looks like an authority", "GET //x/y HTTP/1.1\r\n\r\n", "400"},
		{"absolute form with no host", "GET http:///y HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"HTTP/1.0, absolute form with no host", "GET x:// HTTP/1.0\r\n\r\n", "400"},
		{"CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "405"},
		{"TRACE", "TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", "405"},
		{"oversized head", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 20<<10) + "\r\n\r\n", "431"},
		{"NUL in header", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", "400"},
		// fasthttp reads "identity" as no body, so the body would be
		// taken for a second request.
		{"TE identity", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", "400"},
		{"folded TE", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", "400"},
		{"space in a field name", "GET / HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", "400"},
		{"space in Content-Length's name", "POST / HTTP/1.1\r\nHost: x\r\nContent Length: 5\r\n\r\nhello", "400"},
		{"Host with userinfo", "GET / HTTP/1.1\r\nHost: evil@x\r\n\r\n", "400"},
		{"bare LF ends the head", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		{"HTTP/2.0 on HTTP/1", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", "505"},
		{"HTTP/0.9 version", "GET / HTTP/0.9\r\nHost: x\r\n\r\n", "505"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.hits.Load()
			resp := hs.raw(tc.req)
			if !strings.HasPrefix(resp, "HTTP/1.1 "+tc.want) {
				t.Errorf("response %q, want %s", firstLine(resp), tc.want)
			}
			if e.hits.Load() != before {
				t.Errorf("the request reached the backend")
			}
		})
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\r\n")
	return l
}

func TestRedirectAndHSTS(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, site: func(l *Site) {
		l.Redirect = &config.Redirect{Port: "8443"}
	}})
	resp, _ := hs.do("GET", "/a/b?c=d", nil, "Host", "www.example.com:8080")
	if resp.StatusCode != 308 || resp.Header.Get("Location") != "https://www.example.com:8443/a/b?c=d" {
		t.Fatalf("redirect %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if e.hits.Load() != 0 {
		t.Fatal("redirect listener forwarded the request")
	}
	if d, err := http.ParseTime(resp.Header.Get("Date")); err != nil || time.Since(d) > time.Minute {
		t.Fatalf("redirect's Date %q: %v", resp.Header.Get("Date"), err)
	}

	hs = newHarness(t, harnessOpts{backends: []string{e.addr}, tls: true, site: func(l *Site) {
		l.HSTS = []byte("max-age=31536000")
	}})
	resp, _ = hs.do("GET", "/", nil)
	if resp.Header.Get("Strict-Transport-Security") != "max-age=31536000" {
		t.Fatalf("HSTS header %q", resp.Header.Get("Strict-Transport-Security"))
	}
}

// TestRedirectTargetAndChecks: a redirect listener builds Location from
// the request's host and path whatever the target's form, and refuses
// what every other listener refuses rather than redirect it.
func TestRedirectTargetAndChecks(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, site: func(l *Site) {
		l.Redirect = &config.Redirect{Port: "8443"}
	}})
	for _, tc := range []struct {
		name, req, status, location string
	}{
		{"origin form", "GET /a/b?c=d HTTP/1.1\r\nHost: www.example.com\r\n\r\n", "308", "https://www.example.com:8443/a/b?c=d"},
		{"absolute form", "GET http://a.example/b?c=d HTTP/1.1\r\nHost: a.example\r\n\r\n", "308", "https://a.example:8443/b?c=d"},
		{"absolute form names the host", "GET http://a.example:8080/b HTTP/1.1\r\nHost: other.example\r\n\r\n", "308", "https://a.example:8443/b"},
		{"absolute form without a path", "GET http://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n", "308", "https://a.example:8443/"},
		{"path kept as written", "GET /x/../%2e%2e//y HTTP/1.1\r\nHost: a.example\r\n\r\n", "308", "https://a.example:8443/x/../%2e%2e//y"},
		{"length and chunked", "POST /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400", ""},
		{"bad Host", "GET /p HTTP/1.1\r\nHost: a.example/evil\r\n\r\n", "400", ""},
		{"bad authority", "GET http://a.example\"x/p HTTP/1.1\r\nHost: a.example\r\n\r\n", "400", ""},
		{"space in a field name", "GET /p HTTP/1.1\r\nHost: a.example\r\nX A: b\r\n\r\n", "400", ""},
		{"TRACE", "TRACE /p HTTP/1.1\r\nHost: a.example\r\n\r\n", "405", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := hs.raw(strings.Replace(tc.req, "\r\n", "\r\nConnection: close\r\n", 1))
			if got := firstLine(resp); !strings.HasPrefix(got, "HTTP/1.1 "+tc.status+" ") {
				t.Fatalf("answer %q, want %s", got, tc.status)
			}
			loc := ""
			for _, line := range strings.Split(resp, "\r\n") {
				if v, ok := strings.CutPrefix(line, "Location: "); ok {
					loc = v
				}
			}
			if loc != tc.location {
				t.Errorf("Location %q, want %q", loc, tc.location)
			}
		})
	}
	if e.hits.Load() != 0 {
		t.Fatal("redirect listener forwarded a request")
	}
}

func TestConcurrentRequestsSpreadEvenly(t *testing.T) {
	backends := []*echoBackend{startEcho(t), startEcho(t), startEcho(t)}
	hs := newHarness(t, harnessOpts{backends: []string{backends[0].addr, backends[1].addr, backends[2].addr}})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 75 {
				req, _ := http.NewRequest("GET", "http://lb.test/", nil)
				resp, err := hs.client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Errorf("status %d", resp.StatusCode)
				}
			}
		}()
	}
	wg.Wait()
	for _, b := range backends {
		if n := b.hits.Load(); n != 200 {
			t.Errorf("backend %s got %d of 600 requests, want 200", b.addr, n)
		}
	}
	for _, b := range hs.up.Pool.Backends {
		if b.Active() != 0 {
			t.Errorf("%s still counts %d active", b.Address, b.Active())
		}
	}
}

// sequencedBackend answers its n-th request (over all connections) with
// answers[n]; the last one repeats.
func sequencedBackend(t *testing.T, answers ...string) *rawBackend {
	var n atomic.Int64
	return startRaw(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if _, err := readRequest(br); err != nil {
				return
			}
			i := int(n.Add(1)) - 1
			io.WriteString(c, answers[min(i, len(answers)-1)])
		}
	})
}

func TestLeftoverBytesNeverReachAnotherClient(t *testing.T) {
	smuggled := "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nA's-private!!"
	for _, tc := range []struct {
		name, method, first string
		wantFirst           string
	}{
		{"body on a HEAD response", "HEAD", fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled), "200"},
		{"more bytes than Content-Length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + smuggled, "200"},
		{"status below 100", "GET", fmt.Sprintf("HTTP/1.1 099 Weird\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled), "502"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rb := sequencedBackend(t, tc.first, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
			hs := newHarness(t, harnessOpts{backends: []string{rb.addr}})
			r1 := hs.raw(tc.method + " /first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			if !strings.HasPrefix(r1, "HTTP/1.1 "+tc.wantFirst) {
				t.Fatalf("first answer %q", firstLine(r1))
			}
			for range 3 {
				r2 := hs.raw("GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
				if strings.Contains(r2, "A's-private") {
					t.Fatalf("another client got the leftover: %q", r2)
				}
			}
		})
	}
}

func TestUnsolicitedBytesOnIdleConnection(t *testing.T) {
	// The backend answers, then (later, while the connection idles in the
	// pool) writes a second response nobody asked for.
	smuggled := "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nA's-private!!"
	rb := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		for n := 0; ; n++ {
			if _, err := readRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
			if n == 0 {
				time.Sleep(20 * time.Millisecond)
				io.WriteString(c, smuggled)
			}
		}
	})
	hs := newHarness(t, harnessOpts{backends: []string{rb.addr}})
	for range 3 {
		resp, body := hs.do("GET", "/", nil)
		time.Sleep(50 * time.Millisecond)
		if resp.StatusCode != 200 || body != "real" {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	}
}

func TestBackendRefusingUploadEarly(t *testing.T) {
	// Like NGINX past client_max_body_size, minus the lingering close: the
	// backend answers 413 from the head and closes.
	rb := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err == nil {
			io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
		}
	})
	other := startEcho(t)
	hc := config.Health{Check: "none", Interval: config.Duration{Duration: time.Hour}, PassiveFailures: 2}
	hs := newHarness(t, harnessOpts{backends: []string{rb.addr}, health: &hc, maxBody: 8 << 20})
	for range 4 {
		resp, body := hs.do("PUT", "/upload", bytes.NewReader(make([]byte, 4<<20)))
		if resp.StatusCode != 413 && resp.StatusCode != 502 {
			t.Fatalf("status %d %q", resp.StatusCode, body)
		}
	}
	if !hs.up.Pool.Backends[0].Up() {
		t.Fatal("a backend refusing uploads was marked down by passive checks")
	}
	_ = other
}

func TestHTTP10ClientGetsCloseDelimitedBody(t *testing.T) {
	chunk := strings.Repeat("x", 10000)
	e := startEcho(t, func(w http.ResponseWriter, r *http.Request) bool {
		f := w.(http.Flusher)
		for range 10 {
			io.WriteString(w, chunk)
			f.Flush()
		}
		return true
	})
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	resp := hs.raw("GET / HTTP/1.0\r\n\r\n")
	head, body, _ := strings.Cut(resp, "\r\n\r\n")
	if strings.Contains(strings.ToLower(head), "transfer-encoding") || !strings.Contains(head, "Connection: close") {
		t.Fatalf("HTTP/1.0 head: %q", head)
	}
	if body != strings.Repeat(chunk, 10) {
		t.Fatalf("body of %d bytes, want %d", len(body), 10*len(chunk))
	}
	// The stream, and with it the backend's slot, closes once the
	// connection it was copied to has: just after the client saw the end.
	b := hs.up.Pool.Backends[0]
	for deadline := time.Now().Add(5 * time.Second); b.Active() != 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if a := b.Active(); a != 0 {
		t.Fatalf("backend still counts %d active", a)
	}
	// HTTP/1.1 clients still get chunked.
	resp2 := hs.raw("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if !strings.Contains(resp2, "Transfer-Encoding: chunked") {
		t.Fatalf("HTTP/1.1 head: %q", firstLine(resp2))
	}
}

func TestSecondConnectionHeaderIsHonoured(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	hs.raw("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: X-Secret\r\nX-Secret: 1\r\nConnection: close\r\n\r\n")
	if s := e.lastSeen(); s == nil || s.Header.Get("X-Secret") != "" {
		t.Fatalf("header named in a second Connection header reached the backend: %+v", s)
	}
}

// A streamed body that breaks off while lb waits for the backend is the
// backend's failure, whatever the client does: only a break while lb was
// paced by the client is spared (see TestSlowClientsDoNotMarkBackendDown
// in e2e).
func TestBodyBrokenByBackendIsAPassiveFailure(t *testing.T) {
	rb := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := readRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
		c.Write(make([]byte, 100<<10))
		time.Sleep(300 * time.Millisecond) // lb waits for the rest
		c.(*net.TCPConn).SetLinger(0)
	})
	hc := config.Health{Check: "none", Interval: config.Duration{Duration: time.Hour}, PassiveFailures: 1}
	hs := newHarness(t, harnessOpts{backends: []string{rb.addr}, health: &hc})
	resp, err := hs.client.Get("http://lb.test/")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("read %d bytes of a body the backend broke off, without error", n)
	}
	b := hs.up.Pool.Backends[0]
	deadline := time.Now().Add(5 * time.Second)
	for b.Up() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if b.Up() {
		t.Fatalf("backend still up after breaking a body off while lb waited for it (last error %q)", b.LastError())
	}
}
