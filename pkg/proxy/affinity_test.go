package proxy

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/offloadlb/lb/pkg/affinity"
	"github.com/offloadlb/lb/pkg/balancer"
)

// TestAffinityLeavesCookiesAlone: a sticky pool hashed by a cookie reads
// the client's cookies without changing what the backend gets.
func TestAffinityLeavesCookiesAlone(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, algorithm: balancer.Hash})
	hs.up.Key = affinity.NewKey("cookie", "sess")
	hs.up.Sticky = affinity.NewSticky(affinity.StickyConfig{Cookie: "lb_srv"}, "web", hs.up.Pool.Backends, []byte("0123456789abcdef"), nil)
	const c = `sess="a\054b"; pref=dark; x=y"z`
	_, body := hs.do("GET", "/", nil, "Cookie", c)
	if got := decodeSeen(t, body).Header.Get("Cookie"); got != c {
		t.Errorf("the backend got Cookie %q, the client sent %q", got, c)
	}
}

// TestLeastTimeChargesEachAttempt: the time a request spends on a backend
// that does not answer is that backend's, not the one that answers the
// retry's.
func TestLeastTimeChargesEachAttempt(t *testing.T) {
	hang := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		readRequest(br)
		time.Sleep(2 * time.Second) // never answers in time
	})
	good := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{hang.addr, good.addr}, algorithm: balancer.LeastTime, retries: 1, responseTimeout: 300 * time.Millisecond})
	for i := 0; i < 10 && hang.conns.Load() == 0; i++ {
		if resp, _ := hs.do("GET", "/x", nil); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if hang.conns.Load() == 0 {
		t.Fatal("no request reached the hanging backend")
	}
	now := time.Now()
	good1, hang1 := hs.up.Pool.Backends[1].LatencyEWMA(now), hs.up.Pool.Backends[0].LatencyEWMA(now)
	if good1 > 100*time.Millisecond || hang1 < 250*time.Millisecond {
		t.Errorf("the backend that answered is charged %v, the one that hung %v", good1, hang1)
	}
	// From now on the hanging one is avoided.
	before := hang.conns.Load()
	for range 10 {
		hs.do("GET", "/y", nil)
	}
	if n := hang.conns.Load() - before; n > 0 {
		t.Errorf("least_time sent %d more requests to the backend that hung", n)
	}
}
