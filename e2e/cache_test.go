package e2e

import (
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestCacheEndToEnd: a pool with [pool.cache] in the real binary: a miss,
// then hits that never reach the backend, for HTTP/1.1 and HTTP/2
// clients; X-Cache and Age; the metrics and status.json; a reload that
// keeps the cache; a purge by URL and of everything through the admin API.
func TestCacheEndToEnd(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	var hits atomic.Int64
	b.setHook(func(r *http.Request) { hits.Add(1) })
	cfg := frontConfig("", "", "", backendsTOML(b)+`
  [pool.cache]
  max_size = "8MiB"
  max_object = "256KiB"
`)
	lb := startLB(t, dir, cfg)
	c := certs.client(lb.addrs["https"], true)
	getX := func(path string) (xcache, age, body string) {
		t.Helper()
		resp, err := c.Get("https://www.example.com" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Header.Get("X-Cache"), resp.Header.Get("Age"), string(b)
	}
	// No freshness information: nothing stored.
	getX("/plain")
	if x, _, _ := getX("/plain"); x != "MISS" || hits.Load() != 2 {
		t.Fatalf("a page without Cache-Control: %q, %d backend hits", x, hits.Load())
	}
	if x, _, _ := getX("/cacheable/a"); x != "MISS" {
		t.Fatalf("first: %q", x)
	}
	for range 5 {
		if x, age, body := getX("/cacheable/a"); x != "HIT" || age == "" || !strings.HasPrefix(body, "b1 GET /cacheable/a") {
			t.Fatalf("hit: X-Cache %q, Age %q, body %q", x, age, body)
		}
	}
	if hits.Load() != 3 {
		t.Errorf("%d backend hits, want 3", hits.Load())
	}
	// The access log says how the cache answered (written in the
	// background: wait for it).
	for deadline := time.Now().Add(2 * time.Second); !strings.Contains(lb.stdout.String(), "cache=HIT"); {
		if time.Now().After(deadline) {
			t.Errorf("access log lacks the cache result:\n%s", tail(lb.stdout.String(), 5))
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	m := scrape(t, lb)
	if v, _ := lookup(m, "lb_cache_requests_total", "pool", "web", "result", "hit"); v < 5 {
		t.Errorf("lb_cache_requests_total{result=hit} = %v", v)
	}
	if v, _ := lookup(m, "lb_cache_objects", "pool", "web"); v != 1 {
		t.Errorf("lb_cache_objects = %v, want 1", v)
	}
	st := lb.status()
	if cs := st.Pools[0].Cache; cs == nil || cs.Objects != 1 || cs.Results["HIT"] < 5 {
		t.Errorf("status.json cache: %+v", cs)
	}

	if curl, err := exec.LookPath("curl"); err == nil {
		// An HTTP/2 client shares the cache (with its own key: curl
		// sends the port in Host).
		port := lb.addrs["https"][strings.LastIndexByte(lb.addrs["https"], ':')+1:]
		url := "https://www.example.com:" + port + "/cacheable/a"
		out, err := runCmd(t, 10*time.Second, curl, "-sS", "--http2", "-D", "-", "-o", "/dev/null", "-o", "/dev/null", "--cacert", dir+"/certs/ca.pem",
			"--resolve", "www.example.com:"+port+":127.0.0.1", url, url)
		out = strings.ToLower(out)
		if err != nil || strings.Count(out, "http/2 200") != 2 || !strings.Contains(out, "x-cache: miss") || !strings.Contains(out, "x-cache: hit") {
			t.Errorf("curl --http2: %v\n%s", err, out)
		}
		// A range of the stored page, as a download manager asks.
		before := hits.Load()
		out, err = runCmd(t, 10*time.Second, curl, "-sS", "-r", "0-1", "-D", "-", "--cacert", dir+"/certs/ca.pem",
			"--resolve", "www.example.com:"+port+":127.0.0.1", url)
		low := strings.ToLower(out)
		if err != nil || !strings.Contains(low, "206") || !strings.Contains(low, "content-range: bytes 0-1/") ||
			!strings.Contains(low, "x-cache: hit") || !strings.HasSuffix(out, "b1") || hits.Load() != before {
			t.Errorf("curl -r 0-1: %v\n%s", err, out)
		}
	}

	// A reload that leaves [pool.cache] alone keeps what it holds.
	lb.rewrite(strings.Replace(cfg, `bind = "127.0.0.1:0"`, `bind = "`+lb.addrs["https"]+`"`, 1))
	if code, body := lb.post("/reload"); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if x, _, _ := getX("/cacheable/a"); x != "HIT" {
		t.Errorf("after a reload: %q", x)
	}

	if code, body := lb.post("/pools/web/cache/purge?url=https://www.example.com/cacheable/a"); code != 200 || !strings.Contains(body, "purged 1") {
		t.Fatalf("purge: %d %s", code, body)
	}
	if x, _, _ := getX("/cacheable/a"); x != "MISS" {
		t.Errorf("after purging the URL: %q", x)
	}
	getX("/cacheable/b")
	if code, body := lb.post("/pools/web/cache/purge"); code != 200 || !strings.Contains(body, "purged 3") {
		t.Errorf("purge all: %d %s", code, body)
	}
	if code, _ := lb.post("/pools/nope/cache/purge"); code != 404 {
		t.Errorf("purge of an unknown pool: %d", code)
	}
}
