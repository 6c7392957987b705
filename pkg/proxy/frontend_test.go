package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/testutil"
	"github.com/offloadlb/lb/pkg/accesslog"
	"github.com/offloadlb/lb/pkg/balancer"
)

func TestClientCertificateHeadersCannotBeForged(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, tls: true})
	_, body := hs.do("GET", "/", nil,
		"X-Client-Verify", "SUCCESS",
		"X-Client-Cert-Subject", "CN=admin",
		"x-client-anything", "1",
		"X_Client_Verify", "SUCCESS", // HTTP_X_CLIENT_VERIFY to a CGI-style backend
		"x-client_cert_subject", "CN=admin",
		"X-Clientele", "kept") // not X-Client-*
	s := decodeSeen(t, body)
	for k := range s.Header {
		if strings.HasPrefix(strings.ReplaceAll(strings.ToLower(k), "_", "-"), "x-client-") {
			t.Errorf("client's %s: %q reached the backend", k, s.Header.Values(k))
		}
	}
	if s.Header.Get("X-Clientele") != "kept" {
		t.Error("a header merely starting with X-Client was removed")
	}
}

// upgradeBackend answers an Upgrade request with 101 and then echoes
// bytes upper-cased, sending a greeting right behind its head (so that it
// arrives in the same read as the head).
func upgradeBackend(t *testing.T, seenReq chan<- *http.Request) *rawBackend {
	return startRaw(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		seenReq <- req
		if req.Header.Get("Upgrade") == "" {
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno")
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\nX-Backend: raw\r\n\r\nhello\n")
		buf := make([]byte, 1024)
		for {
			n, err := br.Read(buf)
			if n > 0 {
				c.Write(bytes.ToUpper(buf[:n]))
			}
			if err != nil {
				return
			}
		}
	})
}

