package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// affinityConfig is a TLS listener (HTTP/1.1 and HTTP/2) in front of
// pool "web", with poolExtra among the pool's keys and health as its
// [pool.health].
func affinityConfig(listenerExtra, poolExtra, health, backends string) string {
	return affinityConfigOn("127.0.0.1:0", listenerExtra, poolExtra, health, backends)
}

// affinityConfigOn is affinityConfig with the listener on bind.
func affinityConfigOn(bind, listenerExtra, poolExtra, health, backends string) string {
	return `
[global]
log_level = "info"
access_log = ""
admin = "127.0.0.1:0"
shutdown_grace = "5s"
watch = false

[[listener]]
name = "https"
bind = "` + bind + `"
pool = "web"
` + listenerExtra + `
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"

[[pool]]
name = "web"
retries = 2
connect_timeout = "500ms"
` + poolExtra + `
  [pool.health]
` + health + "\n" + backends
}

// jarClient is certs.client with a cookie jar, over HTTP/2 when h2.
func jarClient(t *testing.T, certs *testCerts, addr string, h2 bool) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := certs.client(addr, true)
	c.Jar = jar
	if h2 {
		tr := c.Transport.(*http.Transport)
		tr.ForceAttemptHTTP2 = true
		tr.TLSClientConfig.NextProtos = []string{"h2"}
	}
	return c
}

