package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/testutil"
)

// baseConfig is a TLS listener on a free port in front of pool "web".
func baseConfig(health, backends string) string {
	return `
[global]
log_level = "info"
access_log = ""
admin = "127.0.0.1:0"
shutdown_grace = "10s"
watch = false

[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "web"
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"
  [[listener.tls.sni]]
  cert = "certs/api.pem"
  key = "certs/api.key"

[[pool]]
name = "web"
retries = 1
connect_timeout = "500ms"
  [pool.health]
` + health + "\n" + backends
}

const fastHealth = `  check = "http"
  path = "/healthz"
  interval = "200ms"
  timeout = "100ms"
  rise = 2
  fall = 2`

func TestRoundRobinOverTLS(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	bs := []*backend{startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3")}
	lb := startLB(t, dir, baseConfig(fastHealth, backendsTOML(bs...)))
	addr := lb.addrs["https"]
	c := certs.client(addr, true)

	counts := map[string]int{}
	for i := range 300 {
		code, body, err := get(c, "https://www.example.com/page?n="+fmt.Sprint(i))
		if err != nil || code != 200 {
			t.Fatalf("request %d: %d %v", i, code, err)
		}
		id, rest, _ := strings.Cut(body, " ")
		counts[id]++
		if !strings.Contains(rest, "xff=127.0.0.1 proto=https") {
			t.Fatalf("forwarded headers missing: %q", body)
		}
	}
	for _, b := range bs {
		if counts[b.id] != 100 {
			t.Errorf("round robin: %v, want 100 each", counts)
			break
		}
	}

	// The same through curl, as an operator would check it.
	curl := needTool(t, "curl")
	_, port, _ := net.SplitHostPort(addr)
	seen := map[string]bool{}
	for range 3 {
		out, err := runCmd(t, 10*time.Second, curl, "-sS", "--cacert", filepath.Join(certs.dir, "ca.pem"),
			"--resolve", "www.example.com:"+port+":127.0.0.1", "https://www.example.com:"+port+"/from-curl")
		if err != nil {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		id, _, _ := strings.Cut(out, " ")
		seen[id] = true
	}
	if len(seen) != 3 {
		t.Errorf("three curl requests reached %v, want all three backends", seen)
	}
}

func TestBackendStoppedMidRunAndBack(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	bs := []*backend{startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3")}
	lb := startLB(t, dir, baseConfig(fastHealth, backendsTOML(bs...)))
	c := certs.client(lb.addrs["https"], true)

	var failed, total atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				code, body, err := get(c, "https://www.example.com/")
				total.Add(1)
				if err != nil || code != 200 {
					failed.Add(1)
					t.Errorf("client request failed: %d %v %q", code, err, body)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()

	time.Sleep(300 * time.Millisecond)
	victim := bs[1]
	victim.stop()
	// Detection bound: interval*fall + timeout = 200ms*2 + 100ms, plus
	// one interval for where in its cycle the checker was.
	// Under the race detector on a loaded machine the checker's own
	// timeouts stretch: the bounds get three times the room.
	slack := time.Duration(1)
	if raceEnabled {
		slack = 3
	}
	took := lb.waitState("web", victim.addr, "down", 3*time.Second)
	if limit := 700 * time.Millisecond * slack; took > limit {
		t.Errorf("marked down after %s, want within %s", took, limit)
	}
	before := lb.backendStatus("web", victim.addr).Requests
	time.Sleep(400 * time.Millisecond)
	if after := lb.backendStatus("web", victim.addr).Requests; after != before {
		t.Errorf("a down backend was still sent %d requests", after-before)
	}

	hitsBefore := victim.hits.Load()
	victim.start()
	took = lb.waitState("web", victim.addr, "up", 3*time.Second)
	if limit := 700 * time.Millisecond * slack; took > limit {
		t.Errorf("back up after %s, want within rise*interval plus one (%s)", took, limit)
	}
	deadline := time.Now().Add(2 * time.Second)
	for victim.hits.Load() == hitsBefore && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if victim.hits.Load() == hitsBefore {
		t.Error("the recovered backend gets no requests")
	}
	if failed.Load() > 0 {
		t.Errorf("%d of %d client requests failed", failed.Load(), total.Load())
	}
	if !strings.Contains(lb.stderr.String(), "backend is down") || !strings.Contains(lb.stderr.String(), "backend is up") {
		t.Error("state changes were not logged")
	}
	t.Logf("%d requests, %d failed", total.Load(), failed.Load())
}

func TestAllBackendsDownGives503Fast(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	bs := []*backend{startBackend(t, "b1"), startBackend(t, "b2")}
	lb := startLB(t, dir, baseConfig(fastHealth, backendsTOML(bs...)))
	c := certs.client(lb.addrs["https"], true)
	if code, _, err := get(c, "https://www.example.com/"); code != 200 {
		t.Fatalf("before: %d %v", code, err)
	}
	for _, b := range bs {
		b.stop()
	}
	for _, b := range bs {
		lb.waitState("web", b.addr, "down", 3*time.Second)
	}
	for range 5 {
		start := time.Now()
		code, body, err := get(c, "https://www.example.com/")
		if err != nil || code != 503 {
			t.Fatalf("all down: %d %v %q, want 503", code, err, body)
		}
		if d := time.Since(start); d > 200*time.Millisecond {
			t.Errorf("503 took %s", d)
		}
	}
	bs[0].start()
	lb.waitState("web", bs[0].addr, "up", 3*time.Second)
	if code, body, _ := get(c, "https://www.example.com/"); code != 200 || !strings.HasPrefix(body, "b1 ") {
		t.Fatalf("after recovery: %d %q", code, body)
	}
}

func TestTLSVersions(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	lb := startLB(t, dir, baseConfig(fastHealth, backendsTOML(b)))
	addr := lb.addrs["https"]

	_, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com",
		MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err == nil {
		t.Error("a TLS 1.1 handshake succeeded")
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com", MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatalf("TLS 1.3: %v", err)
	}
	conn.Close()

	openssl := needTool(t, "openssl")
	out, _ := runCmd(t, 10*time.Second, openssl, "s_client", "-connect", addr, "-servername", "www.example.com",
		"-tls1_3", "-CAfile", filepath.Join(certs.dir, "ca.pem"))
	if !strings.Contains(out, "TLSv1.3") || !strings.Contains(out, "Verify return code: 0 (ok)") {
		t.Errorf("openssl s_client -tls1_3:\n%s", tail(out, 20))
	}
	out, _ = runCmd(t, 10*time.Second, openssl, "s_client", "-connect", addr, "-servername", "www.example.com",
		"-tls1_2", "-cipher", "AES128-SHA", "-CAfile", filepath.Join(certs.dir, "ca.pem"))
	if strings.Contains(out, "Cipher is AES128-SHA") {
		t.Errorf("a non-forward-secret CBC suite was negotiated:\n%s", tail(out, 20))
	}
}

func TestSNIPicksCertificate(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	lb := startLB(t, dir, baseConfig(fastHealth, backendsTOML(b)))
	addr := lb.addrs["https"]
	for sni, want := range map[string]string{
		"www.example.com": "www.example.com",
		"api.example.com": "api.example.com",
		"other.test":      "www.example.com",
	} {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: sni})
		if err != nil {
			t.Fatalf("%s: %v", sni, err)
		}
		got := conn.ConnectionState().PeerCertificates[0].Subject.CommonName
		conn.Close()
		if got != want {
			t.Errorf("SNI %q got the certificate of %q, want %q", sni, got, want)
		}
	}
	openssl := needTool(t, "openssl")
	out, _ := runCmd(t, 10*time.Second, openssl, "s_client", "-connect", addr, "-servername", "api.example.com",
		"-CAfile", filepath.Join(certs.dir, "ca.pem"))
	if !strings.Contains(out, "CN = api.example.com") || !strings.Contains(out, "Verify return code: 0 (ok)") {
		t.Errorf("openssl s_client -servername api.example.com:\n%s", tail(out, 30))
	}
}

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	b := startBackend(t, "b1")
	good := baseConfig(fastHealth, backendsTOML(b))
	goodPath := filepath.Join(dir, "good.toml")
	os.WriteFile(goodPath, []byte(good), 0o644)
	out, err := runCmd(t, 10*time.Second, lbBin, "-check", "-config", goodPath)
	if err != nil || !strings.Contains(out, "ok (1 listener, 1 pool, 1 backend)") {
		t.Fatalf("-check on a good file: %v\n%s", err, out)
	}

	bad := strings.Replace(good, `retries = 1`, `retries = 1
conect_timeout = "2s"`, 1)
	bad = strings.Replace(bad, `interval = "200ms"`, `interval = "fast"`, 1)
	badPath := filepath.Join(dir, "bad.toml")
	os.WriteFile(badPath, []byte(bad), 0o644)
	out, err = runCmd(t, 10*time.Second, lbBin, "-check", "-config", badPath)
	ee, ok := err.(interface{ ExitCode() int })
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("-check on a broken file: exit %v, want 1\n%s", err, out)
	}
	for _, want := range []string{
		"bad.toml:23: pool[0].conect_timeout: unknown key (did you mean \"connect_timeout\"?)",
		"bad.toml:28: pool[0].health.interval: \"fast\" is not a duration",
		"2 errors",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("-check output lacks %q:\n%s", want, out)
		}
	}

	// Started on the broken file, lb stops with exit 1 and the same errors.
	out, err = runCmd(t, 10*time.Second, lbBin, "-config", badPath)
	if ee, ok := err.(interface{ ExitCode() int }); !ok || ee.ExitCode() != 1 || !strings.Contains(out, "bad.toml:23:") {
		t.Fatalf("start on a broken file: %v\n%s", err, out)
	}
}

