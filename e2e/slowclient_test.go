package e2e

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A backend whose own send timeout is shorter than the time slow clients
// take to read a large body breaks the body off: that is the clients'
// doing, and must not take the backend down by passive failures.
func TestSlowClientsDoNotMarkBackendDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(strings.Repeat("z", 48<<20))
	srv := &http.Server{
		// Go's server gives the whole response this long, like many
		// application servers' send timeouts.
		WriteTimeout: 300 * time.Millisecond,
		// A small send buffer, so that little of the body waits in
		// buffers once lb stops reading.
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateNew {
				c.(*net.TCPConn).SetWriteBuffer(64 << 10)
			}
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/big" {
				io.WriteString(w, "ok")
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body)
		}),
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()
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
write_timeout = "30s"

[[pool]]
name = "web"
retries = 0
  [pool.health]
  check = "none"
  interval = "1h"
  passive_failures = 2
  [[pool.backend]]
  address = "`+addr+`"
`)
	front := lb.addrs["plain"]
	const clients = 3
	got := make(chan int64, clients)
	for range clients {
		go func() {
			c := stallDial(t, front)
			io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
			// A few MB/s: far slower than the backend sends.
			var n int64
			buf := make([]byte, 64<<10)
			c.SetReadDeadline(time.Now().Add(60 * time.Second))
			for {
				m, err := c.Read(buf)
				n += int64(m)
				if err != nil {
					break
				}
				time.Sleep(time.Millisecond)
			}
			got <- n
		}()
	}
	for range clients {
		n := <-got
		t.Logf("a slow client read %d bytes", n)
		if n >= int64(len(body)) {
			t.Fatalf("a slow client read the whole body (%d bytes): the backend's send timeout did not cut it", n)
		}
	}
	b := lb.backendStatus("web", addr)
	if !strings.Contains(b.LastError, "body ended early") {
		t.Fatalf("bodies did not break off at the backend: last error %q", b.LastError)
	}
	if !b.Up {
		t.Fatalf("backend down after %d slow clients (failures %d, last error %q)", clients, b.Failures, b.LastError)
	}
	if code, body, _ := get(http.DefaultClient, "http://"+front+"/"); code != http.StatusOK || body != "ok" {
		t.Fatalf("after the slow clients: %d %q", code, body)
	}
}
