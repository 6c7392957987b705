package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// freePort returns a loopback address nothing listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// weighted is one backend line of a reload config.
type weighted struct {
	b *backend
	w int
}

// reloadConfig is a TLS listener on a fixed address in front of pool
// "web" with the given backends and weights. extra goes into the pool
// table; a line starting "listener:" goes into the listener's instead.
func reloadConfig(bind string, watch bool, extra string, bs ...weighted) string {
	lextra := ""
	if l, ok := strings.CutPrefix(extra, "listener:"); ok {
		lextra, extra = l, ""
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `
[global]
access_log = ""
admin = "127.0.0.1:0"
shutdown_grace = "5s"
watch = %v

[[listener]]
name = "https"
bind = %q
pool = "web"
%s
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"

[[pool]]
name = "web"
retries = 2
connect_timeout = "500ms"
%s
  [pool.health]
  check = "http"
  path = "/healthz"
  interval = "300ms"
  timeout = "200ms"
`, watch, bind, lextra, extra)
	for _, x := range bs {
		fmt.Fprintf(&sb, "  [[pool.backend]]\n  address = %q\n  weight = %d\n", x.b.addr, x.w)
	}
	return sb.String()
}

// keepAliveClient sends requests one after another on one TLS
// connection, and reports any error on it: with lb keeping connections
// open across reloads, an error is a reset connection.
type keepAliveClient struct {
	addr string
	pool *tls.Config
	conn net.Conn
	br   *bufio.Reader
}

