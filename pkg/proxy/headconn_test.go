package proxy

import (
	"errors"
	"net"
	"testing"
)

// TestHeadConnFollowsHeads feeds heads to headConn in the reads fasthttp
// makes (the first byte of a request alone, then the rest, here in two
// parts split at every point): a head ended by a bare-LF blank line
// fails the next read, a CRLFCRLF head and what follows it never do.
func TestHeadConnFollowsHeads(t *testing.T) {
	for _, tc := range []struct {
		name   string
		data   string
		bareLF bool
	}{
		{"CRLF head", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"CRLF head, body with bare-LF blank lines", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\na\n\nb\n\n", false},
		{"request line ended by bare LF", "GET / HTTP/1.1\nHost: a\r\n\r\n", false},
		{"bare LF field line, CRLF head end", "GET / HTTP/1.1\r\nHost: a\r\nX: b\nY: c\r\n\r\n", false},
		{"empty lines before the request line", "\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"every line bare LF", "GET / HTTP/1.1\nHost: a\n\n", true},
		{"bare LF blank line", "GET / HTTP/1.1\r\nHost: a\r\n\n", true},
		{"CRLF blank line after a bare LF line", "GET / HTTP/1.1\r\nHost: a\n\r\n", true},
		{"bare LF blank line, then a CRLF head", "GET / HTTP/1.1\r\nX: a\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
	} {
		for split := 1; split <= len(tc.data); split++ {
			a, b := net.Pipe()
			c := WatchHead(a).(*headConn)
			go func() {
				b.Write([]byte(tc.data[:1]))
				b.Write([]byte(tc.data[1:split]))
				b.Write([]byte(tc.data[split:]))
				b.Close()
			}()
			one := make([]byte, 1)
			if n, err := c.Read(one); n != 1 || err != nil {
				t.Fatalf("%s: first byte: %d, %v", tc.name, n, err)
			}
			buf := make([]byte, 512)
			got := 1
			var err error
			for got < len(tc.data) && err == nil {
				var n int
				n, err = c.Read(buf)
				got += n
			}
			_, err = c.Read(buf)
			if bare := errors.Is(err, errBareLFHead); bare != tc.bareLF {
				t.Errorf("%s, split at %d: read after the head: %v, want bare LF %v", tc.name, split, err, tc.bareLF)
			}
			a.Close()
		}
	}
}