func TestUpgradeTunnel(t *testing.T) {
	seenReq := make(chan *http.Request, 4)
	rb := upgradeBackend(t, seenReq)
	hs := newHarness(t, harnessOpts{backends: []string{rb.addr}, algorithm: balancer.LeastConn})
	c, err := hs.ln.DialWithLocalAddr(clientAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: lb.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\nX-Client-Verify: SUCCESS\r\n\r\n")
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "echo" || !strings.EqualFold(resp.Header.Get("Connection"), "upgrade") || resp.Header.Get("X-Backend") != "raw" {
		t.Fatalf("answer %d %v", resp.StatusCode, resp.Header)
	}
	req := <-seenReq
	if req.Header.Get("Upgrade") != "echo" || !strings.EqualFold(req.Header.Get("Connection"), "upgrade") {
		t.Errorf("backend got Upgrade %q Connection %q", req.Header.Get("Upgrade"), req.Header.Get("Connection"))
	}
	if req.Header.Get("X-Forwarded-For") != "192.0.2.7" || req.Header.Get("X-Client-Verify") != "" {
		t.Errorf("backend got headers %v", req.Header)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "hello\n" {
		t.Fatalf("greeting %q %v", line, err)
	}
	if n := hs.up.Pool.Backends[0].Active(); n != 1 {
		t.Errorf("open tunnel counts %d active on its backend, want 1", n)
	}
	for _, msg := range []string{"ping\n", strings.Repeat("x", 100<<10) + "\n"} {
		io.WriteString(c, msg)
		got, err := br.ReadString('\n')
		if err != nil || got != strings.ToUpper(msg) {
			t.Fatalf("echo of %d bytes: got %d bytes, %v", len(msg), len(got), err)
		}
	}
	c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for hs.up.Pool.Backends[0].Active() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("backend still counted busy after the tunnel closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUpgradeNotPassed(t *testing.T) {
	seenReq := make(chan *http.Request, 4)
	rb := upgradeBackend(t, seenReq)
	hs := newHarness(t, harnessOpts{backends: []string{rb.addr}})
	for name, head := range map[string]string{
		"h2c":       "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
		"not named": "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\n\r\n",
		"POST":      "POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.0":  "GET / HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
	} {
		out := hs.raw(head)
		if !strings.HasPrefix(out, "HTTP/1.1 400") {
			t.Errorf("%s: answer %q, want the backend's 400 to a plain request", name, firstLine(out))
		}
		req := <-seenReq
		if req.Header.Get("Upgrade") != "" || req.Header.Get("Http2-Settings") != "" {
			t.Errorf("%s: backend got Upgrade %q", name, req.Header.Get("Upgrade"))
		}
	}
}

func TestHTTP2Front(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB: streamed
	e := startEcho(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/big" {
			w.Header().Set("X-Backend-Proto", r.Proto)
			io.WriteString(w, big)
			return true
		}
		return false
	})
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, tls: true})
	client, url := h2Front(t, hs, 2<<20)
	do := func(t *testing.T, method, path string, body io.Reader, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, url+path, body)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Add(hdr[i], hdr[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("client spoke %s", resp.Proto)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b)
	}

	t.Run("headers", func(t *testing.T) {
		resp, body := do(t, "GET", "/a/b?c=1", nil, "Cookie", "a=1", "Cookie", "b=2", "X-Client-Verify", "SUCCESS", "Te", "trailers", "X-Forwarded-For", "10.0.0.1")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		s := decodeSeen(t, body)
		if s.Proto != "HTTP/1.1" || s.Method != "GET" || s.URI != "/a/b?c=1" || !strings.HasPrefix(s.Host, "127.0.0.1:") {
			t.Errorf("backend saw %s %s %s host %s", s.Method, s.URI, s.Proto, s.Host)
		}
		if got := s.Header.Values("Cookie"); len(got) != 1 || got[0] != "a=1; b=2" {
			t.Errorf("Cookie %q, want one field", got)
		}
		if s.Header.Get("X-Client-Verify") != "" || s.Header.Get("Te") != "" {
			t.Errorf("headers %v reached the backend", s.Header)
		}
		if s.Header.Get("X-Forwarded-For") != "10.0.0.1, 127.0.0.1" || s.Header.Get("X-Forwarded-Proto") != "https" {
			t.Errorf("forwarded headers %v", s.Header)
		}
	})

	t.Run("upload", func(t *testing.T) {
		up := bytes.Repeat([]byte("u"), 1<<20)
		_, body := do(t, "POST", "/up", bytes.NewReader(up))
		s := decodeSeen(t, body)
		if len(s.Body) != len(up) || s.Header.Get("Content-Length") != "1048576" || s.Chunked {
			t.Errorf("backend got %d bytes, Content-Length %q, chunked %v", len(s.Body), s.Header.Get("Content-Length"), s.Chunked)
		}
		// An upload of unknown length (no content-length on the h2
		// request) longer than body_buffer streams: chunked.
		pr, pw := io.Pipe()
		go func() {
			pw.Write(up[:300<<10])
			pw.Close()
		}()
		_, body = do(t, "PUT", "/up", pr)
		s = decodeSeen(t, body)
		if len(s.Body) != 300<<10 || !s.Chunked {
			t.Errorf("streamed upload: backend got %d bytes, chunked %v", len(s.Body), s.Chunked)
		}
		_, body = do(t, "POST", "/empty", nil)
		if s := decodeSeen(t, body); s.Header.Get("Content-Length") != "0" {
			t.Errorf("empty POST: Content-Length %q", s.Header.Get("Content-Length"))
		}
	})

	t.Run("too large", func(t *testing.T) {
		before := e.hits.Load()
		resp, _ := do(t, "POST", "/up", bytes.NewReader(make([]byte, 3<<20)))
		if resp.StatusCode != 413 {
			t.Errorf("3 MiB body: status %d, want 413", resp.StatusCode)
		}
		long := strings.Repeat("v", 20<<10)
		resp, _ = do(t, "GET", "/", nil, "X-Long", long)
		if resp.StatusCode != 431 {
			t.Errorf("20 KiB header: status %d, want 431", resp.StatusCode)
		}
		if e.hits.Load() != before {
			t.Error("a refused request reached the backend")
		}
	})

	t.Run("streamed response", func(t *testing.T) {
		resp, body := do(t, "GET", "/big", nil)
		if body != big || resp.Header.Get("X-Backend-Proto") != "HTTP/1.1" {
			t.Errorf("got %d bytes (want %d), backend proto %q", len(body), len(big), resp.Header.Get("X-Backend-Proto"))
		}
		resp, body = do(t, "HEAD", "/big", nil)
		if resp.StatusCode != 200 || body != "" {
			t.Errorf("HEAD: %d, %d bytes", resp.StatusCode, len(body))
		}
	})

	t.Run("concurrent streams", func(t *testing.T) {
		errs := make(chan string, 50)
		for i := range 50 {
			go func() {
				req, _ := http.NewRequest("GET", url+"/n/"+strings.Repeat("i", i), nil)
				resp, err := client.Do(req)
				if err != nil {
					errs <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.Contains(string(b), `"/n/`+strings.Repeat("i", i)+`"`) {
					errs <- "wrong answer " + string(b)
					return
				}
				errs <- ""
			}()
		}
		for range 50 {
			if e := <-errs; e != "" {
				t.Error(e)
			}
		}
	})

	t.Run("CONNECT refused", func(t *testing.T) {
		before := e.hits.Load()
		req, _ := http.NewRequest("CONNECT", url, nil)
		req.Host = "example.com:443"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 405 || e.hits.Load() != before {
			t.Errorf("CONNECT: %d", resp.StatusCode)
		}
	})
}

