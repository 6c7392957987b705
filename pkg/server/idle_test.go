package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/certgen"
	"github.com/offloadlb/lb/pkg/config"
)

// TestIdleConnectionStack checks what an idle keep-alive TLS connection
// costs in goroutine stack. Each is parked in its own goroutine; the
// stack that goroutine keeps is the largest it ever needed, so one
// request's deepest call chain decides whether an idle connection holds
// 4 KiB or 8 KiB of stack, a third of lb's memory per connection. This
// test fails when the proxy path of an answer read whole (up to 64 KiB,
// with Content-Length: most answers) outgrows the smaller size, after a
// GET or a POST. An answer that streams (chunked, or longer) is written
// to the client in pieces from deeper down fasthttp's response writer,
// and each piece through crypto/tls's record sealing, which together
// take more than 4 KiB: those connections keep 8 KiB, which is checked
// too.
func TestIdleConnectionStack(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("stack sizes differ under -race; run without -short and -race")
	}
	// lb runs with GODEBUG=adaptivestackstart=0 (see cmd/lb), which only
	// takes effect when a process starts: run this test in one.
	if !strings.Contains(os.Getenv("GODEBUG"), "adaptivestackstart=0") {
		cmd := exec.Command(os.Args[0], "-test.run=^TestIdleConnectionStack$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "GODEBUG=adaptivestackstart=0")
		out, err := cmd.CombinedOutput()
		t.Logf("%s", out)
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	body := strings.Repeat("x", 100)
	// Backends answer in different ways, and each way takes its own path
	// through lb's reading of the answer: the deepest decides.
	heads := []struct {
		name, head string
		streams    bool
	}{
		// fasthttp's own server: Server, Date, Content-Type, Content-Length.
		{"fasthttp", "", false},
		// NGINX serving a file: Connection: keep-alive, validators.
		{"nginx", "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 16:52:28 GMT\r\n" +
			"Content-Type: text/html\r\nContent-Length: 100\r\nLast-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n" +
			"Connection: keep-alive\r\nETag: \"692d6e70-64\"\r\nAccept-Ranges: bytes\r\n\r\n" + body, false},
		// No Date (lb adds one) and a cookie.
		{"no-date", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n" +
			"Connection: keep-alive\r\nSet-Cookie: session=abc; Path=/; HttpOnly\r\n\r\n" + body, false},
		// An answer too long to be read whole (64 KiB), which streams.
		{"large", "HTTP/1.1 200 OK\r\nDate: Thu, 03 Dec 2026 16:52:28 GMT\r\nContent-Type: text/plain\r\n" +
			"Content-Length: 200000\r\n\r\n" + strings.Repeat("x", 200000), true},
		// A chunked answer, which streams.
		{"chunked", "HTTP/1.1 200 OK\r\nDate: Thu, 03 Dec 2026 16:52:28 GMT\r\nContent-Type: text/plain\r\n" +
			"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n64\r\n" + body + "\r\n0\r\n\r\n", true},
	}
	for _, h := range heads {
		t.Run(h.name, func(t *testing.T) {
			backend, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			if h.head == "" {
				bsrv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString(body) }}
				go bsrv.Serve(backend) // ends when Shutdown closes it
				defer bsrv.Shutdown()  // the test is over
			} else {
				go serveFixed(backend, h.head)
				defer backend.Close()
			}
			limit := 6 << 10 // a 4 KiB stack, and some of the runtime's
			if h.streams {
				limit = 10 << 10
			}
			idleStack(t, backend.Addr().String(), body, float64(limit))
		})
	}
}

// serveFixed answers every request on ln's connections with answer.
func serveFixed(ln net.Listener, answer string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				if _, err := io.WriteString(c, answer); err != nil {
					return
				}
			}
		}()
	}
}

// idleStack opens idle connections to an lb whose one backend is
// backend, and checks what each costs in stack and heap.
func idleStack(t *testing.T, backend, body string, stackLimit float64) {
	dir := t.TempDir()
	pair, err := certgen.SelfSigned("localhost")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := pair.Write(dir, "site")
	if err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf(`
[global]
admin = ""
access_log = ""
[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "web"
  [listener.tls]
  cert = %q
  key = %q
[[pool]]
name = "web"
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = %q
`, cert, key, backend)
	cfg, err := config.Parse([]byte(src), filepath.Join(dir, "lb.toml"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx) // the test is over
	}()
	addr := s.Addrs()["https"]

	const n = 300
	request := "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
	open := func(count int) []net.Conn {
		var conns []net.Conn
		for range count {
			c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, request)
			resp, err := readResponse(c)
			if err != nil || !strings.Contains(resp, body) {
				t.Fatalf("request: %v %q", err, resp)
			}
			conns = append(conns, c)
		}
		return conns
	}
	warm := open(20) // backend connection, worker pools, first-use state
	time.Sleep(100 * time.Millisecond)
	g0, st0, h0 := goroutinesAndStack()
	conns := open(n)
	defer func() {
		for _, c := range append(warm, conns...) {
			c.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond)
	g1, st1, h1 := goroutinesAndStack()
	if g1-g0 < n {
		t.Fatalf("only %d more goroutines for %d connections", g1-g0, n)
	}
	per := float64(st1-st0) / float64(g1-g0)
	heapGet := float64(h1-h0) / n
	t.Logf("%d idle connections: %d goroutines, %.0f bytes of stack and %.0f of heap each", n, g1-g0, per, heapGet)
	if per > stackLimit {
		t.Errorf("after a GET, an idle connection's goroutine keeps %.0f bytes of stack; the request path has outgrown %.0f", per, stackLimit)
	}

	// Connections that sent a body too. Bodies are read as streams: the
	// server keeps its 16 KiB read buffer while a request is read, and
	// must give it back after (third_party/fasthttp/PATCHES.md), or every
	// idle connection keeps it.
	request = "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n" + strings.Repeat("b", 1000)
	_, _, h2 := goroutinesAndStack()
	posted := open(n)
	defer func() {
		for _, c := range posted {
			c.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond)
	g3, st3, h3 := goroutinesAndStack()
	heapPost := float64(h3-h2) / n
	perPost := float64(st3-st1) / float64(g3-g1)
	t.Logf("after a POST: %.0f bytes of stack and %.0f of heap each", perPost, heapPost)
	if perPost > stackLimit {
		t.Errorf("after a POST, an idle connection's goroutine keeps %.0f bytes of stack; the request path has outgrown %.0f", perPost, stackLimit)
	}
	// About 16.5 KB each on this machine (TLS's buffers and state,
	// fasthttp's connection state), 40 KB with the read buffer kept.
	for _, c := range []struct {
		what string
		heap float64
	}{{"sent no body", heapGet}, {"sent a body", heapPost}} {
		if c.heap > 24<<10 {
			t.Errorf("an idle connection that %s holds %.0f bytes of heap: more than 24 KiB, the read buffer was kept", c.what, c.heap)
		}
	}
}

func goroutinesAndStack() (int, uint64, uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.StackInuse, ms.HeapInuse
}

func readResponse(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(resp.Body)
	if br.Buffered() > 0 {
		return string(b), os.ErrInvalid
	}
	return string(b), err
}
