package peer

import (
	"crypto/tls"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/certgen"
)

// TestGone follows a client's TCP connection as the client is there,
// half-closes, and resets; and looks through TLS to the socket.
func TestGone(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("asked on Linux alone")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accept := func() (client, server net.Conn) {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	}
	within := func(s net.Conn, want bool) bool {
		deadline := time.Now().Add(2 * time.Second)
		for Gone(s) != want {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(5 * time.Millisecond)
		}
		return true
	}

	c, s := accept()
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n")) // unread bytes are no sign of going
	if !within(s, false) {
		t.Error("a connected client with a request pending was taken for gone")
	}
	c.(*net.TCPConn).CloseWrite()
	if !within(s, true) {
		t.Error("a client that half-closed was not seen gone")
	}

	c, s = accept()
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // reset
	if !within(s, true) {
		t.Error("a client that reset was not seen gone")
	}

	// Through TLS, after close_notify and the close.
	pair, err := certgen.SelfSigned("localhost")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	c, s = accept()
	ts := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}})
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	errc := make(chan error, 1)
	go func() { errc <- tc.Handshake() }()
	if err := ts.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !within(ts, false) {
		t.Error("a TLS client still there was taken for gone")
	}
	tc.Close()
	if !within(ts, true) {
		t.Error("a TLS client that closed was not seen gone through the TLS layer")
	}

	if Gone(nil) {
		t.Error("a nil connection is gone? nothing to ask")
	}
}
