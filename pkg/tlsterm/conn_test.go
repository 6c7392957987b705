package tlsterm

import (
	"crypto/tls"
	"net"
	"testing"
)

// rawWrapper wraps a connection as the HTTP/1.1 server's and the
// listener's wrappers do.
type rawWrapper struct{ net.Conn }

func (w rawWrapper) RawConn() net.Conn { return w.Conn }

// TestConnOf: the terminated connection is found through wrappers, and
// only there; HTTP2 follows ALPN.
func TestConnOf(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	h2 := &Conn{Conn: tls.Server(a, &tls.Config{}), Proto: "h2"}
	h1 := &Conn{Conn: tls.Server(a, &tls.Config{}), Proto: "http/1.1"}
	for _, tc := range []struct {
		name  string
		nc    net.Conn
		want  *Conn
		http2 bool
	}{
		{"itself", h2, h2, true},
		{"wrapped", rawWrapper{h2}, h2, true},
		{"wrapped twice", rawWrapper{rawWrapper{h1}}, h1, false},
		{"plaintext", rawWrapper{a}, nil, false},
		{"plain socket", a, nil, false},
		{"nil", nil, nil, false},
	} {
		got := ConnOf(tc.nc)
		if got != tc.want {
			t.Errorf("%s: ConnOf = %p, want %p", tc.name, got, tc.want)
		}
		if got.HTTP2() != tc.http2 {
			t.Errorf("%s: HTTP2 = %v", tc.name, !tc.http2)
		}
	}
}