func TestSIGTERMLetsSlowRequestFinish(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	arrived := make(chan struct{}, 1)
	b.setHook(func(r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			time.Sleep(1500 * time.Millisecond)
		}
	})
	lb := startLB(t, dir, baseConfig(fastHealth, backendsTOML(b)))
	addr := lb.addrs["https"]
	c := certs.client(addr, true)

	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, body, err := get(c, "https://www.example.com/slow")
		done <- result{code, body, err}
	}()
	select {
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow request never reached the backend")
	}
	start := time.Now()
	lb.signal(syscall.SIGTERM)

	// New connections are refused while the slow request finishes.
	deadline := time.Now().Add(time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Error("still accepting connections a second after SIGTERM")
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	r := <-done
	if r.err != nil || r.code != 200 || !strings.HasPrefix(r.body, "b1 GET /slow") {
		t.Fatalf("slow request during shutdown: %d %v %q", r.code, r.err, r.body)
	}
	if code := lb.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("lb exited %s after SIGTERM, before the request could finish", d)
	}
	if !strings.Contains(lb.stderr.String(), "shutting down") {
		t.Error("shutdown not logged")
	}
}

func TestDemo(t *testing.T) {
	out := &testutil.SyncBuffer{}
	errOut := &testutil.SyncBuffer{}
	p := &lbProc{t: t, stdout: out, stderr: errOut, exited: make(chan struct{})}
	p.cmd = exec.Command(lbBin, "-demo", "-demo-listen", "127.0.0.1:0", "-demo-admin", "127.0.0.1:0")
	p.cmd.Stdout, p.cmd.Stderr = out, errOut
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.exited })
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), "Try:") {
		if time.Now().After(deadline) {
			t.Fatalf("demo did not start:\n%s\n%s", out.String(), errOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	m := listeningRE.FindStringSubmatch(errOut.String())
	if m == nil {
		t.Fatalf("no listening line:\n%s", errOut.String())
	}
	if !strings.Contains(out.String(), "curl -k https://"+m[2]) {
		t.Errorf("the demo does not print the curl command to try:\n%s", out.String())
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	seen := map[string]bool{}
	for range 3 {
		code, body, err := get(c, "https://"+m[2]+"/")
		if err != nil || code != 200 {
			t.Fatalf("demo request: %d %v", code, err)
		}
		seen[strings.Fields(body)[1]] = true
	}
	if len(seen) != 3 {
		t.Errorf("demo answers came from %v, want three backends", seen)
	}
	p.signal(syscall.SIGINT)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("demo exit code %d", code)
	}
}

func TestVersion(t *testing.T) {
	out, err := runCmd(t, 10*time.Second, lbBin, "-version")
	if err != nil || !strings.HasPrefix(out, "lb ") || !strings.Contains(out, "go1.") {
		t.Fatalf("-version: %v %q", err, out)
	}
}

func TestPlaintextRedirectAccessLogAndHealthcheck(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	b := startBackend(t, "b1")
	accessLog := filepath.Join(dir, "access.log")
	cfg := `
[global]
access_log = "` + accessLog + `"
log_format = "json"
admin = "127.0.0.1:0"
watch = false

[[listener]]
name = "plain"
bind = "127.0.0.1:0"
pool = "web"

[[listener]]
name = "redirect"
bind = "127.0.0.1:0"
redirect_https = "https://:8443"

[[listener]]
name = "secure"
bind = "127.0.0.1:0"
pool = "web"
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"

[[pool]]
name = "web"
` + backendsTOML(b)
	lb := startLB(t, dir, cfg)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	code, body, err := get(c, "http://"+lb.addrs["plain"]+"/p?q=1")
	if err != nil || code != 200 || !strings.Contains(body, "b1 GET /p?q=1 xff=127.0.0.1 proto=http") {
		t.Fatalf("plaintext: %d %v %q", code, err, body)
	}
	resp, err := c.Get("http://" + lb.addrs["redirect"] + "/a/b?c=d")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 308 || resp.Header.Get("Location") != "https://127.0.0.1:8443/a/b?c=d" {
		t.Errorf("redirect: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if curl, err := exec.LookPath("curl"); err == nil {
		// As a browser would meet it: a name, a POST (308 keeps the
		// method), and a redirect never followed to a backend.
		_, port, _ := net.SplitHostPort(lb.addrs["redirect"])
		out, err := runCmd(t, 10*time.Second, curl, "-sS", "-D", "-", "-o", "/dev/null", "-X", "POST",
			"--resolve", "shop.example.com:"+port+":127.0.0.1", "http://shop.example.com:"+port+"/cart?id=7")
		if err != nil || !strings.HasPrefix(out, "HTTP/1.1 308") || !strings.Contains(out, "Location: https://shop.example.com:8443/cart?id=7") {
			t.Errorf("curl redirect: %v\n%s", err, out)
		}
		if b.hits.Load() != 1 {
			t.Errorf("the backend saw %d requests, want only the plaintext one", b.hits.Load())
		}
	}

	tc := &http.Client{Transport: &http.Transport{TLSClientConfig: insecureTLS()}}
	if code, _, err := get(tc, "https://"+lb.addrs["secure"]+"/s"); err != nil || code != 200 {
		t.Fatalf("TLS listener: %d %v", code, err)
	}

	// One JSON line per request in the access log file, written by a
	// writer of its own: wait for the last request's line.
	var logText string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		data, _ := os.ReadFile(accessLog)
		if logText = string(data); strings.Contains(logText, `"listener":"secure"`) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{`"uri":"/p?q=1"`, `"status":200`, `"backend":"` + b.addr + `"`, `"listener":"plain"`, `"status":308`,
		`"tls":"1.3"`, `"listener":"secure"`, `"pool":"web"`, `"method":"GET"`, `"duration":`, `"bytes":`, `"client":"127.0.0.1:`, `"@timestamp":`} {
		if !strings.Contains(logText, want) {
			t.Errorf("access log lacks %s:\n%s", want, logText)
		}
	}

	// lb -healthcheck asks the admin server of the running lb.
	hc := strings.Replace(cfg, `admin = "127.0.0.1:0"`, `admin = "`+lb.admin+`"`, 1)
	hcPath := filepath.Join(dir, "hc.toml")
	os.WriteFile(hcPath, []byte(hc), 0o644)
	if out, err := runCmd(t, 10*time.Second, lbBin, "-healthcheck", "-config", hcPath); err != nil {
		t.Errorf("-healthcheck against a running lb: %v %s", err, out)
	}
	lb.signal(syscall.SIGTERM)
	lb.wait(10 * time.Second)
	if out, err := runCmd(t, 10*time.Second, lbBin, "-healthcheck", "-config", hcPath); err == nil {
		t.Errorf("-healthcheck passed with lb stopped: %s", out)
	}
}