// whoAnswers sends a GET and returns the id of the backend that answered
// and the answer's Set-Cookie.
func whoAnswers(t *testing.T, c *http.Client, path string) (string, string) {
	t.Helper()
	resp, err := c.Get("https://www.example.com" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	return resp.Header.Get("X-Backend"), resp.Header.Get("Set-Cookie")
}

func siteURL() *url.URL { u, _ := url.Parse("https://www.example.com/"); return u }

// TestStickySessions: a client that got the cookie stays on its backend
// over HTTP/1.1 and HTTP/2; the cookie is Secure, HttpOnly and Lax and
// does not give the backend's address away; a forged cookie is replaced;
// a backend that is killed costs its clients no request and gives them a
// new cookie; a drained backend keeps its clients and gets no new ones.
func TestStickySessions(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	bs := []*backend{startBackend(t, "s1"), startBackend(t, "s2"), startBackend(t, "s3")}
	lb := startLB(t, dir, affinityConfig("", `algorithm = "round_robin"
  [pool.sticky]
  cookie = "srv"`, fastHealth, backendsTOML(bs...)))
	addr := lb.addrs["https"]

	for _, h2 := range []bool{false, true} {
		c := jarClient(t, certs, addr, h2)
		first, set := whoAnswers(t, c, "/login")
		if set == "" {
			t.Fatalf("h2=%v: no sticky cookie on the first answer", h2)
		}
		for _, want := range []string{"srv=", "Path=/", "Secure", "HttpOnly", "SameSite=Lax"} {
			if !strings.Contains(set, want) {
				t.Errorf("Set-Cookie %q lacks %s", set, want)
			}
		}
		for _, b := range bs {
			_, port, _ := net.SplitHostPort(b.addr)
			if strings.Contains(set, port) || strings.Contains(set, "127.0.0.1") {
				t.Errorf("Set-Cookie %q gives a backend's address away", set)
			}
		}
		for i := range 50 {
			id, again := whoAnswers(t, c, fmt.Sprintf("/page/%d", i))
			if id != first {
				t.Fatalf("h2=%v: request %d went to %s, the session is on %s", h2, i, id, first)
			}
			if again != "" {
				t.Fatalf("h2=%v: a client with a good cookie got another: %q", h2, again)
			}
		}
	}

	// A forged cookie names no backend: the client is placed and gets a
	// real one.
	c := jarClient(t, certs, addr, false)
	c.Jar.SetCookies(siteURL(), []*http.Cookie{{Name: "srv", Value: "AAAAAAAAAAAAAAAAAAAAAA"}})
	id, set := whoAnswers(t, c, "/")
	if set == "" || strings.Contains(set, "AAAAAAAAAAAAAAAAAAAAAA") {
		t.Fatalf("forged cookie: answer by %s with Set-Cookie %q", id, set)
	}
	if again, _ := whoAnswers(t, c, "/"); again != id {
		t.Fatalf("after a forged cookie was replaced the client went to %s, then %s", id, again)
	}

	// Its backend killed: no request fails, the client moves and stays.
	victim := backendByID(bs, id)
	victim.stop()
	moved, set := whoAnswers(t, c, "/after-kill")
	if moved == id || set == "" {
		t.Fatalf("backend killed: answered by %s (was %s), Set-Cookie %q", moved, id, set)
	}
	for i := range 20 {
		if again, _ := whoAnswers(t, c, fmt.Sprintf("/after-kill/%d", i)); again != moved {
			t.Fatalf("after the move request %d went to %s, not %s", i, again, moved)
		}
	}
	lb.waitState("web", victim.addr, "down", 5*time.Second)
	victim.start()
	lb.waitState("web", victim.addr, "up", 5*time.Second)

	// Drained: its clients stay, new clients never arrive.
	stay := jarClient(t, certs, addr, false)
	home, _ := whoAnswers(t, stay, "/")
	drained := backendByID(bs, home)
	if code, body := lb.post("/pools/web/backends/" + drained.addr + "/drain"); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	for i := range 20 {
		if again, set := whoAnswers(t, stay, fmt.Sprintf("/while-drained/%d", i)); again != home || set != "" {
			t.Fatalf("a client of the drained backend went to %s (Set-Cookie %q)", again, set)
		}
		fresh := jarClient(t, certs, addr, i%2 == 0)
		if id, _ := whoAnswers(t, fresh, "/new-client"); id == home {
			t.Fatalf("a new client was placed on the drained backend %s", home)
		}
	}
	st := lb.status()
	if st.Pools[0].StickyCookie != "srv" {
		t.Errorf("status.json sticky_cookie %q", st.Pools[0].StickyCookie)
	}
	if v := metricValue(lb.metricsText(), `lb_sticky_cookies_total{pool="web",reason="moved"}`); v != 1 {
		t.Errorf("lb_sticky_cookies_total moved = %v, want 1", v)
	}
}

func backendByID(bs []*backend, id string) *backend {
	for _, b := range bs {
		if b.id == id {
			return b
		}
	}
	return nil
}

// TestStickyWebSocket: the 101 answer carries the cookie, and WebSockets
// opened with it reach the same backend.
func TestStickyWebSocket(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b1, b2 := wsEcho(t, "ws1"), wsEcho(t, "ws2")
	lb := startLB(t, dir, affinityConfig("", `  [pool.sticky]`, `  check = "none"`, backendsTOML(b1, b2)))
	addr := lb.addrs["https"]
	dial := func(cookie string) (string, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h := http.Header{}
		if cookie != "" {
			h.Set("Cookie", cookie)
		}
		c, resp, err := websocket.Dial(ctx, "wss://www.example.com/chat", &websocket.DialOptions{HTTPClient: certs.client(addr, false), HTTPHeader: h})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.CloseNow()
		_, hello, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Fields(string(hello))[2], resp.Header.Get("Set-Cookie")
	}
	home, set := dial("")
	if !strings.HasPrefix(set, "lb_srv=") {
		t.Fatalf("101 Switching Protocols without the sticky cookie: %q", set)
	}
	cookie, _, _ := strings.Cut(set, ";")
	for range 6 {
		if id, again := dial(cookie); id != home || again != "" {
			t.Fatalf("a WebSocket with the cookie went to %s (home %s), Set-Cookie %q", id, home, again)
		}
	}
}

// TestHashByHeaderAcrossReload: algorithm hash by a header sends each
// tenant to one backend, and a reload keeps every tenant where it was.
func TestHashByHeaderAcrossReload(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	bs := []*backend{startBackend(t, "h1"), startBackend(t, "h2"), startBackend(t, "h3"), startBackend(t, "h4")}
	cfg := affinityConfigOn(freePort(t), "", `algorithm = "hash"
hash_key = "header:X-Tenant"
hash_balance = 1.5`, `  check = "none"`, backendsTOML(bs...))
	lb := startLB(t, dir, cfg)
	c := certs.client(lb.addrs["https"], true)
	place := func() map[string]string {
		t.Helper()
		m := map[string]string{}
		for i := range 40 {
			tenant := fmt.Sprintf("tenant-%d", i)
			for range 3 {
				req, _ := http.NewRequest("GET", "https://www.example.com/x", nil)
				req.Header.Set("X-Tenant", tenant)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				id := resp.Header.Get("X-Backend")
				if prev, ok := m[tenant]; ok && prev != id {
					t.Fatalf("%s went to %s and then %s", tenant, prev, id)
				}
				m[tenant] = id
			}
		}
		return m
	}
	before := place()
	used := map[string]bool{}
	for _, id := range before {
		used[id] = true
	}
	if len(used) < 3 {
		t.Errorf("40 tenants landed on only %v", used)
	}
	// A reload with another setting of the pool.
	lb.rewrite(strings.Replace(cfg, "retries = 2", "retries = 1", 1))
	if code, body := lb.post("/reload"); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	after := place()
	for tenant, id := range before {
		if after[tenant] != id {
			t.Errorf("after a reload %s moved from %s to %s", tenant, id, after[tenant])
		}
	}
	if st := lb.status(); st.Pools[0].HashKey != "header:X-Tenant" || st.Pools[0].HashBalance != 1.5 {
		t.Errorf("status.json: hash_key %q, hash_balance %v", st.Pools[0].HashKey, st.Pools[0].HashBalance)
	}
}

// TestLeastTimeAvoidsSlowBackend: a backend that answers in 150 ms gets
// few of the requests once least_time has seen it.
func TestLeastTimeAvoidsSlowBackend(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	fast1, fast2, slow := startBackend(t, "fast1"), startBackend(t, "fast2"), startBackend(t, "slow")
	slow.setHook(func(*http.Request) { time.Sleep(150 * time.Millisecond) })
	lb := startLB(t, dir, affinityConfig("", `algorithm = "least_time"`, `  check = "none"`, backendsTOML(fast1, fast2, slow)))
	c := certs.client(lb.addrs["https"], true)
	for range 6 { // each backend answers at least once
		whoAnswers(t, c, "/warm")
	}
	counts := map[string]int{}
	for range 100 {
		id, _ := whoAnswers(t, c, "/")
		counts[id]++
	}
	if counts["slow"] > 5 {
		t.Errorf("least_time sent %d of 100 requests to the slow backend: %v", counts["slow"], counts)
	}
	if counts["fast1"] < 20 || counts["fast2"] < 20 {
		t.Errorf("least_time did not share between the fast backends: %v", counts)
	}
	if ewma := lb.backendStatus("web", slow.addr).LatencyEWMA; ewma < 0.1 {
		t.Errorf("status.json: the slow backend's latency_ewma_seconds is %v", ewma)
	}
}

// TestBackupAndMaintenancePage: a backup takes requests only while both
// primaries are down, and stops as soon as one is back; with every
// backend down the operator's maintenance page answers.
func TestBackupAndMaintenancePage(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	os.MkdirAll(filepath.Join(dir, "pages"), 0o755)
	page := "<!doctype html><h1>Back soon</h1>\n"
	if err := os.WriteFile(filepath.Join(dir, "pages", "maintenance.html"), []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	p1, p2, spare := startBackend(t, "p1"), startBackend(t, "p2"), startBackend(t, "spare")
	backends := backendsTOML(p1, p2) + fmt.Sprintf("  [[pool.backend]]\n  address = %q\n  backup = true\n", spare.addr)
	lb := startLB(t, dir, affinityConfig(`  [listener.error_pages]
  "503" = "pages/maintenance.html"`, `algorithm = "least_conn"`, fastHealth, backends))
	c := certs.client(lb.addrs["https"], true)
	for range 30 {
		if id, _ := whoAnswers(t, c, "/"); id == "spare" {
			t.Fatal("the backup answered while both primaries were up")
		}
	}
	p1.stop()
	p2.stop()
	lb.waitState("web", p1.addr, "down", 5*time.Second)
	lb.waitState("web", p2.addr, "down", 5*time.Second)
	for range 10 {
		if id, _ := whoAnswers(t, c, "/"); id != "spare" {
			t.Fatalf("with both primaries down %s answered", id)
		}
	}
	if !lb.status().Pools[0].BackupsServing {
		t.Error("status.json: backups_serving is false with both primaries down")
	}
	if v := metricValue(lb.metricsText(), `lb_pool_backups_serving{pool="web"}`); v != 1 {
		t.Errorf("lb_pool_backups_serving = %v with both primaries down", v)
	}
	p1.start()
	lb.waitState("web", p1.addr, "up", 5*time.Second)
	for range 10 {
		if id, _ := whoAnswers(t, c, "/"); id != "p1" {
			t.Fatalf("with p1 back %s answered", id)
		}
	}

	// Everything down: the maintenance page, as HTML, with the 503.
	p1.stop()
	spare.stop()
	lb.waitState("web", p1.addr, "down", 5*time.Second)
	lb.waitState("web", spare.addr, "down", 5*time.Second)
	resp, err := c.Get("https://www.example.com/")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 503 || body != page || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Errorf("pool down: %d %q %q, want 503 and the maintenance page", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	// A backend's own 503 passes through untouched.
	p2.start()
	lb.waitState("web", p2.addr, "up", 5*time.Second)
	resp, err = c.Get("https://www.example.com/code/503")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 503 || !strings.HasPrefix(body, "p2 ") {
		t.Errorf("a backend's 503: %d %q, want its own body", resp.StatusCode, body)
	}
	// A reload whose page cannot be read fails and keeps the page served.
	lb.rewrite(strings.Replace(readConfig(t, lb), "pages/maintenance.html", "pages/missing.html", 1))
	if code, body := lb.post("/reload"); code == 200 || !strings.Contains(body, "error_pages.503") {
		t.Errorf("reload with a missing page: %d %s", code, body)
	}
	lb.signal(syscall.SIGHUP)
	p2.stop()
	lb.waitState("web", p2.addr, "down", 5*time.Second)
	resp, err = c.Get("https://www.example.com/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 503 || body != page {
		t.Errorf("after a failed reload: %d %q", resp.StatusCode, body)
	}
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func readConfig(t *testing.T, lb *lbProc) string {
	t.Helper()
	b, err := os.ReadFile(lb.path())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestHashByClientIPOverTCP: a tcp listener's pool hashed by client_ip
// sends one client's connections to one backend.
func TestHashByClientIPOverTCP(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	bs := []*backend{startBackend(t, "t1"), startBackend(t, "t2"), startBackend(t, "t3")}
	lb := startLB(t, dir, `
[global]
access_log = ""
admin = "127.0.0.1:0"
watch = false
[[listener]]
name = "plain"
bind = "127.0.0.1:0"
mode = "tcp"
pool = "web"
[[pool]]
name = "web"
algorithm = "hash"
hash_key = "client_ip"
  [pool.health]
  check = "none"
`+backendsTOML(bs...))
	addr := lb.addrs["plain"]
	seen := map[string]int{}
	for range 12 {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		}, TLSClientConfig: &tls.Config{}}}
		resp, err := c.Get("http://www.example.com/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		seen[resp.Header.Get("X-Backend")]++
	}
	if len(seen) != 1 {
		t.Errorf("one client's connections went to %v; want one backend", seen)
	}
}
