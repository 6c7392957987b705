package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestListenerDenyBeforeTLS: a denied address is closed before any TLS
// byte, counted, and let in once a reload allows it.
func TestListenerDenyBeforeTLS(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	bind := freePort(t)
	cfg := affinityConfigOn(bind, `deny = ["127.0.0.0/8"]`, "", `  check = "none"`, backendsTOML(b))
	lb := startLB(t, dir, cfg)
	c, err := net.DialTimeout("tcp", bind, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	n, err := c.Read(make([]byte, 1))
	c.Close()
	if n != 0 || err == nil {
		t.Fatalf("a denied client read %d bytes (%v)", n, err)
	}
	if _, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", bind, &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com"}); err == nil {
		t.Fatal("a denied client completed a TLS handshake")
	}
	if v := metricValue(lb.metricsText(), `lb_connections_refused_total{listener="https",reason="denied"}`); v < 2 {
		t.Errorf("lb_connections_refused_total denied = %v, want 2", v)
	}
	lb.rewrite(strings.Replace(cfg, `deny = ["127.0.0.0/8"]`, `allow = ["127.0.0.0/8"]`, 1))
	if code, body := lb.post("/reload"); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if code, _, err := get(certs.client(bind, false), "https://www.example.com/"); err != nil || code != 200 {
		t.Fatalf("allowed after the reload: %d %v", code, err)
	}
}

// TestDenyBehindProxyProtocol: behind accept_proxy_protocol the PROXY
// header's address is the one checked.
func TestDenyBehindProxyProtocol(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	b := startBackend(t, "b1")
	lb := startLB(t, dir, `
[global]
access_log = ""
admin = "127.0.0.1:0"
watch = false
[[listener]]
name = "plain"
bind = "127.0.0.1:0"
pool = "web"
accept_proxy_protocol = true
deny = ["203.0.113.0/24"]
[[pool]]
name = "web"
  [pool.health]
  check = "none"
`+backendsTOML(b))
	ask := func(src string) string {
		t.Helper()
		c, err := net.DialTimeout("tcp", lb.addrs["plain"], 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "PROXY TCP4 %s 127.0.0.1 5555 80\r\nGET /who HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n", src)
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line
	}
	if got := ask("203.0.113.9"); got != "" {
		t.Errorf("a denied PROXY address got %q", got)
	}
	if got := ask("198.51.100.1"); !strings.Contains(got, " 200 ") {
		t.Errorf("an allowed PROXY address got %q", got)
	}
}

// TestRoutePolicies: a route that refuses other addresses (403), one
// that strips its prefix (the query kept), one that redirects, and
// header rules of the listener and of a route, both ways, over HTTP/1.1
// and HTTP/2.
func TestRoutePolicies(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	var mu sync.Mutex
	var seen *http.Request
	b.setHook(func(r *http.Request) {
		mu.Lock()
		seen = r
		mu.Unlock()
	})
	lb := startLB(t, dir, affinityConfig(`  [listener.headers]
  request_set = { "X-Env" = "prod" }
  request_remove = ["X-Debug"]
  response_set = { "X-Frame-Options" = "DENY" }
  [[listener.route]]
  path_prefix = "/admin/"
  pool = "web"
  allow = ["10.0.0.0/8"]
  [[listener.route]]
  path_prefix = "/api/"
  pool = "web"
  strip_prefix = true
    [listener.route.headers]
    request_set = { "X-Api" = "1" }
    response_remove = ["X-Backend"]
  [[listener.route]]
  host = "localhost"
  redirect = "https://www.example.com"`, "", `  check = "none"`, backendsTOML(b)))
	addr := lb.addrs["https"]
	for _, h2 := range []bool{false, true} {
		c := certs.client(addr, true)
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		if h2 {
			tr := c.Transport.(*http.Transport)
			tr.ForceAttemptHTTP2 = true
			tr.TLSClientConfig.NextProtos = []string{"h2"}
		}
		do := func(host, path string) (*http.Response, string) {
			t.Helper()
			req, _ := http.NewRequest("GET", "https://"+host+path, nil)
			req.Header.Set("X-Debug", "1")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if h2 != (resp.ProtoMajor == 2) {
				t.Fatalf("h2=%v: answered over %s", h2, resp.Proto)
			}
			return resp, string(body)
		}
		resp, _ := do("www.example.com", "/admin/users")
		if resp.StatusCode != 403 || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("h2=%v: /admin/ from 127.0.0.1: %d, X-Frame-Options %q", h2, resp.StatusCode, resp.Header.Get("X-Frame-Options"))
		}
		resp, body := do("www.example.com", "/api/v1/items?sort=name&q=a%20b")
		mu.Lock()
		r := seen
		mu.Unlock()
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "b1 GET /v1/items?sort=name&q=a%20b ") {
			t.Errorf("h2=%v: strip_prefix: %d %q", h2, resp.StatusCode, body)
		}
		if r.Header.Get("X-Env") != "prod" || r.Header.Get("X-Api") != "1" || r.Header.Get("X-Debug") != "" {
			t.Errorf("h2=%v: the backend got X-Env %q, X-Api %q, X-Debug %q", h2, r.Header.Get("X-Env"), r.Header.Get("X-Api"), r.Header.Get("X-Debug"))
		}
		if resp.Header.Get("X-Backend") != "" || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("h2=%v: response rules: X-Backend %q, X-Frame-Options %q", h2, resp.Header.Get("X-Backend"), resp.Header.Get("X-Frame-Options"))
		}
		resp, _ = do("www.example.com", "/other")
		if resp.Header.Get("X-Backend") != "b1" {
			t.Errorf("h2=%v: a route's response rule applied to another route", h2)
		}
		resp, _ = do("localhost", "/page?x=1")
		if resp.StatusCode != 308 || resp.Header.Get("Location") != "https://www.example.com/page?x=1" {
			t.Errorf("h2=%v: redirect: %d %q", h2, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
}
