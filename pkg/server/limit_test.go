package server

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestPerClientLimit: past max_connections_per_client, a client's next
// connection is closed as soon as it is accepted; other addresses are not
// affected, a closed connection frees a place, and a limit set later
// counts the connections already open.
func TestPerClientLimit(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newLimitListener(ln, 100)
	defer l.Close()
	var mu sync.Mutex
	var refusedFrom []netip.Addr
	l.onRefuse = func(c netip.Addr, limit int64) {
		mu.Lock()
		refusedFrom = append(refusedFrom, c)
		mu.Unlock()
	}
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// served reports whether lb kept c: a refused one reads EOF at once.
	served := func(c net.Conn) bool {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		ne, ok := err.(net.Error)
		return ok && ne.Timeout()
	}

	a1, a2 := dial("127.0.0.1"), dial("127.0.0.1")
	l.SetPerClient(2) // counts a1 and a2, opened before
	a3 := dial("127.0.0.1")
	b1 := dial("127.0.0.2")
	if s1, s2, s3, s4 := served(a1), served(a2), served(a3), served(b1); !s1 || !s2 || s3 || !s4 {
		t.Fatalf("served: a1 %v a2 %v a3 %v b1 %v; want the third from 127.0.0.1 refused", s1, s2, s3, s4)
	}
	mu.Lock()
	if l.Refused() != 1 || len(refusedFrom) != 1 || refusedFrom[0].String() != "127.0.0.1" {
		t.Errorf("refused %d, from %v", l.Refused(), refusedFrom)
	}
	mu.Unlock()
	// Closing one of the client's connections frees its place.
	(<-accepted).Close()
	time.Sleep(50 * time.Millisecond)
	if a4 := dial("127.0.0.1"); !served(a4) {
		t.Error("a place freed by a closed connection was not given")
	}
	if l.Active() != 3 {
		t.Errorf("%d active, want 3", l.Active())
	}
	l.SetPerClient(0)
	if a5 := dial("127.0.0.1"); !served(a5) {
		t.Error("refused with the limit off")
	}
}
