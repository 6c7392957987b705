package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Request bodies that stream (issue 16): large uploads go to the backend
// as they arrive, with lb's memory bounded whatever their size; clients
// that go away cut their backend request; retries stay safe.

// patternReader is n bytes of a cheap, non-repeating-per-block pattern,
// hashed as they are read.
type patternReader struct {
	left  int64
	off   int64
	sum   hashWriter
	onEOF func()
}

type hashWriter interface{ Write([]byte) (int, error) }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		if r.onEOF != nil {
			r.onEOF()
			r.onEOF = nil
		}
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	for i := range p {
		x := r.off + int64(i)
		p[i] = byte(x ^ x>>8 ^ x>>16)
	}
	r.off += int64(len(p))
	r.left -= int64(len(p))
	if r.sum != nil {
		r.sum.Write(p)
	}
	return len(p), nil
}

// uploadBackend hashes every request body it gets and answers with its
// length and sha256; it records when the first byte of each body came.
type uploadBackend struct {
	addr      string
	firstByte atomic.Int64 // unix nanoseconds of the latest body's first byte
	bodies    atomic.Int64 // requests seen
	readErrs  atomic.Int64 // bodies whose read failed (the request was cut)
	cutAt     atomic.Int64 // unix nanoseconds of the latest failed read
	// readRate, when set, is how many bytes per 10 ms the backend reads.
	readRate int
	// onBody, when set, handles the request instead.
	onBody func(w http.ResponseWriter, r *http.Request)
}

func startUploadBackend(t *testing.T, ub *uploadBackend) *uploadBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ub.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		ub.bodies.Add(1)
		if ub.onBody != nil {
			ub.onBody(w, r)
			return
		}
		h := sha256.New()
		buf := make([]byte, 32<<10)
		if ub.readRate > 0 {
			buf = buf[:ub.readRate]
		}
		var n int64
		for first := true; ; first = false {
			k, err := r.Body.Read(buf)
			if k > 0 && first {
				ub.firstByte.Store(time.Now().UnixNano())
			}
			h.Write(buf[:k])
			n += int64(k)
			if err == io.EOF {
				break
			}
			if err != nil {
				ub.readErrs.Add(1)
				ub.cutAt.Store(time.Now().UnixNano())
				return
			}
			if ub.readRate > 0 {
				time.Sleep(10 * time.Millisecond)
			}
		}
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ub
}

func bodyConfig(extra string, backends ...string) string {
	var b strings.Builder
	for _, a := range backends {
		fmt.Fprintf(&b, "  [[pool.backend]]\n  address = %q\n", a)
	}
	return `
[global]
access_log = "stdout"
admin = "127.0.0.1:0"
watch = false

[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "web"
max_request_body = 0
` + extra + `
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"

[[pool]]
name = "web"
retries = 1
connect_timeout = "500ms"
response_timeout = "5s"
  [pool.health]
  check = "none"
` + b.String()
}

// uploadClient is an HTTPS client for uploads: HTTP/1.1, or HTTP/2 when
// h2 is set.
func uploadClient(certs *testCerts, addr string, h2 bool) *http.Client {
	d := &net.Dialer{Timeout: 2 * time.Second}
	tc := &tls.Config{RootCAs: certs.pool(), ServerName: "localhost"}
	tr := &http.Transport{
		TLSClientConfig: tc,
		DialContext:     func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) },
	}
	if h2 {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetHTTP2(true)
	}
	return &http.Client{Timeout: 5 * time.Minute, Transport: tr}
}