func (c *keepAliveClient) get(path string) (string, error) {
	if c.conn == nil {
		conn, err := tls.Dial("tcp", c.addr, c.pool)
		if err != nil {
			return "", err
		}
		c.conn, c.br = conn, bufio.NewReader(conn)
	}
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c.conn, "GET %s HTTP/1.1\r\nHost: www.example.com\r\n\r\n", path); err != nil {
		c.close()
		return "", fmt.Errorf("write on a kept-alive connection: %w", err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.close()
		return "", fmt.Errorf("read on a kept-alive connection: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.close()
		return "", err
	}
	if resp.Close {
		c.close() // lb asked to close: not an error
	}
	if resp.StatusCode != 200 {
		return string(body), fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(body), nil
}

func (c *keepAliveClient) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

func TestReloadsUnderLoadLoseNothing(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b1, b2, b3, b4 := startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3"), startBackend(t, "b4")
	bind := freePort(t)
	lb := startLB(t, dir, reloadConfig(bind, false, "", weighted{b1, 1}, weighted{b2, 1}))
	tlsCfg := &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com"}

	var ok, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	fail := func(kind string, err error) {
		failed.Add(1)
		mu.Lock()
		if len(failures) < 10 {
			failures = append(failures, kind+": "+err.Error())
		}
		mu.Unlock()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 { // keep-alive clients
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &keepAliveClient{addr: bind, pool: tlsCfg}
			defer c.close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.get("/ka"); err != nil {
					fail("keep-alive", err)
				} else {
					ok.Add(1)
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	for range 2 { // a new connection for every request
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := certs.client(bind, false)
			for {
				select {
				case <-stop:
					return
				default:
				}
				code, _, err := get(cl, "https://www.example.com/new")
				if err != nil || code != 200 {
					fail("new connection", fmt.Errorf("%d %v", code, err))
				} else {
					ok.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}

	// 20 reloads that add, remove and re-weight backends, half by SIGHUP
	// and half through the admin API.
	states := [][]weighted{
		{{b1, 1}, {b2, 1}, {b3, 1}},
		{{b1, 3}, {b2, 1}, {b3, 1}},
		{{b1, 3}, {b3, 1}},
		{{b1, 3}, {b3, 1}, {b4, 2}},
		{{b3, 1}, {b4, 2}},
		{{b1, 1}, {b2, 2}, {b4, 1}},
		{{b2, 1}, {b3, 1}},
	}
	final := []weighted{{b1, 3}, {b3, 1}}
	for i := range 20 {
		next := states[i%len(states)]
		if i == 19 {
			next = final
		}
		// Every third reload also changes the HTTP server's settings, so
		// that new connections go to a new server instance while open
		// ones stay on theirs.
		extra := ""
		if i%3 == 1 {
			extra = fmt.Sprintf("listener:idle_timeout = \"%ds\"", 60+i)
		}
		lb.rewrite(reloadConfig(bind, false, extra, next...))
		if i%2 == 0 {
			lb.signal(syscall.SIGHUP)
		} else if code, body := lb.post("/reload"); code != 200 {
			t.Fatalf("POST /reload: %d %s", code, body)
		}
		lb.waitLog("config reloaded", i+1, 5*time.Second)
		time.Sleep(120 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d requests during 20 reloads, %d failed", ok.Load()+failed.Load(), failed.Load())
	if failed.Load() > 0 || ok.Load() < 200 {
		t.Errorf("%d failed, %d succeeded; first failures:\n%s", failed.Load(), ok.Load(), strings.Join(failures, "\n"))
	}

	// The split follows the final weights, 3:1, and removed backends get
	// nothing.
	before := map[*backend]int64{}
	for _, b := range []*backend{b1, b2, b3, b4} {
		before[b] = b.hits.Load()
	}
	c := &keepAliveClient{addr: bind, pool: tlsCfg}
	defer c.close()
	for range 400 {
		if _, err := c.get("/split"); err != nil {
			t.Fatal(err)
		}
	}
	got := func(b *backend) int64 { return b.hits.Load() - before[b] }
	if got(b2) != 0 || got(b4) != 0 {
		t.Errorf("removed backends got requests: b2 %d, b4 %d", got(b2), got(b4))
	}
	if d := got(b1) - 300; d < -2 || d > 2 || got(b1)+got(b3) != 400 {
		t.Errorf("split b1 %d, b3 %d; want 300 and 100 (weights 3:1)", got(b1), got(b3))
	}
	if n := lb.logCount("config reloaded"); n != 20 {
		t.Errorf("%d reloads logged, want 20", n)
	}
}

func TestBrokenReloadChangesNothing(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b1, b2 := startBackend(t, "b1"), startBackend(t, "b2")
	bind := freePort(t)
	good := reloadConfig(bind, false, "", weighted{b1, 1})
	lb := startLB(t, dir, good)
	c := certs.client(bind, true)

	broken := strings.Replace(reloadConfig(bind, false, "", weighted{b1, 1}, weighted{b2, 1}), `retries = 2`, `retries = 2
retrys = 3`, 1)
	broken = strings.Replace(broken, `interval = "300ms"`, `interval = "soon"`, 1)
	lb.rewrite(broken)
	lb.signal(syscall.SIGHUP)
	lb.waitLog("reload failed", 2, 5*time.Second)
	logs := lb.stderr.String()
	line := 1 + strings.Count(broken[:strings.Index(broken, "retrys")], "\n")
	for _, want := range []string{fmt.Sprintf("lb.toml:%d: pool[0].retrys: unknown key", line), "pool[0].health.interval: \\\"soon\\\" is not a duration"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, tail(logs, 10))
		}
	}
	code, body := lb.post("/reload")
	if code != 422 || !strings.Contains(body, "retrys") || !strings.Contains(body, "unchanged") {
		t.Errorf("POST /reload of a broken file: %d %q", code, body)
	}
	// Still the old config: one backend, serving.
	for range 10 {
		code, body, err := get(c, "https://www.example.com/")
		if err != nil || code != 200 || !strings.HasPrefix(body, "b1 ") {
			t.Fatalf("after a broken reload: %d %v %q", code, err, body)
		}
	}
	if st := lb.status(); len(st.Pools[0].Backends) != 1 || st.Config.LastReloadError == "" {
		t.Errorf("status after a broken reload: %+v", st.Config)
	}
	m := scrape(t, lb)
	if v := value(m, "lb_config_reloads_total", "result", "failure"); v != 2 {
		t.Errorf("lb_config_reloads_total{result=failure} = %v, want 2", v)
	}
	if v := value(m, "lb_config_reloads_total", "result", "success"); v != 0 {
		t.Errorf("lb_config_reloads_total{result=success} = %v, want 0", v)
	}
}

func TestWatchedFileReloads(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b1, b2, b3 := startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3")
	bind := freePort(t)
	lb := startLB(t, dir, reloadConfig(bind, true, "", weighted{b1, 1}))
	lb.waitLog("watching the config file", 1, 5*time.Second)
	c := certs.client(bind, true)
	backendsIn := func() string {
		var ids []string
		for _, b := range lb.status().Pools[0].Backends {
			ids = append(ids, b.Address)
		}
		return strings.Join(ids, ",")
	}

	// In place, as `echo ... > lb.toml` does.
	lb.rewrite(reloadConfig(bind, true, "", weighted{b1, 1}, weighted{b2, 1}))
	lb.waitLog("config reloaded", 1, 5*time.Second)
	if got, want := backendsIn(), b1.addr+","+b2.addr; got != want {
		t.Errorf("after an in-place edit: %s, want %s", got, want)
	}

	// A new file renamed over the old one, as editors do.
	tmp := filepath.Join(dir, ".lb.toml.swp")
	os.WriteFile(tmp, []byte(reloadConfig(bind, true, "", weighted{b3, 1})), 0o644)
	if err := os.Rename(tmp, lb.path()); err != nil {
		t.Fatal(err)
	}
	lb.waitLog("config reloaded", 2, 5*time.Second)
	if got := backendsIn(); got != b3.addr {
		t.Errorf("after a rename: %s, want %s", got, b3.addr)
	}
	if code, body, _ := get(c, "https://www.example.com/"); code != 200 || !strings.HasPrefix(body, "b3 ") {
		t.Errorf("after a rename: %d %q", code, body)
	}

	// A burst of writes is one reload.
	for i := range 5 {
		lb.rewrite(reloadConfig(bind, true, fmt.Sprintf("# write %d", i), weighted{b1, 1}))
		time.Sleep(20 * time.Millisecond)
	}
	lb.waitLog("config reloaded", 3, 5*time.Second)
	time.Sleep(600 * time.Millisecond)
	if n := lb.logCount("config reloaded"); n != 3 {
		t.Errorf("a burst of 5 writes gave %d reloads, want 1", n-2)
	}
	// Touching the file (same content) reloads nothing.
	now := time.Now()
	os.Chtimes(lb.path(), now, now)
	time.Sleep(600 * time.Millisecond)
	if n := lb.logCount("config reloaded"); n != 3 {
		t.Errorf("touching the file reloaded")
	}
}

// TestReloadTurnsWatchOnAndOff: global.watch takes effect on reload, and
// a log_format change is said to wait for a restart.
func TestReloadTurnsWatchOnAndOff(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	b1, b2 := startBackend(t, "b1"), startBackend(t, "b2")
	bind := freePort(t)
	lb := startLB(t, dir, reloadConfig(bind, false, "", weighted{b1, 1}))
	if lb.logCount("watching the config file") != 0 {
		t.Fatal("watching with watch = false")
	}
	backends := func() int { return len(lb.status().Pools[0].Backends) }

	lb.rewrite(reloadConfig(bind, true, "", weighted{b1, 1}))
	if code, body := lb.post("/reload"); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	lb.waitLog("watching the config file", 1, 5*time.Second)
	lb.rewrite(reloadConfig(bind, true, "", weighted{b1, 1}, weighted{b2, 1}))
	lb.waitLog("config reloaded", 2, 5*time.Second)
	if n := backends(); n != 2 {
		t.Fatalf("%d backends after an edit while watching", n)
	}

	// Turned off by an edit the watcher itself picks up.
	lb.rewrite(strings.Replace(reloadConfig(bind, false, "", weighted{b1, 1}), "[global]", "[global]\nlog_format = \"json\"", 1))
	lb.waitLog("no longer watching the config file", 1, 5*time.Second)
	if lb.logCount("global.log_format takes effect when lb restarts") != 1 {
		t.Errorf("no word that log_format waits for a restart:\n%s", tail(lb.stderr.String(), 8))
	}
	lb.rewrite(reloadConfig(bind, false, "", weighted{b1, 1}, weighted{b2, 1}))
	time.Sleep(time.Second)
	if n := lb.logCount("config reloaded"); n != 3 {
		t.Errorf("%d reloads; an edit after watch = false reloaded", n)
	}
	if n := backends(); n != 1 {
		t.Errorf("%d backends; the unwatched edit was applied", n)
	}
}

func TestDrainedBackendFinishesInFlightAndGetsNoNew(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b1, b2 := startBackend(t, "b1"), startBackend(t, "b2")
	arrived := make(chan struct{}, 1)
	b1.setHook(func(r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			time.Sleep(time.Second)
		}
	})
	bind := freePort(t)
	lb := startLB(t, dir, reloadConfig(bind, false, "", weighted{b1, 1}, weighted{b2, 1}))
	c := certs.client(bind, true)

	// Send the slow request until it lands on b1.
	done := make(chan string, 1)
	go func() {
		for {
			code, body, err := get(certs.client(bind, false), "https://www.example.com/slow")
			if err != nil || code != 200 {
				done <- fmt.Sprintf("%d %v", code, err)
				return
			}
			if strings.HasPrefix(body, "b1 ") {
				done <- "ok"
				return
			}
		}
	}()
	select {
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow request never reached b1")
	}
	if code, body := lb.post("/pools/web/backends/" + b1.addr + "/drain"); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	if st := lb.backendStatus("web", b1.addr); st.State != "draining" {
		t.Errorf("status says %s, want draining (a request is in flight)", st.State)
	}
	hits := b1.hits.Load()
	for range 20 {
		code, body, err := get(c, "https://www.example.com/after")
		if err != nil || code != 200 || !strings.HasPrefix(body, "b2 ") {
			t.Fatalf("request while b1 drains: %d %v %q", code, err, body)
		}
	}
	if r := <-done; r != "ok" {
		t.Fatalf("the in-flight request on the drained backend: %s", r)
	}
	if b1.hits.Load() != hits {
		t.Errorf("the drained backend got %d new requests", b1.hits.Load()-hits)
	}
	if st := lb.backendStatus("web", b1.addr); st.State != "drained" {
		t.Errorf("status says %s once the request finished, want drained", st.State)
	}
	if code, _ := lb.post("/pools/web/backends/" + b1.addr + "/enable"); code != 200 {
		t.Fatal("enable failed")
	}
	seen := false
	for range 10 {
		_, body, _ := get(c, "https://www.example.com/")
		seen = seen || strings.HasPrefix(body, "b1 ")
	}
	if !seen {
		t.Error("an enabled backend gets no requests")
	}
	if code, _ := lb.post("/pools/web/backends/10.9.9.9:1/drain"); code != 404 {
		t.Errorf("draining an unknown backend: %d, want 404", code)
	}
}

func TestMetricsMatchTheRequestsSent(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b1, b2 := startBackend(t, "b1"), startBackend(t, "b2")
	bind := freePort(t)
	lb := startLB(t, dir, reloadConfig(bind, false, "", weighted{b1, 1}, weighted{b2, 1}))
	c := certs.client(bind, true)
	for range 20 {
		if code, _, err := get(c, "https://www.example.com/ok"); err != nil || code != 200 {
			t.Fatal(code, err)
		}
	}
	for range 6 {
		if code, _, err := get(c, "https://www.example.com/code/404"); err != nil || code != 404 {
			t.Fatal(code, err)
		}
	}
	// A request lb refuses before routing.
	conn, err := tls.Dial("tcp", bind, &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	io.ReadAll(conn)
	conn.Close()

	m := scrape(t, lb)
	for _, b := range []*backend{b1, b2} {
		if v := value(m, "lb_requests_total", "listener", "https", "pool", "web", "backend", b.addr, "code", "200"); v != 10 {
			t.Errorf("lb_requests_total{backend=%s,code=200} = %v, want 10", b.addr, v)
		}
		if v := value(m, "lb_requests_total", "backend", b.addr, "code", "404"); v != 3 {
			t.Errorf("lb_requests_total{backend=%s,code=404} = %v, want 3", b.addr, v)
		}
		if v := value(m, "lb_backend_up", "pool", "web", "backend", b.addr); v != 1 {
			t.Errorf("lb_backend_up{%s} = %v", b.addr, v)
		}
		if v, ok := lookup(m, "lb_backend_active_connections", "pool", "web", "backend", b.addr); !ok || v != 0 {
			t.Errorf("lb_backend_active_connections{%s} = %v (%v)", b.addr, v, ok)
		}
	}
	if v := value(m, "lb_requests_total", "listener", "https", "pool", "", "backend", "", "code", "400"); v != 1 {
		t.Errorf("lb_requests_total for the refused request = %v, want 1", v)
	}
	if v := histogramCount(m, "lb_request_duration_seconds", "listener", "https", "pool", "web"); v != 26 {
		t.Errorf("lb_request_duration_seconds_count = %v, want 26", v)
	}
	if v := value(m, "lb_tls_handshakes_total", "listener", "https", "version", "1.3", "result", "success"); v < 2 {
		t.Errorf("lb_tls_handshakes_total{success} = %v, want at least 2", v)
	}
	if v, ok := lookup(m, "lb_connections_active", "listener", "https"); !ok || v < 1 {
		t.Errorf("lb_connections_active = %v (%v), want the client's open connection", v, ok)
	}
	if v := value(m, "lb_tls_certificate_expiry_seconds", "listener", "https"); v < 300*24*3600 {
		t.Errorf("lb_tls_certificate_expiry_seconds = %v, want about a year", v)
	}
	if _, ok := m["lb_config_reloads_total"]; !ok {
		t.Error("lb_config_reloads_total missing")
	}
}

// scrape fetches and parses lb's /metrics.
func scrape(t *testing.T, lb *lbProc) map[string]*familyT {
	t.Helper()
	resp, err := http.Get("http://" + lb.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// lookup finds the value of the sample of a family whose labels include
// the given name/value pairs; more than one match is summed.
func lookup(m map[string]*familyT, name string, labels ...string) (float64, bool) {
	f := m[name]
	if f == nil {
		return 0, false
	}
	sum, found := 0.0, false
outer:
	for _, s := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range s.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue outer
			}
		}
		found = true
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Untyped != nil:
			sum += s.Untyped.GetValue()
		}
	}
	return sum, found
}

func value(m map[string]*familyT, name string, labels ...string) float64 {
	v, _ := lookup(m, name, labels...)
	return v
}

func histogramCount(m map[string]*familyT, name string, labels ...string) float64 {
	f := m[name]
	if f == nil {
		return -1
	}
outer:
	for _, s := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range s.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue outer
			}
		}
		return float64(s.GetHistogram().GetSampleCount())
	}
	return -1
}

type familyT = dto.MetricFamily

func TestReloadAddsAndRemovesListenersAndRereadsCertificates(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b1 := startBackend(t, "b1")
	bind, extra := freePort(t), freePort(t)
	base := reloadConfig(bind, false, "", weighted{b1, 1})
	lb := startLB(t, dir, base)
	c := certs.client(bind, true)
	if code, _, err := get(c, "https://www.example.com/first"); code != 200 {
		t.Fatalf("before: %d %v", code, err)
	}

	// Add a plaintext listener.
	withExtra := base + fmt.Sprintf("\n[[listener]]\nname = \"plain\"\nbind = %q\npool = \"web\"\n", extra)
	lb.rewrite(withExtra)
	lb.signal(syscall.SIGHUP)
	lb.waitLog("config reloaded", 1, 5*time.Second)
	if code, body, err := get(http.DefaultClient, "http://"+extra+"/added"); err != nil || code != 200 || !strings.HasPrefix(body, "b1 ") {
		t.Fatalf("added listener: %d %v %q", code, err, body)
	}

	// A new certificate for the TLS listener, read on reload.
	before := serverCert(t, bind)
	next := writeCerts(t, t.TempDir())
	for _, f := range []string{"site.pem", "site.key"} {
		data, err := os.ReadFile(filepath.Join(next.dir, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(certs.dir, f), data, 0o600)
	}
	// Remove the plaintext listener in the same reload.
	lb.rewrite(base)
	lb.signal(syscall.SIGHUP)
	lb.waitLog("config reloaded", 2, 5*time.Second)
	if after := serverCert(t, bind); after == before {
		t.Error("the listener still serves the old certificate after a reload")
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", extra, 200*time.Millisecond)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("the removed listener still accepts connections")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The kept listener carries on: the client's keep-alive connection
	// (made with the old certificate) still works, and new connections
	// verify against the new one.
	if code, _, err := get(c, "https://www.example.com/kept"); code != 200 {
		t.Fatalf("kept listener, old connection: %d %v", code, err)
	}
	if code, _, err := get(next.client(bind, false), "https://www.example.com/new"); code != 200 {
		t.Fatalf("kept listener, new connection: %d %v", code, err)
	}
}

// serverCert returns the serial number of the certificate a TLS listener
// serves.
func serverCert(t *testing.T, addr string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: "www.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}
