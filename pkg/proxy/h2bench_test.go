package proxy

import (
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/testutil"
	"github.com/offloadlb/lb/pkg/h2"
)

// BenchmarkHTTP2Request measures a request over HTTP/2 through lb to a
// backend, one stream at a time on one client connection: lb's HTTP/2
// server, its request workers and the handler, over TLS on loopback.
// allocs/op counts the raw client's frames and the backend too.
func BenchmarkHTTP2Request(b *testing.B) {
	t := &testing.T{}
	hs := newHarness(t, harnessOpts{backends: []string{startFastBackend(b)}})
	addr, _ := h2Serve(t, hs, h2.Options{})
	r := testutil.DialH2(t, addr)
	r.Conn.SetDeadline(time.Time{})
	credit := func(n int) uint32 { return uint32(n) }
	b.ReportAllocs()
	id := uint32(1)
	for b.Loop() {
		r.Request(id, "GET", "/bench?x=1", true)
		if resp := r.Response(id, credit); resp.Status != "200" || len(resp.Body) != 100 {
			b.Fatalf("status %q, %d bytes", resp.Status, len(resp.Body))
		}
		id += 2
	}
}
