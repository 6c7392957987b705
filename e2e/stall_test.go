package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// stallDial connects with a 4 KiB receive buffer, set before the
// handshake so that the window is small from the start: a client that
// then stops reading stops the sender within a few KiB.
func stallDial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// stallWait polls cond every 20 ms until it holds or timeout passes, and
// returns how long that took.
func stallWait(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not after %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// endlessBackend streams a response of unknown length (chunked) to GET
// /stream until the client side breaks, and answers "ok" to anything
// else. streaming counts the streams in progress.
func endlessBackend(t *testing.T, streaming *atomic.Int64) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	chunk := []byte(strings.Repeat("x", 32<<10))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stream" {
			io.WriteString(w, "ok")
			return
		}
		streaming.Add(1)
		defer streaming.Add(-1)
		f := w.(http.Flusher)
		deadline := time.Now().Add(30 * time.Second) // bounded, whatever lb does
		for time.Now().Before(deadline) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			f.Flush()
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// Two HTTP/1.0 clients that ask for a body of unknown length and read
// nothing must not hold the backend's two slots beyond write_timeout: lb
// takes such connections over from the HTTP server to send the body
// delimited by close, and the server's deadlines do not follow.
func TestHTTP10ReadersThatStopFreeBackendSlots(t *testing.T) {
	var streaming atomic.Int64
	addr := endlessBackend(t, &streaming)
	dir := t.TempDir()
	writeCerts(t, dir)
	lb := startLB(t, dir, `
[global]
admin = "127.0.0.1:0"
watch = false

[[listener]]
name = "plain"
bind = "127.0.0.1:0"
pool = "web"
write_timeout = "1s"
idle_timeout = "60s"

[[pool]]
name = "web"
max_conns_per_backend = 2
connect_timeout = "300ms"
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = "`+addr+`"
`)
	front := lb.addrs["plain"]
	for range 2 {
		c := stallDial(t, front)
		if _, err := io.WriteString(c, "GET /stream HTTP/1.0\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	stallWait(t, 10*time.Second, "both streams started", func() bool { return streaming.Load() == 2 })
	took := stallWait(t, 10*time.Second, "a third client served", func() bool {
		code, body, _ := get(http.DefaultClient, "http://"+front+"/")
		return code == http.StatusOK && body == "ok"
	})
	stallWait(t, 5*time.Second, "the backend's streams ended", func() bool { return streaming.Load() == 0 })
	t.Logf("slots freed %s after they filled (write_timeout 1s)", took.Round(time.Millisecond))
}

// A WebSocket (any upgrade) whose client stops reading while the backend
// keeps sending is cut after write_timeout, not idle_timeout, and its
// backend slot freed.
func TestTunnelClientThatStopsReadingIsCut(t *testing.T) {
	var open atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				if req.Header.Get("Upgrade") == "" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
					return
				}
				open.Add(1)
				defer open.Add(-1)
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
				frame := []byte(strings.Repeat("m", 16<<10))
				c.SetWriteDeadline(time.Now().Add(30 * time.Second)) // bounded, whatever lb does
				for {
					if _, err := c.Write(frame); err != nil {
						return
					}
				}
			}()
		}
	}()
	dir := t.TempDir()
	writeCerts(t, dir)
	lb := startLB(t, dir, `
[global]
admin = "127.0.0.1:0"
watch = false

[[listener]]
name = "plain"
bind = "127.0.0.1:0"
pool = "web"
write_timeout = "1s"
idle_timeout = "60s"

[[pool]]
name = "web"
max_conns_per_backend = 1
connect_timeout = "300ms"
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = "`+ln.Addr().String()+`"
`)
	front := lb.addrs["plain"]
	c := stallDial(t, front)
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.Contains(line, " 101 ") {
		t.Fatalf("upgrade answer: %q, %v", line, err)
	}
	// The client reads no more. The backend fills the buffers, then lb's
	// writes to the client stall.
	stallWait(t, 5*time.Second, "tunnel open at the backend", func() bool { return open.Load() == 1 })
	took := stallWait(t, 10*time.Second, "the tunnel cut", func() bool { return open.Load() == 0 })
	stallWait(t, 5*time.Second, "the slot free again", func() bool {
		code, _, _ := get(http.DefaultClient, "http://"+front+"/")
		return code == http.StatusOK
	})
	t.Logf("tunnel cut %s after it opened (write_timeout 1s, idle_timeout 60s)", took.Round(time.Millisecond))
}

