package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
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
// test fails when the proxy path outgrows the smaller size.
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
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat("x", 100)
	bsrv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString(body) }}
	go bsrv.Serve(backend) // ends when Shutdown closes it
	defer bsrv.Shutdown()  // the test is over

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
`, cert, key, backend.Addr().String())
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
	if per > 6<<10 {
		t.Errorf("an idle connection's goroutine keeps %.0f bytes of stack; the request path has outgrown 4 KiB", per)
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
	t.Logf("after a POST: %.0f bytes of stack and %.0f of heap each", float64(st3-st1)/float64(g3-g1), heapPost)
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
	var sb strings.Builder
	cl := 0
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return sb.String(), err
		}
		sb.WriteString(line)
		if strings.HasPrefix(strings.ToLower(line), "content-length:") {
			fmt.Sscanf(strings.TrimSpace(line[15:]), "%d", &cl)
		}
		if line == "\r\n" {
			break
		}
	}
	b := make([]byte, cl)
	_, err := io.ReadFull(br, b)
	sb.Write(b)
	if br.Buffered() > 0 {
		return sb.String(), os.ErrInvalid
	}
	return sb.String(), err
}
