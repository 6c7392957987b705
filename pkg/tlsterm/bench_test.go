package tlsterm

import (
	"crypto/tls"
	"testing"

	"github.com/offloadlb/lb/internal/certgen"
	"github.com/offloadlb/lb/pkg/config"
)

// BenchmarkHandshake runs full TLS 1.3 handshakes, one after another,
// through a Handshaker as a listener does: each on a worker, the
// connection delivered once done. Client and server are both in the
// process, so it counts both sides' work.
func BenchmarkHandshake(b *testing.B) {
	pair, err := certgen.SelfSigned("127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	cert, key, err := pair.Write(b.TempDir(), "site")
	if err != nil {
		b.Fatal(err)
	}
	term, err := New(&config.TLS{Cert: cert, Key: key}, "http", nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	addr, out := serveHandshaker(b, term)
	cfg := &tls.Config{InsecureSkipVerify: true} // no session cache: every handshake is a full one
	b.ReportAllocs()
	for b.Loop() {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		sc := <-out
		sc.Close()
		c.Close()
	}
}