// accessLogTo is an access log in lb's text format written to w; flush
// writes what is waiting (and ends it).
func accessLogTo(w io.Writer) (log *accesslog.Log, flush func()) {
	aw := accesslog.NewWriter(w, nil)
	return accesslog.New(accesslog.Text, aw), aw.Close
}

// TestHTTP2AccessLogProto: the access log says which protocol the client
// spoke.
func TestHTTP2AccessLogProto(t *testing.T) {
	e := startEcho(t)
	var buf testutil.SyncBuffer
	access, flush := accessLogTo(&buf)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, site: func(l *Site) { l.Access = access }})
	hs.do("GET", "/one", nil)
	client, url := h2Front(t, hs, 1<<20)
	resp, err := client.Get(url + "/two")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	flush()
	log := buf.String()
	if !strings.Contains(log, "proto=HTTP/1.1 method=GET host=lb.test uri=/one") || !strings.Contains(log, "proto=HTTP/2.0 method=GET") || !strings.Contains(log, "tls=1.3") {
		t.Errorf("access log:\n%s", log)
	}
}

// TestRejectedRequestDuration: a request refused while its head was read
// is logged with a real duration, not time since the zero time.
func TestRejectedRequestDuration(t *testing.T) {
	e := startEcho(t)
	var buf testutil.SyncBuffer
	access, flush := accessLogTo(&buf)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, site: func(l *Site) { l.Access = access }})
	for _, req := range []string{
		"GARBAGE\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + strings.Repeat("v", 20<<10) + "\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	} {
		hs.raw(req)
	}
	flush()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) < 4 {
		t.Fatalf("access log:\n%s", buf.String())
	}
	if !strings.Contains(lines[0], `method="" host="" uri="" status=400`) {
		t.Errorf("a head that did not parse is logged as %q", lines[0])
	}
	re := regexp.MustCompile(`duration=(\S+)`)
	for _, line := range lines {
		m := re.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("no duration in %q", line)
		}
		d, err := time.ParseDuration(strings.Trim(m[1], `"`))
		if err != nil || d < 0 || d > 5*time.Second {
			t.Errorf("duration %s in %q", m[1], line)
		}
	}
}
