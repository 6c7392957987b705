package e2e

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHeadRefusedWithoutWaiting: a request refused for its head alone is
// answered as soon as the head is in, over plain TCP and TLS, whatever
// its body does, and the connection closed; a head whose lines end in a
// bare LF is answered at once too. read_timeout is 10s: every answer must
// come within 2s, and the backend sees nothing.
func TestHeadRefusedWithoutWaiting(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	rec := startRecorder(t)
	cfg := `
[global]
log_level = "info"
access_log = ""
admin = "127.0.0.1:0"
shutdown_grace = "1s"
watch = false

[[listener]]
name = "plain"
bind = "127.0.0.1:0"
pool = "web"
read_timeout = "10s"

[[listener]]
name = "tls"
bind = "127.0.0.1:0"
pool = "web"
read_timeout = "10s"
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"
  alpn = ["http/1.1"]

[[pool]]
name = "web"
retries = 0
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = "` + rec.addr + `"
`
	lb := startLB(t, dir, cfg)
	tlsConf := &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com", NextProtos: []string{"http/1.1"}}
	const host = "Host: www.example.com\r\n"
	ok := "GET /ok HTTP/1.1\r\n" + host + "\r\n"

	for _, tc := range []struct {
		name   string
		req    string // sent, and the connection then left open
		status int
	}{
		{"length and chunked, body never ends", "POST / HTTP/1.1\r\n" + host + "Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", 400},
		{"length and chunked, body not sent", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n", 400},
		{"space in a field name, body not sent", "POST / HTTP/1.1\r\n" + host + "X A: b\r\nContent-Length: 100\r\n\r\n", 400},
		{"bad Host, body not sent", "POST / HTTP/1.1\r\nHost: a/b\r\nContent-Length: 100\r\n\r\n", 400},
		{"TRACE with a body not sent", "TRACE / HTTP/1.1\r\n" + host + "Content-Length: 100\r\n\r\n", 405},
		{"every line ended by bare LF", "GET / HTTP/1.1\n" + "Host: www.example.com\n\n", 400},
		{"bare LF blank line", "GET / HTTP/1.1\r\n" + host + "X-A: a\n\n", 400},
		{"bare LF line, then CRLF blank line", "GET / HTTP/1.1\r\n" + host + "X-A: a\n\r\n", 400},
		{"bare LF head sent a byte at a time", "GET / HTTP/1.1\n" + "Host: www.example.com\n\n", 400},
		{"bare LF head after a sound request", ok + "GET / HTTP/1.1\n" + "Host: www.example.com\n\n", 400},
	} {
		for _, overTLS := range []bool{false, true} {
			name := tc.name
			if overTLS {
				name += " (TLS)"
			}
			t.Run(name, func(t *testing.T) {
				before := rec.count()
				var c net.Conn
				var err error
				if overTLS {
					c, err = tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", lb.addrs["tls"], tlsConf)
				} else {
					c, err = net.DialTimeout("tcp", lb.addrs["plain"], 2*time.Second)
				}
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				start := time.Now()
				c.SetDeadline(start.Add(2 * time.Second))
				br := bufio.NewReader(c)
				req := tc.req
				if strings.HasPrefix(req, ok) {
					// The first request answered on the same connection:
					// the next head is followed too.
					io.WriteString(c, ok)
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("first request: %v", err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						t.Fatalf("first request answered %d", resp.StatusCode)
					}
					req = req[len(ok):]
				}
				if strings.Contains(tc.name, "byte at a time") {
					for i := 0; i < len(req); i++ {
						if _, err := io.WriteString(c, req[i:i+1]); err != nil {
							t.Fatal(err)
						}
					}
				} else if _, err := io.WriteString(c, req); err != nil {
					t.Fatal(err)
				}
				// No half-close: the client waits as a real one would.
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("no answer within %v: %v", time.Since(start).Round(time.Millisecond), err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				took := time.Since(start)
				if resp.StatusCode != tc.status {
					t.Errorf("answered %d, want %d", resp.StatusCode, tc.status)
				}
				// lb closes the connection behind the answer.
				if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
					t.Errorf("connection still open after the answer (read %d, %v)", n, err)
				} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Errorf("connection not closed within 2s of the answer")
				}
				t.Logf("answered %d in %v", resp.StatusCode, took.Round(time.Millisecond))
				want := 0
				if strings.HasPrefix(tc.req, ok) {
					want = 1
				}
				if got := rec.since(before); len(got) != want {
					t.Errorf("backend saw %d requests, want %d: %s", len(got), want, backendSummary(got))
				}
			})
		}
	}

	// A sound request whose body comes in parts, with bare-LF blank lines
	// in it, is not taken for a head.
	for _, overTLS := range []bool{false, true} {
		var c net.Conn
		var err error
		if overTLS {
			c, err = tls.Dial("tcp", lb.addrs["tls"], tlsConf)
		} else {
			c, err = net.Dial("tcp", lb.addrs["plain"])
		}
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		io.WriteString(c, "POST /up HTTP/1.1\r\n"+host+"Content-Length: 12\r\n\r\nab\n\n")
		time.Sleep(50 * time.Millisecond) // the body's second part in a later read
		io.WriteString(c, "cd\n\nefgh")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("body in parts (TLS %v): %v", overTLS, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("body in parts (TLS %v): answered %d, want 200", overTLS, resp.StatusCode)
		}
		c.Close()
	}
}