// TestUploadStreams sends a large upload through lb over HTTP/1.1 and
// HTTP/2: it arrives whole (sha256), the backend sees its first bytes
// before the client has sent its last, and lb's peak RSS stays small.
// The size is 1 GiB; under -race (lb built with the race detector, slow
// and memory-hungry) 64 MiB, without the memory bound, which .ci/run's
// run without -race checks.
func TestUploadStreams(t *testing.T) {
	size := int64(1 << 30)
	if raceEnabled {
		size = 64 << 20
	}
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		t.Run(proto, func(t *testing.T) {
			dir := t.TempDir()
			certs := writeCerts(t, dir)
			ub := startUploadBackend(t, &uploadBackend{})
			p := startLB(t, dir, bodyConfig("", ub.addr))
			c := uploadClient(certs, p.addrs["https"], proto == "HTTP/2")

			want := sha256.New()
			var lastSent atomic.Int64
			body := &patternReader{left: size, sum: want, onEOF: func() { lastSent.Store(time.Now().UnixNano()) }}
			req, _ := http.NewRequest("PUT", "https://localhost/upload", body)
			req.ContentLength = size
			start := time.Now()
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			elapsed := time.Since(start)
			if want := map[string]string{"HTTP/1.1": "HTTP/1.1", "HTTP/2": "HTTP/2.0"}[proto]; resp.Proto != want {
				t.Fatalf("the client spoke %s", resp.Proto)
			}
			wantLine := fmt.Sprintf("%d %s", size, hex.EncodeToString(want.Sum(nil)))
			if resp.StatusCode != 200 || string(got) != wantLine {
				t.Fatalf("status %d, backend got %q, want %q\n%s", resp.StatusCode, got, wantLine, tail(p.stderr.String(), 20))
			}
			if first, last := ub.firstByte.Load(), lastSent.Load(); first == 0 || last == 0 || first >= last {
				t.Errorf("the backend's first byte came %v after the client's last", time.Duration(first-last))
			} else {
				t.Logf("the backend had the first bytes %v before the client sent the last", time.Duration(last-first).Round(time.Millisecond))
			}
			rss := peakRSS(t, p.cmd.Process.Pid)
			t.Logf("%s upload of %d MiB in %v (%.0f MB/s); lb's peak RSS %.1f MiB", proto, size>>20, elapsed.Round(time.Millisecond), float64(size)/elapsed.Seconds()/1e6, rss)
			if !raceEnabled && rss > 64 {
				t.Errorf("lb's peak RSS %.1f MiB, want under 64 MiB", rss)
			}
		})
	}
}