// tcpStallConfig is a plain tcp listener with the given timeouts, in
// front of one backend that is never checked (so that every connection
// the backend sees is a proxied one).
func tcpStallConfig(idle, write string, backend string) string {
	return fmt.Sprintf(`
[global]
admin = "127.0.0.1:0"
watch = false

[[listener]]
name = "plain"
mode = "tcp"
bind = "127.0.0.1:0"
pool = "tcp"
idle_timeout = %q
write_timeout = %q

[[pool]]
name = "tcp"
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = %q
`, idle, write, backend)
}

// In tcp mode, copying moves to the kernel (splice) after the first
// 32 KiB; the timeouts must hold there too, and a cut closes both sides.
func TestTCPTimeoutsHoldAfterSplice(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)

	t.Run("client stops reading an echo", func(t *testing.T) {
		// The client sends without reading; the echo's answers fill the
		// buffers back to it, then everything stops with both directions
		// spliced. write_timeout is the long one here: idle_timeout cuts.
		b := startTCP(t, echo)
		lb := startLB(t, dir, tcpStallConfig("1s", "60s", b.addr))
		c := stallDial(t, lb.addrs["plain"])
		var lastWrite atomic.Int64
		errc := make(chan error, 1)
		go func() {
			buf := make([]byte, 64<<10)
			// At most 1 GiB: far more than the buffers on the way hold,
			// even where the kernel grows a receive buffer to 32 MiB
			// (tcp_rmem), as it may for lb's two sockets and the echo's.
			for range 16 << 10 {
				c.SetWriteDeadline(time.Now().Add(20 * time.Second))
				if _, err := c.Write(buf); err != nil {
					errc <- err
					return
				}
				lastWrite.Store(time.Now().UnixNano())
			}
			errc <- nil
		}()
		stallWait(t, 10*time.Second, "the backend connected", func() bool { return b.total.Load() == 1 })
		took := stallWait(t, 15*time.Second, "the backend's connection closed", func() bool { return b.open.Load() == 0 })
		select {
		case err := <-errc:
			if err == nil {
				t.Fatal("1 GiB went through to a client that reads nothing")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the client's connection is still open")
		}
		stalled := time.Since(time.Unix(0, lastWrite.Load()))
		t.Logf("cut %s after the connection opened; the client's last write went through %s before its error", took.Round(time.Millisecond), stalled.Round(time.Millisecond))
	})

	t.Run("client reads nothing while it keeps sending", func(t *testing.T) {
		// A download the client never reads, while its upload keeps the
		// connection from being idle: write_timeout cuts it.
		b := startTCP(t, func(c net.Conn) {
			go io.Copy(io.Discard, c)
			buf := make([]byte, 64<<10)
			c.SetWriteDeadline(time.Now().Add(30 * time.Second)) // bounded, whatever lb does
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		})
		lb := startLB(t, dir, tcpStallConfig("60s", "1s", b.addr))
		c := stallDial(t, lb.addrs["plain"])
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := io.WriteString(c, "still here\n"); err != nil {
					return
				}
			}
		}()
		stallWait(t, 10*time.Second, "the backend connected", func() bool { return b.total.Load() == 1 })
		took := stallWait(t, 10*time.Second, "the backend's connection closed", func() bool { return b.open.Load() == 0 })
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
			t.Fatalf("client side after the cut: %v", err)
		}
		t.Logf("cut %s after the connection opened (write_timeout 1s, idle_timeout 60s)", took.Round(time.Millisecond))
	})

	t.Run("both idle after a spliced transfer", func(t *testing.T) {
		b := startTCP(t, echo)
		lb := startLB(t, dir, tcpStallConfig("1s", "60s", b.addr))
		c := stallDial(t, lb.addrs["plain"])
		payload := make([]byte, 1<<20)
		go c.Write(payload)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, len(payload))); err != nil {
			t.Fatalf("echo: %v", err)
		}
		last := time.Now()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(make([]byte, 1))
		idle := time.Since(last)
		if n != 0 || err == nil || stallTimeout(err) {
			t.Fatalf("read on an idle connection: %d, %v", n, err)
		}
		stallWait(t, 5*time.Second, "the backend's connection closed", func() bool { return b.open.Load() == 0 })
		if idle < time.Second || idle > 3*time.Second {
			t.Fatalf("closed after %s idle, want about idle_timeout (1s)", idle)
		}
		t.Logf("closed after %s idle (idle_timeout 1s)", idle.Round(time.Millisecond))
	})
}

func stallTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
