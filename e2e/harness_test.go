// Package e2e runs the real lb binary against real backends on 127.0.0.1,
// with certificates made by the tests, and talks to it with real clients:
// Go's, and curl and openssl where they are installed.
package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/certgen"
	"github.com/offloadlb/lb/internal/testutil"
	"github.com/offloadlb/lb/pkg/admin"
)

// lbBin is the lb binary built once for all tests.
var lbBin string

func TestMain(m *testing.M) {
	if spec := os.Getenv(backendProcessEnv); spec != "" {
		runBackendProcess(spec) // this binary as a backend to kill
	}
	dir, err := os.MkdirTemp("", "lb-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lbBin = filepath.Join(dir, "lb")
	args := []string{"build", "-o", lbBin}
	if raceEnabled || os.Getenv("LB_E2E_RACE") != "" {
		// The binary under test with the race detector when the tests run
		// with it (go test -race): reloads, drains and shutdowns run
		// across many goroutines.
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/lb")...)
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building lb:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// lbProc is a running lb.
type lbProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	dir    string
	stdout *testutil.SyncBuffer
	stderr *testutil.SyncBuffer
	addrs  map[string]string // listener name -> bound address
	admin  string
	exited chan struct{}
	err    error // exit error, valid after exited is closed
}

var (
	listeningRE = regexp.MustCompile(`listening: listener=(\S+) address=(\S+)`)
	adminRE     = regexp.MustCompile(`admin server listening: address=(\S+)`)
)

// startLB writes cfg to a fresh folder (which also holds the test
// certificates, see writeCerts) and runs lb on it until it says it has
// started. Listeners should bind port 0; their real addresses are read
// from lb's log.
func startLB(t *testing.T, dir, cfg string, args ...string) *lbProc {
	t.Helper()
	return startLBEnv(t, dir, cfg, nil, args...)
}

// startLBEnv is startLB with extra environment variables ("K=V").
func startLBEnv(t *testing.T, dir, cfg string, env []string, args ...string) *lbProc {
	t.Helper()
	path := filepath.Join(dir, "lb.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &lbProc{t: t, dir: dir, stdout: &testutil.SyncBuffer{}, stderr: &testutil.SyncBuffer{}, addrs: map[string]string{}, exited: make(chan struct{})}
	p.cmd = exec.Command(lbBin, append([]string{"-config", path}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("lb stderr:\n%s", tail(p.stderr.String(), 60))
		}
	})
	deadline := time.After(15 * time.Second)
	for !strings.Contains(p.stderr.String(), "lb started") {
		select {
		case <-p.exited:
			t.Fatalf("lb exited at start (%v):\n%s", p.err, p.stderr.String())
		case <-deadline:
			t.Fatalf("lb did not start:\n%s", p.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	for _, m := range listeningRE.FindAllStringSubmatch(p.stderr.String(), -1) {
		p.addrs[m[1]] = m[2]
	}
	if m := adminRE.FindStringSubmatch(p.stderr.String()); m != nil {
		p.admin = m[1]
	}
	// The same lines in log_format = "json".
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		addr, _ := rec["address"].(string)
		switch rec["@message"] {
		case "listening":
			p.addrs[rec["listener"].(string)] = addr
		case "admin server listening":
			p.admin = addr
		}
	}
	return p
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// path is the config file lb runs from.
func (p *lbProc) path() string { return filepath.Join(p.dir, "lb.toml") }

// rewrite replaces the config file.
func (p *lbProc) rewrite(cfg string) {
	p.t.Helper()
	if err := os.WriteFile(p.path(), []byte(cfg), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// logCount counts lines of lb's log that contain s.
func (p *lbProc) logCount(s string) int { return strings.Count(p.stderr.String(), s) }

// waitLog waits until lb's log holds n lines containing s.
func (p *lbProc) waitLog(s string, n int, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for p.logCount(s) < n {
		if time.Now().After(deadline) {
			p.t.Fatalf("lb did not log %q %d times within %s:\n%s", s, n, timeout, tail(p.stderr.String(), 30))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// post sends an empty POST to the admin server.
func (p *lbProc) post(path string) (int, string) {
	p.t.Helper()
	resp, err := http.Post("http://"+p.admin+path, "text/plain", nil)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// signal sends sig to lb.
func (p *lbProc) signal(sig os.Signal) {
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// wait waits for lb to exit and returns its exit code.
func (p *lbProc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.t.Fatalf("lb did not exit within %s", timeout)
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	p.t.Fatalf("lb: %v", p.err)
	return -1
}

// status fetches /status.json.
func (p *lbProc) status() admin.Status {
	p.t.Helper()
	resp, err := http.Get("http://" + p.admin + "/status.json")
	if err != nil {
		p.t.Fatalf("status.json: %v", err)
	}
	defer resp.Body.Close()
	var st admin.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		p.t.Fatalf("status.json: %v", err)
	}
	return st
}

// backendStatus finds one backend in /status.json.
func (p *lbProc) backendStatus(pool, addr string) admin.BackendStatus {
	p.t.Helper()
	for _, ps := range p.status().Pools {
		if ps.Name != pool {
			continue
		}
		for _, b := range ps.Backends {
			if b.Address == addr {
				return b
			}
		}
	}
	p.t.Fatalf("backend %s of pool %s not in status", addr, pool)
	return admin.BackendStatus{}
}

// waitState waits until a backend's state is want and returns how long
// that took.
func (p *lbProc) waitState(pool, addr, want string, timeout time.Duration) time.Duration {
	p.t.Helper()
	start := time.Now()
	for {
		b := p.backendStatus(pool, addr)
		if b.State == want {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			p.t.Fatalf("backend %s still %s after %s (last error %q), want %s", addr, b.State, timeout, b.LastError, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testCerts is a CA and server certificates written to a folder.
type testCerts struct {
	ca  *certgen.Pair
	dir string
}

// writeCerts makes a CA and, under dir/certs, site.pem/key (for
// www.example.com, localhost, 127.0.0.1) and api.pem/key (for
// api.example.com), both ECDSA.
func writeCerts(t *testing.T, dir string) *testCerts {
	t.Helper()
	ca, err := certgen.New(certgen.Options{IsCA: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cdir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(cdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, names := range map[string][]string{
		"site": {"www.example.com", "localhost", "127.0.0.1"},
		"api":  {"api.example.com"},
	} {
		p, err := certgen.New(certgen.Options{Names: names}, ca)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := p.Write(cdir, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(cdir, "ca.pem"), ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return &testCerts{ca: ca, dir: cdir}
}

func (c *testCerts) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.ca.Cert)
	return p
}

// client returns an HTTPS client that trusts the test CA and dials addr
// whatever the URL's host.
func (c *testCerts) client(addr string, keepAlive bool) *http.Client {
	d := &net.Dialer{Timeout: 2 * time.Second}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: c.pool()},
			DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) },
			DisableKeepAlives:   !keepAlive,
			MaxIdleConnsPerHost: 64,
			ForceAttemptHTTP2:   false,
		},
	}
}

// backend is a real HTTP server on 127.0.0.1 that names itself in its
// answers and can be stopped and started again on the same address.
type backend struct {
	t    *testing.T
	id   string
	addr string
	hits atomic.Int64 // requests other than health checks

	mu  sync.Mutex
	srv *http.Server
	// onRequest, if set, runs before the answer.
	onRequest func(r *http.Request)
}

func startBackend(t *testing.T, id string) *backend {
	t.Helper()
	b := &backend{t: t, id: id}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	b.serve(ln)
	t.Cleanup(b.stop)
	return b
}

func (b *backend) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			io.WriteString(w, "ok")
			return
		}
		b.hits.Add(1)
		b.mu.Lock()
		hook := b.onRequest
		b.mu.Unlock()
		if hook != nil {
			hook(r)
		}
		w.Header().Set("X-Backend", b.id)
		if strings.HasPrefix(r.URL.Path, "/cacheable/") {
			// For the cache's tests: fresh for a minute.
			w.Header().Set("Cache-Control", "max-age=60")
		}
		if code, ok := strings.CutPrefix(r.URL.Path, "/code/"); ok {
			var n int
			fmt.Sscanf(code, "%d", &n)
			w.WriteHeader(n)
		}
		fmt.Fprintf(w, "%s %s %s xff=%s proto=%s\n", b.id, r.Method, r.URL.RequestURI(), r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"))
	})}
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go srv.Serve(ln)
}

// stop closes the listener and every connection, like a crashed server.
func (b *backend) stop() {
	b.mu.Lock()
	srv := b.srv
	b.srv = nil
	b.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// start serves again on the same address.
func (b *backend) start() {
	b.t.Helper()
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", b.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		b.t.Fatalf("restart %s: %v", b.id, err)
	}
	b.serve(ln)
}

func (b *backend) setHook(f func(r *http.Request)) {
	b.mu.Lock()
	b.onRequest = f
	b.mu.Unlock()
}

// get sends one request and returns status and body.
func get(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// needTool skips the test when an outside tool is missing.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed; .ci/run installs it (apt-get install %s)", name, name)
	}
	return p
}

// runCmd runs a command with a timeout and returns its combined output.
func runCmd(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// backendsTOML renders [[pool.backend]] entries.
func backendsTOML(bs ...*backend) string {
	var sb strings.Builder
	for _, b := range bs {
		fmt.Fprintf(&sb, "  [[pool.backend]]\n  address = %q\n", b.addr)
	}
	return sb.String()
}

// insecureTLS is a client TLS config for tests that do not check
// certificates.
func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} }