// TestUploadSmallRetriedLargeNot: a body within body_buffer is sent
// again after its backend failed (connect refused, or closed mid-body for
// an idempotent PUT); a longer one, which streamed, goes to another
// backend only after a connect failure, and otherwise the client gets
// 502 and no second backend sees it.
func TestUploadSmallRetriedLargeNot(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	// A backend that reads 100 KiB of a body, then drops the connection.
	var dropped atomic.Int64
	dropper := startUploadBackend(t, &uploadBackend{onBody: func(w http.ResponseWriter, r *http.Request) {
		io.CopyN(io.Discard, r.Body, 100<<10)
		dropped.Add(1)
		if hj, ok := w.(http.Hijacker); ok {
			c, _, _ := hj.Hijack()
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}})
	good := startUploadBackend(t, &uploadBackend{})
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close() // connect refused

	send := func(c *http.Client, method string, n int64) (int, string) {
		req, _ := http.NewRequest(method, "https://localhost/up", &patternReader{left: n})
		req.ContentLength = n
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}

	t.Run("connect refused", func(t *testing.T) {
		// Round robin over a refused address and a live one: every
		// request meets the refusal or not, and all arrive.
		p := startLB(t, dir, bodyConfig("", deadAddr, good.addr))
		c := uploadClient(certs, p.addrs["https"], false)
		for _, n := range []int64{1000, 10 << 20, 1000, 10 << 20} {
			if code, body := send(c, "POST", n); code != 200 || !strings.HasPrefix(body, fmt.Sprint(n)+" ") {
				t.Errorf("POST of %d bytes: %d %q", n, code, body)
			}
		}
	})
	t.Run("dropped mid-body", func(t *testing.T) {
		dir := t.TempDir()
		certs := writeCerts(t, dir)
		p := startLB(t, dir, bodyConfig("", dropper.addr, good.addr))
		c := uploadClient(certs, p.addrs["https"], false)
		// Within body_buffer (64 KiB): sent whole, and an idempotent PUT
		// is sent again when the backend breaks.
		before := good.bodies.Load()
		for range 2 {
			if code, body := send(c, "PUT", 32<<10); code != 200 || !strings.HasPrefix(body, "32768 ") {
				t.Errorf("small PUT: %d %q", code, body)
			}
		}
		if got := good.bodies.Load() - before; got != 2 {
			t.Errorf("the good backend saw %d small PUTs, want both", got)
		}
		// Streamed: once bytes went to a backend that broke, the client
		// gets 502 and no other backend sees the request.
		before, drops := good.bodies.Load(), dropped.Load()
		codes := map[int]int{}
		for range 2 {
			code, _ := send(c, "PUT", 8<<20)
			codes[code]++
		}
		if codes[502] != 1 || codes[200] != 1 {
			t.Errorf("two large PUTs, one to each backend: statuses %v, want one 502 and one 200", codes)
		}
		if g, d := good.bodies.Load()-before, dropped.Load()-drops; g != 1 || d != 1 {
			t.Errorf("the good backend saw %d large PUTs and the breaking one %d, want 1 and 1 (no retry)", g, d)
		}
	})
}

// TestUploadCancel: a client that goes away mid-upload cuts the backend
// request within a second, over HTTP/1.1 and HTTP/2.
func TestUploadCancel(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		t.Run(proto, func(t *testing.T) {
			dir := t.TempDir()
			certs := writeCerts(t, dir)
			ub := startUploadBackend(t, &uploadBackend{})
			p := startLB(t, dir, bodyConfig("", ub.addr))
			c := uploadClient(certs, p.addrs["https"], proto == "HTTP/2")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pr, pw := io.Pipe()
			req, _ := http.NewRequestWithContext(ctx, "PUT", "https://localhost/up", pr)
			req.ContentLength = 100 << 20
			done := make(chan struct{})
			go func() {
				defer close(done)
				resp, err := c.Do(req)
				if err == nil {
					resp.Body.Close()
				}
			}()
			chunk := bytes.Repeat([]byte("x"), 256<<10)
			for range 4 {
				if _, err := pw.Write(chunk); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for ub.firstByte.Load() == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if ub.firstByte.Load() == 0 {
				t.Fatal("the backend saw no byte of the upload")
			}
			gone := time.Now()
			cancel()
			pw.CloseWithError(context.Canceled)
			<-done
			for ub.readErrs.Load() == 0 && time.Since(gone) < 3*time.Second {
				time.Sleep(10 * time.Millisecond)
			}
			if ub.readErrs.Load() == 0 {
				t.Fatalf("the backend's request was not cut within 3 s of the client going away\n%s", tail(p.stdout.String(), 5))
			}
			took := time.Duration(ub.cutAt.Load() - gone.UnixNano())
			t.Logf("backend request cut %v after the client went away", took.Round(time.Millisecond))
			if took > time.Second {
				t.Errorf("cut after %v, want within 1 s", took)
			}
			if !waitFor(3*time.Second, func() bool { return strings.Contains(p.stdout.String(), "status=499") }) {
				t.Errorf("no 499 in the access log:\n%s", tail(p.stdout.String(), 5))
			}
		})
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClientGoneCutsBackend: a client that goes away while its request
// waits for a slow backend cuts the backend request within a second,
// over HTTP/1.1 (seen on the socket) and HTTP/2 (a reset stream); with
// on_client_abort = "finish" the backend is left to answer.
func TestClientGoneCutsBackend(t *testing.T) {
	for _, tc := range []struct {
		proto  string
		finish bool
	}{{"HTTP/1.1", false}, {"HTTP/2", false}, {"HTTP/1.1", true}} {
		name := tc.proto
		if tc.finish {
			name += " finish"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			certs := writeCerts(t, dir)
			var cutAt, answeredAt atomic.Int64
			ub := startUploadBackend(t, &uploadBackend{onBody: func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
					cutAt.Store(time.Now().UnixNano())
				case <-time.After(4 * time.Second):
					answeredAt.Store(time.Now().UnixNano())
					io.WriteString(w, "late")
				}
			}})
			cfg := bodyConfig("", ub.addr)
			if tc.finish {
				cfg = strings.Replace(cfg, "retries = 1\n", "retries = 1\non_client_abort = \"finish\"\n", 1)
			}
			p := startLB(t, dir, cfg)
			c := uploadClient(certs, p.addrs["https"], tc.proto == "HTTP/2")
			c.Timeout = 500 * time.Millisecond
			start := time.Now()
			if _, err := c.Get("https://localhost/slow"); err == nil {
				t.Fatal("the slow request answered within the client's timeout")
			}
			gone := time.Now()
			c.CloseIdleConnections()
			if tc.finish {
				if !waitFor(6*time.Second, func() bool { return answeredAt.Load() != 0 }) || cutAt.Load() != 0 {
					t.Fatalf("with finish, the backend was cut (%v) or did not answer", cutAt.Load() != 0)
				}
				t.Logf("with finish, the backend answered %v after the request began", time.Duration(answeredAt.Load()-start.UnixNano()).Round(time.Millisecond))
				return
			}
			if !waitFor(3*time.Second, func() bool { return cutAt.Load() != 0 }) {
				t.Fatalf("the backend request was not cut within 3 s of the client going away\n%s", tail(p.stdout.String(), 5))
			}
			took := time.Duration(cutAt.Load() - gone.UnixNano())
			t.Logf("%s: backend request cut %v after the client went away", tc.proto, took.Round(time.Millisecond))
			if took > time.Second {
				t.Errorf("cut after %v, want within 1 s", took)
			}
			if !waitFor(3*time.Second, func() bool { return strings.Contains(p.stdout.String(), "status=499") }) {
				t.Errorf("no 499 in the access log:\n%s", tail(p.stdout.String(), 5))
			}
		})
	}
}

