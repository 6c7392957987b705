package proxy

import (
	"bufio"
	"io"
	"net"
	"testing"
)

// TestResponseConnectionOfSeveralLines: the headers a backend's response
// names in any of its Connection lines are hop-by-hop and do not reach the
// client (RFC 9110 sections 5.3 and 7.6.1), whichever line says close.
func TestResponseConnectionOfSeveralLines(t *testing.T) {
	for _, head := range []string{
		"Connection: keep-alive\r\nConnection: X-Hop\r\nX-Hop: 1\r\n",
		"Connection: close\r\nConnection: X-Hop\r\nX-Hop: 1\r\n",
		"Connection: X-Hop\r\nConnection: close\r\nX-Hop: 1\r\n",
		"Connection: X-A\r\nConnection: X-Hop\r\nX-A: 1\r\nX-Hop: 1\r\n",
	} {
		rb := startRaw(t, func(c net.Conn, br *bufio.Reader) {
			if _, err := readRequest(br); err == nil {
				io.WriteString(c, "HTTP/1.1 200 OK\r\n"+head+"Content-Length: 2\r\n\r\nok")
			}
		})
		hs := newHarness(t, harnessOpts{backends: []string{rb.addr}})
		resp, body := hs.do("GET", "/", nil)
		if body != "ok" || resp.Header.Get("X-Hop") != "" || resp.Header.Get("Connection") != "" {
			t.Errorf("%q: body %q, X-Hop %q, Connection %q reached the client", head, body, resp.Header.Get("X-Hop"), resp.Header.Get("Connection"))
		}
	}
}
