package admin

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

type fakeSource struct {
	reloadErr error
	drained   map[string]bool
	purged    string
}

func (f *fakeSource) Status() Status {
	return Status{Version: "test", Pools: []PoolStatus{{Name: "web", Backends: []BackendStatus{{Address: "10.0.0.1:80", State: "up"}}}}}
}

func (f *fakeSource) ReloadFromSource() error { return f.reloadErr }

func (f *fakeSource) SetBackendDrained(pool, addr string, d bool) error {
	if pool != "web" || addr != "10.0.0.1:80" {
		return fmt.Errorf("%w: %s %s", ErrNotFound, pool, addr)
	}
	f.drained[addr] = d
	return nil
}

func (f *fakeSource) PurgeCache(pool, url string) (int, error) {
	switch {
	case pool != "web":
		return 0, fmt.Errorf("%w: no pool %q", ErrNotFound, pool)
	case url == "":
		return 7, nil
	case url == "bad":
		return 0, errors.New("url \"bad\": want host/path")
	}
	f.purged = url
	return 1, nil
}

func start(t *testing.T, src Source, opts Options) string {
	t.Helper()
	s, err := New("127.0.0.1:0", src, opts, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Close)
	return "http://" + s.Addr()
}

func do(t *testing.T, method, url string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	src := &fakeSource{drained: map[string]bool{}}
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "lb_test_total", Help: "x"})
	reg.MustRegister(c)
	c.Add(3)
	base := start(t, src, Options{Gatherer: reg})

	for _, tc := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/healthz", 200, "ok"},
		{"GET", "/status.json", 200, `"version": "test"`},
		{"GET", "/status", 200, "<title>lb status</title>"},
		{"GET", "/metrics", 200, "lb_test_total 3"},
		{"POST", "/reload", 200, "reloaded"},
		{"GET", "/reload", 405, ""},
		{"POST", "/pools/web/backends/10.0.0.1:80/drain", 200, "drained"},
		{"POST", "/pools/web/backends/10.0.0.1:80/enable", 200, "enabled"},
		{"POST", "/pools/api/backends/10.0.0.1:80/drain", 404, "not found"},
		{"GET", "/debug/pprof/", 404, "profiling is off"},
		{"POST", "/pools/web/cache/purge", 200, "purged 7 URL(s) from the cache of pool web"},
		{"POST", "/pools/web/cache/purge?url=https://www.example.com/a%3Fb", 200, "purged 1 URL(s)"},
		{"POST", "/pools/web/cache/purge?url=bad", 400, "want host/path"},
		{"POST", "/pools/api/cache/purge", 404, "no pool"},
		{"GET", "/pools/web/cache/purge", 405, ""},
	} {
		code, body := do(t, tc.method, base+tc.path)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("%s %s: %d %q, want %d containing %q", tc.method, tc.path, code, body, tc.code, tc.body)
		}
	}
	if src.purged != "https://www.example.com/a?b" {
		t.Errorf("purge got url %q", src.purged)
	}
	if src.drained["10.0.0.1:80"] {
		t.Error("enable did not undo drain")
	}

	src.reloadErr = errors.New("lb.toml:3: pool[0].name: missing")
	if code, body := do(t, "POST", base+"/reload"); code != 422 || !strings.Contains(body, "lb.toml:3") {
		t.Errorf("failed reload: %d %q", code, body)
	}
}

func TestCrossSiteRequestsRefused(t *testing.T) {
	src := &fakeSource{drained: map[string]bool{}}
	base := start(t, src, Options{})
	drain := base + "/pools/web/backends/10.0.0.1:80/drain"
	if code, _ := do(t, "POST", drain, "Sec-Fetch-Site", "cross-site"); code != 403 {
		t.Errorf("cross-site POST: %d, want 403", code)
	}
	if code, _ := do(t, "POST", drain, "Origin", "https://evil.example"); code != 403 {
		t.Errorf("foreign Origin: %d, want 403", code)
	}
	if code, _ := do(t, "POST", drain, "Sec-Fetch-Site", "same-site"); code != 403 {
		t.Errorf("same-site POST (another port or subdomain): %d, want 403", code)
	}
	// A sandboxed frame or a local file sends Origin: null; without
	// Sec-Fetch-Site nothing says it is this server's own page.
	if code, _ := do(t, "POST", drain, "Origin", "null"); code != 403 {
		t.Errorf("Origin null: %d, want 403", code)
	}
	if src.drained["10.0.0.1:80"] {
		t.Fatal("a cross-site request drained a backend")
	}
	host := strings.TrimPrefix(base, "http://")
	if code, _ := do(t, "POST", drain, "Origin", "http://"+host, "Sec-Fetch-Site", "same-origin"); code != 200 {
		t.Errorf("the status page's own POST: %d, want 200", code)
	}
	if code, _ := do(t, "GET", base+"/status.json", "Sec-Fetch-Site", "cross-site"); code != 200 {
		t.Errorf("cross-site GET of status: %d, want 200 (reading is harmless)", code)
	}
}

// TestCrossSiteProfileRefused: the profiler answers GET, but a page on
// another site must not make the process profile or trace itself.
func TestCrossSiteProfileRefused(t *testing.T) {
	base := start(t, &fakeSource{}, Options{Pprof: true})
	for _, method := range []string{"GET", "HEAD", "OPTIONS"} {
		if code, _ := do(t, method, base+"/debug/pprof/profile?seconds=1", "Sec-Fetch-Site", "cross-site"); code != 403 {
			t.Errorf("cross-site %s of a profile: %d, want 403", method, code)
		}
	}
	if code, _ := do(t, "GET", base+"/debug/pprof/", "Sec-Fetch-Site", "none"); code != 200 {
		t.Errorf("the profiler's index typed into the address bar: %d, want 200", code)
	}
}

func TestPprofCanBeTurnedOn(t *testing.T) {
	s, err := New("127.0.0.1:0", &fakeSource{}, Options{}, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer s.Close()
	s.SetPprof(true)
	if code, body := do(t, "GET", "http://"+s.Addr()+"/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("pprof on: %d", code)
	}
}