// TestUploadEarlyAnswer: a backend that refuses an upload before reading
// it (401) has its answer reach the client at once, and the client is
// not reset before it could read it; curl's Expect: 100-continue upload
// does not wait a second for a 100.
func TestUploadEarlyAnswer(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	ub := startUploadBackend(t, &uploadBackend{onBody: func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, "no")
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d", n)
	}})
	p := startLB(t, dir, bodyConfig("", ub.addr))
	c := uploadClient(certs, p.addrs["https"], false)

	// 64 MiB that the backend never reads: the answer must come while the
	// client still has most of it to send.
	var sent atomic.Int64
	body := &patternReader{left: 64 << 20}
	req, _ := http.NewRequest("PUT", "https://localhost/refuse", io.TeeReader(body, writerFunc(func(p []byte) (int, error) {
		sent.Add(int64(len(p)))
		return len(p), nil
	})))
	req.ContentLength = 64 << 20
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("the early answer was lost: %v\n%s", err, tail(p.stdout.String(), 3))
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	t.Logf("401 after %v, %d MiB of 64 sent", took.Round(time.Millisecond), sent.Load()>>20)
	if resp.StatusCode != http.StatusUnauthorized || string(b) != "no" {
		t.Errorf("got %d %q, want the backend's 401", resp.StatusCode, b)
	}
	if took > time.Second {
		t.Errorf("the early answer took %v", took)
	}

	curl := needTool(t, "curl") // the Expect: 100-continue half
	file := dir + "/upload.bin"
	if err := writePattern(file, 3<<20); err != nil {
		t.Fatal(err)
	}
	for _, proto := range []string{"--http1.1", "--http2"} {
		start = time.Now()
		out, err := runCmd(t, 20*time.Second, curl, "-sS", proto, "--cacert", certs.dir+"/ca.pem", "--resolve", "localhost:"+portOf(p.addrs["https"])+":127.0.0.1",
			"-H", "Expect: 100-continue", "-T", file, "https://localhost:"+portOf(p.addrs["https"])+"/upload")
		took = time.Since(start)
		if err != nil || strings.TrimSpace(out) != fmt.Sprint(3<<20) {
			t.Fatalf("curl %s upload: %v %q", proto, err, out)
		}
		t.Logf("curl %s: an Expect: 100-continue upload of 3 MiB took %v", proto, took.Round(time.Millisecond))
		if took > 900*time.Millisecond {
			t.Errorf("curl %s upload took %v: it waited for a 100 Continue", proto, took)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

func writePattern(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, &patternReader{left: n}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// TestUploadTrailers: a chunked request's trailer fields reach the
// backend, with a body that streams and one that is sent whole.
func TestUploadTrailers(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	ub := startUploadBackend(t, &uploadBackend{onBody: func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d %s %v", n, r.Trailer.Get("X-Checksum"), r.TransferEncoding)
	}})
	p := startLB(t, dir, bodyConfig("", ub.addr))
	for _, size := range []int{1000, 200 << 10} {
		c, err := tls.Dial("tcp", p.addrs["https"], &tls.Config{RootCAs: certs.pool(), ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		var req bytes.Buffer
		req.WriteString("POST /t HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n")
		for left := size; left > 0; left -= 50 << 10 {
			k := min(left, 50<<10)
			fmt.Fprintf(&req, "%x\r\n%s\r\n", k, bytes.Repeat([]byte("t"), k))
		}
		req.WriteString("0\r\nX-Checksum: abc123\r\n\r\n")
		go c.Write(req.Bytes())
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		c.Close()
		// Streamed or sent whole, a body with trailers goes chunked.
		want := fmt.Sprintf("%d abc123 [chunked]", size)
		if string(b) != want {
			t.Errorf("%d-byte chunked body: the backend saw %q, want %q", size, b, want)
		}
	}
	// HTTP/2: trailers in a HEADERS frame after the body.
	c := uploadClient(certs, p.addrs["https"], true)
	for _, size := range []int64{1000, 200 << 10} {
		req, _ := http.NewRequest("POST", "https://localhost/t", &patternReader{left: size})
		req.ContentLength = -1
		req.Trailer = http.Header{"X-Checksum": {"abc123"}, "X-Client-Verify": {"SUCCESS"}}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("%d abc123 [chunked]", size); string(b) != want {
			t.Errorf("HTTP/2, %d-byte body: the backend saw %q, want %q", size, b, want)
		}
	}
}

// TestUploadStalls: a backend that stops reading mid-upload is cut after
// response_timeout (504 to the client, which is not reset before it can
// read it); a client that stops sending mid-upload is cut after
// read_timeout (408 logged, the backend's read fails); clients trickling
// bodies hold backend slots but leave other clients served.
func TestUploadStalls(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	ub := startUploadBackend(t, &uploadBackend{onBody: func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stop" {
			io.CopyN(io.Discard, r.Body, 1<<20)
			<-r.Context().Done() // reads no more
			return
		}
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
		}
		fmt.Fprintf(w, "%d", n)
	}})
	cfg := strings.Replace(bodyConfig(`read_timeout = "2s"`, ub.addr), `response_timeout = "5s"`, `response_timeout = "2s"`, 1)
	p := startLB(t, dir, cfg)
	addr := p.addrs["https"]

	t.Run("backend stops reading", func(t *testing.T) {
		c := uploadClient(certs, addr, false)
		req, _ := http.NewRequest("PUT", "https://localhost/stop", &patternReader{left: 256 << 20})
		req.ContentLength = 256 << 20
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		resp.Body.Close()
		took := time.Since(start)
		t.Logf("%d after %v", resp.StatusCode, took.Round(time.Millisecond))
		if resp.StatusCode != http.StatusGatewayTimeout || took < 2*time.Second || took > 5*time.Second {
			t.Errorf("got %d after %v, want 504 after response_timeout (2 s)", resp.StatusCode, took)
		}
	})

	t.Run("client stops sending", func(t *testing.T) {
		before := ub.bodies.Load()
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: certs.pool(), ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "PUT /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n", 10<<20)
		c.Write(bytes.Repeat([]byte("s"), 200<<10))
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(6 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		took := time.Since(start)
		code := 0
		if err == nil {
			code = resp.StatusCode
		}
		t.Logf("after %v: %d %v", took.Round(time.Millisecond), code, err)
		if ub.bodies.Load() == before {
			t.Fatal("the upload never reached the backend")
		}
		if took < 2*time.Second || took > 4*time.Second {
			t.Errorf("cut after %v, want after read_timeout (2 s)", took)
		}
		if !waitFor(2*time.Second, func() bool { return strings.Contains(p.stdout.String(), "uri=/up status=408") }) {
			t.Errorf("no 408 in the access log:\n%s", tail(p.stdout.String(), 3))
		}
	})

	t.Run("tricklers beside normal clients", func(t *testing.T) {
		const tricklers = 50
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for range tricklers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: certs.pool(), ServerName: "localhost"})
				if err != nil {
					return
				}
				defer c.Close()
				fmt.Fprintf(c, "PUT /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n", 1<<20)
				c.Write(bytes.Repeat([]byte("t"), 70<<10)) // past body_buffer: it streams
				tick := time.NewTicker(500 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
						if _, err := c.Write([]byte("t")); err != nil {
							return
						}
					}
				}
			}()
		}
		time.Sleep(time.Second)
		c := uploadClient(certs, addr, false)
		var worst time.Duration
		ok := 0
		for i := range 40 {
			start := time.Now()
			req, _ := http.NewRequest("POST", "https://localhost/n", strings.NewReader(strings.Repeat("n", i*100)))
			resp, err := c.Do(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 && string(b) == fmt.Sprint(i*100) {
					ok++
				}
			}
			worst = max(worst, time.Since(start))
		}
		close(stop)
		wg.Wait()
		t.Logf("%d tricklers: %d/40 normal requests served, the slowest in %v; lb's peak RSS %.1f MiB", tricklers, ok, worst.Round(time.Millisecond), peakRSS(t, p.cmd.Process.Pid))
		if ok != 40 || worst > time.Second {
			t.Errorf("normal clients: %d/40 served, slowest %v", ok, worst)
		}
	})
}

