package upstream

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/valyala/fasthttp"
)

// serveRaw serves each connection with fn on 127.0.0.1 and returns the
// address.
func serveRaw(t testing.TB, fn func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fn(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// readRequest reads one request head and body off a raw backend
// connection.
func readRequest(br *bufio.Reader) error {
	req, err := http.ReadRequest(br)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, req.Body)
	return err
}

// get sends a GET for / through x, as the proxy leaves one (target and
// Host set from the parsed URI).
func get(x *Exchange, req *fasthttp.Request, resp *fasthttp.Response) (*Body, error) {
	req.Reset()
	req.SetRequestURI("http://backend/")
	req.URI()
	req.Header.SetHost("backend")
	req.Header.SetRequestURI("/")
	return x.RoundTrip(req, resp)
}

// TestStrayBytesRightAfterAnAnswer: bytes a backend sends just after its
// answer are found before the connection is reused, however recently it
// was answering: reused without the check, they would be the next
// request's answer.
func TestStrayBytesRightAfterAnAnswer(t *testing.T) {
	sent := make(chan struct{})
	var once sync.Once
	addr := serveRaw(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if err := readRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
			once.Do(func() {
				time.Sleep(20 * time.Millisecond) // after the answer was read and the connection pooled
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
				close(sent)
			})
		}
	})
	tr := NewTransport(addr, time.Second)
	defer tr.Close()
	x := Exchange{Transport: tr, Timeout: time.Second, MaxBuffered: 64 << 10, Replayable: true}
	do := func() string {
		var req fasthttp.Request
		var resp fasthttp.Response
		stream, err := get(&x, &req, &resp)
		if err != nil || stream != nil {
			t.Fatalf("round trip: %v, stream %v", err, stream != nil)
		}
		return string(resp.Body())
	}
	if got := do(); got != "real" {
		t.Fatalf("first answer %q", got)
	}
	<-sent
	time.Sleep(50 * time.Millisecond) // the stray bytes are in
	tr.mu.Lock()
	for _, c := range tr.idle {
		c.idleSince = time.Now() // as if it had answered this instant
	}
	tr.mu.Unlock()
	if got := do(); got != "real" {
		t.Fatalf("second answer %q: the stray bytes were taken for it", got)
	}
}

// startFastBackend serves a fixed 100-byte body with fasthttp on
// 127.0.0.1.
func startFastBackend(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	body := bytes.Repeat([]byte("abcd"), 25)
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBody(body) }}
	go srv.Serve(ln)                      // ends when Shutdown closes ln
	tb.Cleanup(func() { srv.Shutdown() }) // the test is over
	return ln.Addr().String()
}

// roundTripLoop returns one GET through a Transport to a fasthttp
// backend, answered with a buffered body on a reused connection: the
// exchange every proxied request makes.
func roundTripLoop(tb testing.TB) func() {
	tr := NewTransport(startFastBackend(tb), time.Second)
	tb.Cleanup(tr.Close)
	x := Exchange{Transport: tr, Timeout: time.Second, MaxBuffered: 64 << 10, Replayable: true}
	var req fasthttp.Request
	var resp fasthttp.Response
	return func() {
		resp.Reset()
		if s, err := get(&x, &req, &resp); err != nil || s != nil || resp.StatusCode() != 200 {
			tb.Fatalf("round trip: %v, stream %v, status %d", err, s != nil, resp.StatusCode())
		}
	}
}

// BenchmarkRoundTrip measures the backend exchange alone: writing the
// request, the liveness check of the pooled connection, reading the
// answer.
func BenchmarkRoundTrip(b *testing.B) {
	rt := roundTripLoop(b)
	b.ReportAllocs()
	for b.Loop() {
		rt()
	}
}

func TestRoundTripAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocations")
	}
	rt := roundTripLoop(t)
	for range 100 {
		rt()
	}
	if got := testing.AllocsPerRun(500, rt); got != 0 {
		t.Errorf("%v allocations per round trip", got)
	}
}

// TestBufferedBodyCountsInBodyMemory: a response body read whole counts in
// the process's body memory until its request is reset (once the client
// has it); with no room left, it streams instead, counting nothing.
func TestBufferedBodyCountsInBodyMemory(t *testing.T) {
	// (Other tests' requests, never reset, may hold some.)
	held := bodymem.Used()
	tr := NewTransport(startFastBackend(t), time.Second)
	defer tr.Close()
	x := Exchange{Transport: tr, Timeout: time.Second, MaxBuffered: 64 << 10, Replayable: true}
	var req fasthttp.Request
	var resp fasthttp.Response
	if s, err := get(&x, &req, &resp); err != nil || s != nil {
		t.Fatalf("round trip: %v, stream %v", err, s != nil)
	}
	if n := bodymem.Used() - held; n != 100 {
		t.Errorf("%d bytes held while the response is written, want 100", n)
	}
	req.Reset()
	if n := bodymem.Used() - held; n != 0 {
		t.Errorf("%d bytes held once the request is reset, want 0", n)
	}

	bodymem.SetLimit(held + 50)
	defer bodymem.SetLimit(bodymem.DefaultLimit)
	resp.Reset()
	s, err := get(&x, &req, &resp)
	if err != nil || s == nil {
		t.Fatalf("round trip with no room: %v, stream %v (want a stream)", err, s != nil)
	}
	if n := bodymem.Used() - held; n != 0 {
		t.Errorf("%d bytes held by a streamed body", n)
	}
	b, err := io.ReadAll(s)
	if err != nil || len(b) != 100 {
		t.Errorf("streamed %d bytes, %v", len(b), err)
	}
	s.CloseWithError(nil)
	req.Reset()
}
