package h2

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/testutil"
)

// tlsPair returns the two ends of a TLS connection over loopback: the
// server end and the client end.
func tlsPair(t *testing.T) (*tls.Conn, *tls.Conn) {
	t.Helper()
	cert := testutil.Certificate(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- nil
			return
		}
		sc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		sc.Handshake()
		done <- sc
	}()
	cc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	sc := <-done
	t.Cleanup(func() { cc.Close(); sc.Close() })
	return sc, cc
}

func TestCoalescingConnKeepsOrderAndBytes(t *testing.T) {
	server, client := tlsPair(t)
	cc := newCoalescingConn(server, 0)
	var want bytes.Buffer
	var mu sync.Mutex
	var wg sync.WaitGroup
	// Writers take turns under a lock, as the HTTP/2 server's writes
	// are serialised; their bytes must arrive in the order written.
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				msg := bytes.Repeat([]byte{byte('a' + w)}, 1+(i*37)%3000)
				mu.Lock()
				want.Write(msg)
				_, err := cc.Write(msg)
				mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(client)
		got <- b
	}()
	wg.Wait()
	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}
	b := <-got
	if !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("got %d bytes, want %d, or out of order", len(b), want.Len())
	}
}

func TestCoalescingConnBackpressureAndErrors(t *testing.T) {
	server, client := tlsPair(t)
	cc := newCoalescingConn(server, 0)
	// The client reads nothing: Write must stop accepting once the
	// socket buffers and maxPending are full, not grow without bound.
	chunk := make([]byte, 16<<10)
	blocked := make(chan int)
	go func() {
		n := 0
		for {
			if _, err := cc.Write(chunk); err != nil {
				blocked <- n
				return
			}
			n += len(chunk)
		}
	}()
	select {
	case n := <-blocked:
		t.Fatalf("write failed after %d bytes without a reason", n)
	case <-time.After(500 * time.Millisecond):
	}
	cc.mu.Lock()
	held := len(cc.pending)
	cc.mu.Unlock()
	if held > maxPending+len(chunk) {
		t.Errorf("%d bytes held, limit %d", held, maxPending)
	}
	// The peer goes away: the blocked writer gets an error.
	client.Close()
	server.NetConn().(*net.TCPConn).SetWriteDeadline(time.Now())
	select {
	case <-blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("writer still blocked after the connection failed")
	}
	start := time.Now()
	cc.Close()
	if d := time.Since(start); d > closeFlushWait+time.Second {
		t.Errorf("Close took %s", d)
	}
}