// TestConcurrentUploadsMemory sends 200 uploads of 100 MiB at once
// through lb over plain HTTP/1.1, to a backend that reads them at its
// pace: every one arrives whole, and lb's peak RSS stays under 96 MiB
// (each upload holds its read-ahead, one 16 KiB piece in flight and its
// two connections' buffers). It moves 20 GiB, so it runs without -race
// alone (.ci/run's run without the race detector), and not in -short.
func TestConcurrentUploadsMemory(t *testing.T) {
	if raceEnabled || testing.Short() {
		t.Skip("20 GiB through lb: run without -race and -short (.ci/run does)")
	}
	const uploads, size = 200, 100 << 20
	dir := t.TempDir()
	ub := startUploadBackend(t, &uploadBackend{})
	cfg := strings.Replace(bodyConfig("", ub.addr), "  [listener.tls]\n  cert = \"certs/site.pem\"\n  key = \"certs/site.key\"\n", "", 1)
	// The backend is the bottleneck here, and a starved connection's
	// write may wait longer than the 5 s the other tests use.
	cfg = strings.Replace(cfg, `response_timeout = "5s"`, `response_timeout = "60s"`, 1)
	p := startLB(t, dir, cfg)
	tr := &http.Transport{MaxConnsPerHost: uploads, MaxIdleConnsPerHost: uploads}
	c := &http.Client{Transport: tr, Timeout: 5 * time.Minute}
	defer tr.CloseIdleConnections()
	var wg sync.WaitGroup
	var ok, bad atomic.Int64
	start := time.Now()
	for range uploads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sum := sha256.New()
			req, _ := http.NewRequest("PUT", "http://"+p.addrs["https"]+"/up", &patternReader{left: size, sum: sum})
			req.ContentLength = size
			resp, err := c.Do(req)
			if err != nil {
				if bad.Add(1) == 1 {
					t.Logf("first failure: %v", err)
				}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) == fmt.Sprintf("%d %s", size, hex.EncodeToString(sum.Sum(nil))) {
				ok.Add(1)
			} else if bad.Add(1) == 1 {
				t.Logf("first failure: %d %q", resp.StatusCode, b)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	rss := peakRSS(t, p.cmd.Process.Pid)
	t.Logf("%d uploads of %d MiB: %d intact, %d failed, in %v (%.0f MB/s); lb's peak RSS %.1f MiB", uploads, size>>20, ok.Load(), bad.Load(), elapsed.Round(time.Second), float64(uploads*size)/elapsed.Seconds()/1e6, rss)
	if ok.Load() != uploads {
		t.Errorf("%d of %d uploads arrived intact", ok.Load(), uploads)
	}
	if rss > 96 {
		t.Errorf("lb's peak RSS %.1f MiB, want under 96 MiB", rss)
	}
}

// TestUploadBrokenOff covers what a streamed upload must not cost when
// its backend breaks off: memory (the rest of the body is not read into
// memory to find out whether there was one), the next request (the
// backend connection, left mid-body, is not pooled), and a client that
// went away gets no answer written (499 is for the log).
func TestUploadBrokenOff(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	ub := startUploadBackend(t, &uploadBackend{onBody: func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/drop": // reads a little, then drops the connection
			io.CopyN(io.Discard, r.Body, 100<<10)
			if hj, ok := w.(http.Hijacker); ok {
				c, _, _ := hj.Hijack()
				c.Close()
			}
		case "/late413": // answers late, keep-alive, without reading
			time.Sleep(1300 * time.Millisecond)
			w.WriteHeader(http.StatusRequestEntityTooLarge)
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(3 * time.Second):
			}
		default:
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, "ok")
		}
	}})
	cfg := strings.Replace(bodyConfig("", ub.addr), `response_timeout = "5s"`, `response_timeout = "1s"`, 1)
	p := startLB(t, dir, cfg)
	c := uploadClient(certs, p.addrs["https"], false)
	upload := func(path string, n int64) int {
		req, _ := http.NewRequest("PUT", "https://localhost"+path, &patternReader{left: n})
		req.ContentLength = n
		resp, err := c.Do(req)
		if err != nil {
			t.Logf("%s: %v", path, err)
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	t.Run("backend drops mid-body", func(t *testing.T) {
		if code := upload("/drop", 256<<20); code != http.StatusBadGateway && code != 0 {
			t.Errorf("got %d, want 502 (or the connection closed)", code)
		}
		if rss := peakRSS(t, p.cmd.Process.Pid); !raceEnabled && rss > 64 {
			t.Errorf("lb's peak RSS %.1f MiB after a 256 MiB upload its backend dropped", rss)
		}
	})
	t.Run("backend answers without reading", func(t *testing.T) {
		if code := upload("/late413", 80<<20); code != http.StatusRequestEntityTooLarge && code != http.StatusGatewayTimeout && code != 0 {
			t.Errorf("got %d", code)
		}
		for range 3 {
			if code, body, err := get(c, "https://localhost/next"); err != nil || code != 200 || body != "ok" {
				t.Errorf("the next request: %d %q %v (a connection left mid-body was reused?)", code, body, err)
			}
		}
	})
	t.Run("a client gone gets no answer", func(t *testing.T) {
		conn, err := tls.Dial("tcp", p.addrs["https"], &tls.Config{RootCAs: certs.pool(), ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
		conn.CloseWrite()                          // close_notify
		conn.NetConn().(*net.TCPConn).CloseWrite() // and a FIN: half-closed, counted as gone, as NGINX does
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, _ := io.ReadAll(conn)
		if len(b) > 0 {
			t.Errorf("the client that went away was written %q", b)
		}
		if !waitFor(2*time.Second, func() bool { return strings.Contains(p.stdout.String(), "uri=/slow status=499") }) {
			t.Errorf("no 499 logged:\n%s", tail(p.stdout.String(), 3))
		}
	})
}

// TestBodyMemoryBounded: request bodies lb reads ahead whole (up to
// body_buffer) are held until their request is answered, within
// global.max_body_memory: with a slow backend and more small uploads at
// once than fit, the rest stream instead (counted in
// lb_body_memory_full_total) and all arrive intact; the body memory never
// passes the limit, and once the traffic is over (HTTP/1.1 and HTTP/2
// downloads, small uploads read whole, large ones streamed) nothing is
// left counted. (Responses read whole are held the same way until their
// client has them; the kernel's send buffers take them off lb's hands
// too soon to show here: pkg/proxy's TestResponsesWithinBodyMemory
// holds them with clients that do not read.)
func TestBodyMemoryBounded(t *testing.T) {
	const size, clients = 60 << 10, 32
	page := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		switch {
		case r.URL.Path == "/slow":
			time.Sleep(time.Second)
			fallthrough
		case r.Method == "POST":
			fmt.Fprintf(w, "%d", n)
		default:
			w.Header().Set("Content-Length", fmt.Sprint(len(page)))
			w.Write(page)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	dir := t.TempDir()
	certs := writeCerts(t, dir)
	cfg := strings.Replace(bodyConfig("", ln.Addr().String()), "watch = false", "watch = false\nmax_body_memory = \"1MiB\"", 1)
	lb := startLB(t, dir, cfg)
	addr := lb.addrs["https"]

	// 32 uploads of 60 KiB at once to a backend that takes a second to
	// answer: each read ahead would hold 64 KiB, 2 MiB in all.
	var wg sync.WaitGroup
	done := make(chan struct{})
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := uploadClient(certs, addr, false)
			defer c.CloseIdleConnections()
			resp, err := c.Post("https://localhost/slow", "application/octet-stream", bytes.NewReader(page))
			if err != nil {
				t.Errorf("upload %d: %v", i, err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != fmt.Sprint(size) {
				t.Errorf("upload %d: backend read %q, want %d bytes", i, b, size)
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	var peak float64
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-time.After(50 * time.Millisecond):
		}
		peak = max(peak, value(scrape(t, lb), "lb_body_memory_bytes"))
	}
	m := scrape(t, lb)
	if limit := value(m, "lb_body_memory_limit_bytes"); limit != 1<<20 {
		t.Errorf("lb_body_memory_limit_bytes = %v, want 1MiB", limit)
	}
	if full := value(m, "lb_body_memory_full_total"); full == 0 {
		t.Errorf("%d uploads of %d KiB held at once: the body memory never filled (peak %v bytes)", clients, size>>10, peak)
	}
	if peak > 1<<20 || peak == 0 {
		t.Errorf("body memory peaked at %v bytes, want some, within the 1MiB limit", peak)
	}
	t.Logf("body memory peaked at %.0f KiB; %v bodies streamed for want of room", peak/1024, value(m, "lb_body_memory_full_total"))

	// Every kind of body, then nothing left counted.
	for _, h2 := range []bool{false, true} {
		c := uploadClient(certs, addr, h2)
		for _, n := range []int{0, 100, 60 << 10, 300 << 10} {
			var body io.Reader = bytes.NewReader(page[:min(n, len(page))])
			if n > len(page) {
				body = &patternReader{left: int64(n), sum: sha256.New()}
			}
			resp, err := c.Post("https://localhost/up", "application/octet-stream", body)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != fmt.Sprint(n) {
				t.Errorf("upload of %d bytes (h2 %v): backend read %q", n, h2, b)
			}
			resp, err = c.Get("https://localhost/page")
			if err != nil {
				t.Fatal(err)
			}
			b, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Equal(b, page) {
				t.Errorf("download (h2 %v): %d bytes, not the page", h2, len(b))
			}
		}
		c.CloseIdleConnections()
	}
	if !waitFor(5*time.Second, func() bool { return value(scrape(t, lb), "lb_body_memory_bytes") == 0 }) {
		t.Errorf("%v body bytes still counted once every exchange is over", value(scrape(t, lb), "lb_body_memory_bytes"))
	}
}
