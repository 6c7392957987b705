package upstream

import (
	"bufio"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// connPair returns a backend connection to a loopback peer, and the
// peer's end.
func connPair(tb testing.TB) (*backendConn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	c := newBackendConn(nc)
	tb.Cleanup(func() { c.Close(); peer.Close() })
	return c, peer
}

// eventually waits up to a second for cond.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func TestAlive(t *testing.T) {
	c, peer := connPair(t)
	if !c.alive() {
		t.Fatal("a quiet open connection is not alive")
	}
	peer.Write([]byte("x"))
	if !eventually(func() bool { return !c.alive() }) {
		t.Fatal("a connection with unread bytes is alive")
	}
	if b, err := c.reader().Peek(1); err != nil || b[0] != 'x' {
		t.Fatalf("the peek took the byte: %q %v", b, err)
	}

	c, peer = connPair(t)
	peer.Close()
	if !eventually(func() bool { return !c.alive() }) {
		t.Fatal("a connection the peer closed is alive")
	}
}

// A pooled connection whose last read deadline has passed (the response
// timeout is shorter than the idle time) is still reused: the peek that
// checks it must not trip over the old deadline.
func TestReuseAfterReadDeadline(t *testing.T) {
	var conns atomic.Int64
	addr := serveRaw(t, func(c net.Conn, br *bufio.Reader) {
		conns.Add(1)
		for {
			if err := readRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	tr := NewTransport(addr, time.Second)
	defer tr.Close()
	x := Exchange{Transport: tr, Timeout: 20 * time.Millisecond, MaxBuffered: 64 << 10, Replayable: true}
	var req fasthttp.Request
	var resp fasthttp.Response
	for i := range 2 {
		if s, err := get(&x, &req, &resp); err != nil || s != nil || string(resp.Body()) != "ok" {
			t.Fatalf("request %d: %v, stream %v, body %q", i, err, s != nil, resp.Body())
		}
		time.Sleep(50 * time.Millisecond) // past the read deadline
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for two requests, want 1 (reused)", n)
	}
}

func BenchmarkAlive(b *testing.B) {
	c, _ := connPair(b)
	b.ReportAllocs()
	for b.Loop() {
		if !c.alive() {
			b.Fatal("not alive")
		}
	}
}

func TestAliveAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocations")
	}
	c, _ := connPair(t)
	if got := testing.AllocsPerRun(1000, func() { c.alive() }); got != 0 {
		t.Errorf("%v allocations per check", got)
	}
}
