package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// plainLimitsConfig is a plaintext http listener with limits in front of
// pool "web"; extra goes among the listener's keys.
func plainLimitsConfig(extra, limits, backends string) string {
	return `
[global]
access_log = ""
admin = "127.0.0.1:0"
watch = false
[[listener]]
name = "plain"
bind = "127.0.0.1:0"
pool = "web"
` + extra + `
  [listener.limits]
` + limits + `
[[pool]]
name = "web"
  [pool.health]
  check = "none"
` + backends
}

// clientFrom is an HTTP client whose connections come from the loopback
// address local (127.0.0.2, ...), dialing addr.
func clientFrom(local, addr string, keepAlive bool) *http.Client {
	d := &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: !keepAlive,
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) },
		TLSClientConfig:   insecureTLS(),
	}}
}

// TestRateLimitPerAddress: a burst from one address gets rate + burst
// answers and 429s with Retry-After for the rest, while another address
// is served; a route's own limit is tighter than the listener's.
func TestRateLimitPerAddress(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	b := startBackend(t, "b1")
	lb := startLB(t, dir, plainLimitsConfig(`  [[listener.route]]
  path_prefix = "/search"
  pool = "web"
    [listener.route.limits]
    rate = 0.5
    burst = 2`, "  rate = 2\n  burst = 10", backendsTOML(b)))
	addr := lb.addrs["plain"]
	count := func(c *http.Client, path string, n int) (ok, limited int, retryAfter string) {
		t.Helper()
		for range n {
			resp, err := c.Get("http://www.example.com" + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			switch resp.StatusCode {
			case 200:
				ok++
			case 429:
				limited++
				retryAfter = resp.Header.Get("Retry-After")
			default:
				t.Fatalf("status %d", resp.StatusCode)
			}
		}
		return
	}
	a := clientFrom("127.0.0.2", addr, true)
	ok, limited, ra := count(a, "/", 30)
	if ok < 10 || ok > 11 || limited != 30-ok {
		t.Errorf("30 requests from one address at once: %d answered, %d limited; want the burst of 10 (and at most one refill)", ok, limited)
	}
	if n, err := strconv.Atoi(ra); err != nil || n < 1 || n > 2 {
		t.Errorf("Retry-After %q, want 1 (a token comes every 0.5 s)", ra)
	}
	if ok, limited, _ := count(clientFrom("127.0.0.3", addr, true), "/", 10); ok != 10 || limited != 0 {
		t.Errorf("another address: %d answered, %d limited", ok, limited)
	}
	// The route's own limit (burst 2) on top of the listener's.
	c := clientFrom("127.0.0.4", addr, true)
	if ok, limited, _ := count(c, "/search?q=x", 5); ok != 2 || limited != 3 {
		t.Errorf("route limit: %d answered, %d limited; want 2 and 3", ok, limited)
	}
	if ok, _, _ := count(c, "/", 3); ok != 3 {
		t.Errorf("the route's limit refused the listener's other paths: %d of 3 answered", ok)
	}
	m := lb.metricsText()
	if v := metricValue(m, `lb_requests_limited_total{listener="plain",route=""}`); v < 19 {
		t.Errorf("lb_requests_limited_total for the listener = %v", v)
	}
	if v := metricValue(m, `lb_requests_limited_total{listener="plain",route="/search"}`); v != 3 {
		t.Errorf("lb_requests_limited_total for the route = %v, want 3", v)
	}
	if st := lb.status(); st.Listeners[0].Limits == nil || st.Listeners[0].Limits.Rate != 2 || st.Listeners[0].Routes[0].Limits.LimitedRequests != 3 {
		t.Errorf("status.json: %+v", st.Listeners[0])
	}
}

// TestRateLimitHandshakes: a TLS listener's limits count new handshakes;
// an address over them is closed before any TLS byte.
func TestRateLimitHandshakes(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	b := startBackend(t, "b1")
	lb := startLB(t, dir, affinityConfig(`  [listener.limits]
  rate = 0.2
  burst = 3`, "", `  check = "none"`, backendsTOML(b)))
	addr := lb.addrs["https"]
	handshakes := 0
	for range 6 {
		d := &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}
		c, err := tls.DialWithDialer(d, "tcp", addr, insecureTLS())
		if err == nil {
			handshakes++
			c.Close()
		}
	}
	if handshakes != 3 {
		t.Errorf("6 new connections from one address: %d handshakes, want the burst of 3", handshakes)
	}
	if v := metricValue(lb.metricsText(), `lb_connections_refused_total{listener="https",reason="rate_limited"}`); v != 3 {
		t.Errorf("lb_connections_refused_total rate_limited = %v, want 3", v)
	}
	// Another address handshakes.
	d := &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.6")}}
	c, err := tls.DialWithDialer(d, "tcp", addr, insecureTLS())
	if err != nil {
		t.Fatalf("another address: %v", err)
	}
	c.Close()
}

// TestRateLimitManyAddresses: 20,000 client addresses (PROXY headers)
// through a limited listener leave lb's memory within a fixed bound, and
// limits still hold for a client seen among them.
func TestRateLimitManyAddresses(t *testing.T) {
	if testing.Short() {
		t.Skip("20,000 connections")
	}
	dir := t.TempDir()
	writeCerts(t, dir)
	b := startBackend(t, "b1")
	lb := startLB(t, dir, plainLimitsConfig("accept_proxy_protocol = true", "  rate = 1\n  burst = 2", backendsTOML(b)))
	addr := lb.addrs["plain"]
	ask := func(src string) string {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err.Error()
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "PROXY TCP4 %s 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n", src)
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line
	}
	ask("192.0.2.1") // warm
	before := currentRSS(t, lb.cmd.Process.Pid)
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := 0
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if line := ask(fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255)); !strings.Contains(line, " 200 ") {
					mu.Lock()
					bad++
					mu.Unlock()
				}
			}
		}()
	}
	for i := range 20_000 {
		next <- i
	}
	close(next)
	wg.Wait()
	if bad > 0 {
		t.Errorf("%d of 20,000 first requests from new addresses were not answered 200", bad)
	}
	after := currentRSS(t, lb.cmd.Process.Pid)
	t.Logf("RSS %.1f MiB before 20,000 addresses, %.1f MiB after", before, after)
	// The limiter's table is fixed (64 Ki addresses, 2.6 MiB); the rest is
	// the connections' churn. The race detector's shadow memory multiplies
	// what the heap takes.
	bound := 24.0
	if raceEnabled {
		bound *= 4
	}
	if after-before > bound {
		t.Errorf("RSS grew by %.1f MiB for 20,000 addresses; the bound is %.0f MiB", after-before, bound)
	}
	// One of them is still limited: its burst of 2 is spent after 2 more.
	got := []string{ask("10.0.0.7"), ask("10.0.0.7"), ask("10.0.0.7")}
	if !strings.Contains(got[2], " 429 ") {
		t.Errorf("an address with its bucket spent: %q", got)
	}
}

// currentRSS is a process's resident memory in MiB.
func currentRSS(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(v), "%f", &kb)
			return kb / 1024
		}
	}
	return 0
}
