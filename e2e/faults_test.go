package e2e

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The reliability suite: faults of backends and abuse by clients while a
// steady load runs, with figures for docs/reliability.md. The short
// variant runs in CI; LB_RELIABILITY_LONG=1 runs each phase longer with
// more clients, for the published table.

// reliabilityScale is how long each phase of a case lasts and how many
// clients keep the load up.
func reliabilityScale() (phase time.Duration, workers int) {
	if os.Getenv("LB_RELIABILITY_LONG") != "" {
		return 10 * time.Second, 32
	}
	return 1500 * time.Millisecond, 8
}

// loadGen keeps idempotent GETs going from a number of clients, each on
// its own keep-alive connection, and records every answer.
type loadGen struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	sent     int
	failed   int
	reasons  map[string]int
	lat      []time.Duration
	lastSeen map[string]time.Time // backend id -> last answer from it
}

func startLoad(t *testing.T, certs *testCerts, addr string, workers int) *loadGen {
	l := &loadGen{stop: make(chan struct{}), reasons: map[string]int{}, lastSeen: map[string]time.Time{}}
	for range workers {
		c := certs.client(addr, true)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				start := time.Now()
				resp, err := c.Get("https://www.example.com/load")
				var reason, backend string
				if err != nil {
					reason = "error: " + err.Error()
				} else {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					backend = resp.Header.Get("X-Backend")
					switch {
					case err != nil:
						reason = "body: " + err.Error()
					case resp.StatusCode != 200:
						reason = fmt.Sprintf("status %d", resp.StatusCode)
					}
				}
				now := time.Now()
				l.mu.Lock()
				l.sent++
				l.lat = append(l.lat, now.Sub(start))
				if reason != "" {
					l.failed++
					l.reasons[reason]++
				} else if backend != "" {
					l.lastSeen[backend] = now
				}
				l.mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return l
}

// servedBy waits until backend id has answered a request that started
// after since, and returns how long after since that was.
func (l *loadGen) servedBy(t *testing.T, id string, since time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		last := l.lastSeen[id]
		l.mu.Unlock()
		if last.After(since) {
			return last.Sub(since)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("backend %s served nothing in %s after it recovered", id, timeout)
	return timeout
}

type loadStats struct {
	sent, failed  int
	reasons       map[string]int
	p50, p99, max time.Duration
}

func (l *loadGen) finish() loadStats {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	slices.Sort(l.lat)
	s := loadStats{sent: l.sent, failed: l.failed, reasons: l.reasons}
	if n := len(l.lat); n > 0 {
		s.p50, s.p99, s.max = l.lat[n/2], l.lat[n*99/100], l.lat[n-1]
	}
	return s
}

// faultMode is how a faultyBackend answers.
type faultMode int32

const (
	answer      faultMode = iota
	blackHole             // accepts and reads, never answers
	resetMidway           // sends a head and part of the body, then a TCP reset
	garbage               // answers with bytes that are not HTTP
	slow                  // answers after 300 ms
)

// faultyBackend is a small HTTP/1.1 keep-alive server on a raw socket
// whose behaviour the test switches while lb sends it traffic (health
// checks included).
type faultyBackend struct {
	id, addr string
	mode     atomic.Int32
	ln       net.Listener
	wg       sync.WaitGroup
}

func startFaulty(t *testing.T, id string) *faultyBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &faultyBackend{id: id, addr: ln.Addr().String(), ln: ln}
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.serve(c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *faultyBackend) set(m faultMode) { b.mode.Store(int32(m)) }

func (b *faultyBackend) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		switch faultMode(b.mode.Load()) {
		case blackHole:
			io.Copy(io.Discard, c) // until lb gives up on it
			return
		case resetMidway:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Backend: "+b.id+"\r\n\r\n"+strings.Repeat("x", 100))
			c.(*net.TCPConn).SetLinger(0) // close sends RST
			return
		case garbage:
			io.WriteString(c, "SSH-2.0-OpenSSH_9.2p1\r\nProtocol mismatch.\r\n\r\n")
			return
		case slow:
			time.Sleep(300 * time.Millisecond)
		}
		body := b.id + " " + req.Method + " " + req.URL.Path + "\n"
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %s\r\n\r\n%s", len(body), b.id, body)
	}
}

// processBackend is a backend in a process of its own (this test binary
// run as a server; see TestMain), so that it can be killed with SIGKILL.
type processBackend struct {
	id, addr string
	cmd      *exec.Cmd
}

const backendProcessEnv = "LB_E2E_BACKEND_PROCESS" // "id addr"

// runBackendProcess serves as processBackend asks, until killed.
func runBackendProcess(spec string) {
	id, addr, _ := strings.Cut(spec, " ")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", id)
		fmt.Fprintf(w, "%s %s %s\n", id, r.Method, r.URL.Path)
	}))
	os.Exit(0)
}

func startProcessBackend(t *testing.T, id string) *processBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &processBackend{id: id, addr: ln.Addr().String()}
	ln.Close()
	p.start(t)
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *processBackend) start(t *testing.T) {
	t.Helper()
	p.cmd = exec.Command(os.Args[0])
	p.cmd.Env = append(os.Environ(), backendProcessEnv+"="+p.id+" "+p.addr)
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend process %s did not listen on %s", p.id, p.addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill sends SIGKILL: the kernel closes its sockets, nothing is flushed.
func (p *processBackend) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

// faultConfig is baseConfig with a response timeout short enough for a
// black-holed request to be retried within the test.
func faultConfig(backends string) string {
	return strings.Replace(baseConfig(fastHealth, backends), "connect_timeout = \"500ms\"", "connect_timeout = \"500ms\"\nresponse_timeout = \"1s\"", 1)
}

// reliabilityRow is one line of a table in docs/reliability.md.
type reliabilityRow struct {
	name, load      string
	sent, failed    int
	detect, recover string
	latency, notes  string
}

func writeReliabilityTable(t *testing.T, file, title string, rows []reliabilityRow) {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n| case | load | requests | failed | detected after | recovered after | p99 / max latency | notes |\n|---|---|---|---|---|---|---|---|\n", title)
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %s | %s | %s | %s |\n", r.name, r.load, r.sent, r.failed, r.detect, r.recover, r.latency, r.notes)
	}
	t.Log("\n" + b.String())
	if d := artifactDir(t); d != "" {
		os.WriteFile(filepath.Join(d, file), []byte(b.String()), 0o644)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }

// TestBackendFaults: with three backends and a steady load of idempotent
// GETs, one backend fails in each way a server does; no client request
// may fail while two healthy backends remain. Then all three die and
// return: requests meanwhile get a fast 503, and service resumes.
func TestBackendFaults(t *testing.T) {
	phase, workers := reliabilityScale()
	load := fmt.Sprintf("%d clients, %s per phase", workers, phase)
	var rows []reliabilityRow
	// Each fault: start a victim backend; break it; heal it.
	type victim struct {
		addr         string
		break_, heal func(t *testing.T)
	}
	switchable := func(m faultMode) func(t *testing.T) victim {
		return func(t *testing.T) victim {
			b := startFaulty(t, "victim")
			return victim{b.addr, func(*testing.T) { b.set(m) }, func(*testing.T) { b.set(answer) }}
		}
	}
	faults := []struct {
		name, notes string
		start       func(t *testing.T) victim
	}{
		{"accepts, never answers", "requests to it time out (response_timeout 1s) and are retried on another backend", switchable(blackHole)},
		{"resets mid-response", "a head and 100 of 1000 body bytes, then a TCP reset; the buffered body is retried", switchable(resetMidway)},
		{"answers slowly (300 ms)", "health checks (timeout 100 ms) take it out", switchable(slow)},
		{"answers garbage", "an SSH banner instead of HTTP: 502 from it, retried", switchable(garbage)},
		{"killed (SIGKILL), restarted", "pooled connections reset, new ones refused: retried on another backend", func(t *testing.T) victim {
			p := startProcessBackend(t, "victim")
			return victim{p.addr, func(*testing.T) { p.kill() }, p.start}
		}},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			dir := t.TempDir()
			certs := writeCerts(t, dir)
			b1, b2 := startBackend(t, "b1"), startBackend(t, "b2")
			v := f.start(t)
			lb := startLB(t, dir, faultConfig(backendsTOML(b1, b2)+fmt.Sprintf("\n  [[pool.backend]]\n  address = %q\n", v.addr)))
			l := startLoad(t, certs, lb.addrs["https"], workers)
			time.Sleep(phase)
			v.break_(t)
			detect := lb.waitState("web", v.addr, "down", 10*time.Second)
			time.Sleep(phase)
			v.heal(t)
			healed := time.Now()
			lb.waitState("web", v.addr, "up", 10*time.Second)
			recover := l.servedBy(t, "victim", healed, 10*time.Second)
			time.Sleep(phase / 2)
			s := l.finish()
			if s.failed > 0 {
				t.Errorf("%d of %d requests failed: %v", s.failed, s.sent, s.reasons)
			}
			rows = append(rows, reliabilityRow{name: "one backend " + f.name, load: load, sent: s.sent, failed: s.failed,
				detect: ms(detect), recover: ms(recover), latency: ms(s.p99) + " / " + ms(s.max), notes: f.notes})
		})
	}

	t.Run("all die and return", func(t *testing.T) {
		dir := t.TempDir()
		certs := writeCerts(t, dir)
		bs := []*backend{startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3")}
		lb := startLB(t, dir, faultConfig(backendsTOML(bs...)))
		l := startLoad(t, certs, lb.addrs["https"], workers)
		time.Sleep(phase)
		before := l.finish()
		l = startLoad(t, certs, lb.addrs["https"], workers)
		for _, b := range bs {
			b.stop()
		}
		start := time.Now()
		for _, b := range bs {
			lb.waitState("web", b.addr, "down", 10*time.Second)
		}
		detect := time.Since(start)
		time.Sleep(phase)
		for _, b := range bs {
			b.start()
		}
		healed := time.Now()
		recover := l.servedBy(t, "b1", healed, 10*time.Second)
		time.Sleep(phase / 2)
		s := l.finish()
		if before.failed > 0 {
			t.Errorf("%d requests failed before the outage: %v", before.failed, before.reasons)
		}
		for reason := range s.reasons {
			if reason != "status 503" && reason != "status 502" {
				t.Errorf("during the outage a request failed with %q, want a 502 or 503 answer", reason)
			}
		}
		if s.p99 > 2*time.Second {
			t.Errorf("p99 %s during the outage: answers should be quick", s.p99)
		}
		rows = append(rows, reliabilityRow{name: "all three backends die, then return", load: load, sent: before.sent + s.sent, failed: s.failed,
			detect: ms(detect), recover: ms(recover), latency: ms(s.p99) + " / " + ms(s.max),
			notes: fmt.Sprintf("failures are the answers while none is up (%v), none before", s.reasons)})
	})
	writeReliabilityTable(t, "reliability-backend-faults.md", "Backend faults", rows)
}

// TestGracefulStop: SIGTERM under load answers every request lb has
// read, refuses new connections, and exits 0; a second SIGTERM stops at
// once; a second lb on an address in use exits with a clear error and
// leaves the first serving.
func TestGracefulStop(t *testing.T) {
	phase, workers := reliabilityScale()
	var rows []reliabilityRow

	t.Run("SIGTERM under load", func(t *testing.T) {
		dir := t.TempDir()
		certs := writeCerts(t, dir)
		bs := []*backend{startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3")}
		arrived := make(chan struct{}, 64)
		for _, b := range bs {
			b.setHook(func(r *http.Request) {
				if r.URL.Path == "/slow" {
					arrived <- struct{}{}
					time.Sleep(800 * time.Millisecond)
				}
			})
		}
		lb := startLB(t, dir, baseConfig(fastHealth, backendsTOML(bs...)))
		addr := lb.addrs["https"]
		l := startLoad(t, certs, addr, workers)
		time.Sleep(phase)
		// Slow requests in flight when the signal comes.
		const slowN = 6
		slowErrs := make(chan error, slowN)
		for range slowN {
			go func() {
				code, body, err := get(certs.client(addr, false), "https://www.example.com/slow")
				if err == nil && code != 200 {
					err = fmt.Errorf("status %d: %q", code, body)
				}
				slowErrs <- err
			}()
		}
		for range slowN {
			select {
			case <-arrived:
			case <-time.After(5 * time.Second):
				t.Fatal("slow requests did not reach the backends")
			}
		}
		signalled := time.Now()
		lb.signal(syscall.SIGTERM)
		for range slowN {
			if err := <-slowErrs; err != nil {
				t.Errorf("a request in flight at SIGTERM failed: %v", err)
			}
		}
		code := lb.wait(10 * time.Second)
		stopped := time.Since(signalled)
		s := l.finish()
		lost := 0
		for reason, n := range s.reasons {
			// Once the listener is closed, new connections are refused:
			// those requests were never accepted.
			if !strings.Contains(reason, "connection refused") {
				lost += n
				t.Errorf("%d requests failed with %q", n, reason)
			}
		}
		if code != 0 {
			t.Errorf("exit code %d", code)
		}
		rows = append(rows, reliabilityRow{name: "SIGTERM under load, 6 requests of 800 ms in flight", load: fmt.Sprintf("%d clients, %s before the signal", workers, phase),
			sent: s.sent + slowN, failed: lost, detect: "-", recover: "exit 0 after " + ms(stopped), latency: ms(s.p99) + " / " + ms(s.max),
			notes: fmt.Sprintf("every accepted request answered; %d new connections refused after the listener closed", s.failed-lost)})
	})

	t.Run("second SIGTERM", func(t *testing.T) {
		dir := t.TempDir()
		certs := writeCerts(t, dir)
		b := startBackend(t, "b1")
		arrived := make(chan struct{}, 1)
		b.setHook(func(r *http.Request) {
			arrived <- struct{}{}
			time.Sleep(5 * time.Second)
		})
		lb := startLB(t, dir, baseConfig(fastHealth, backendsTOML(b)))
		go get(certs.client(lb.addrs["https"], false), "https://www.example.com/stuck")
		<-arrived
		lb.signal(syscall.SIGTERM)
		time.Sleep(200 * time.Millisecond)
		start := time.Now()
		lb.signal(syscall.SIGTERM)
		code := lb.wait(5 * time.Second)
		took := time.Since(start)
		// 2s: a binary built with -race sleeps 1s at exit.
		if took > 2*time.Second || !strings.Contains(lb.stderr.String(), "second signal: stopping now") {
			t.Errorf("exit %d %s after the second SIGTERM (grace 10s)", code, took)
		}
		rows = append(rows, reliabilityRow{name: "second SIGTERM while a 5 s request is in flight", load: "1 request", sent: 1, failed: 1,
			detect: "-", recover: fmt.Sprintf("exit %d after %s", code, ms(took)), latency: "-", notes: "stops at once, as asked; the request in flight is cut"})
	})

	t.Run("address in use", func(t *testing.T) {
		dir := t.TempDir()
		certs := writeCerts(t, dir)
		b := startBackend(t, "b1")
		first := startLB(t, dir, baseConfig(fastHealth, backendsTOML(b)))
		addr := first.addrs["https"]
		cfg := strings.Replace(baseConfig(fastHealth, backendsTOML(b)), `bind = "127.0.0.1:0"`, fmt.Sprintf("bind = %q", addr), 1)
		dir2 := t.TempDir()
		writeCerts(t, dir2)
		path := filepath.Join(dir2, "lb.toml")
		os.WriteFile(path, []byte(cfg), 0o644)
		start := time.Now()
		out, err := exec.Command(lbBin, "-config", path).CombinedOutput()
		took := time.Since(start)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("second lb: %v, want exit code 1\n%s", err, out)
		}
		if !strings.Contains(string(out), addr) || !strings.Contains(string(out), "address already in use") {
			t.Errorf("the error does not name the address and the cause:\n%s", out)
		}
		if code, _, err := get(certs.client(addr, false), "https://www.example.com/"); code != 200 {
			t.Errorf("first lb after the second failed to start: %d %v", code, err)
		}
		msg := ""
		for _, line := range strings.Split(string(out), "\n") {
			if _, m, ok := strings.Cut(line, "lb: "); ok && strings.Contains(m, "address already in use") {
				msg = m
			}
		}
		rows = append(rows, reliabilityRow{name: "a second lb on the same address", load: "-", sent: 1, failed: 0, detect: "-",
			recover: fmt.Sprintf("exit 1 after %s", ms(took)), latency: "-", notes: "the first keeps serving; the second says: `" + msg + "`"})
	})
	writeReliabilityTable(t, "reliability-stop.md", "Stopping and starting", rows)
}

// abuseConfig is baseConfig with short client timeouts, so that abusive
// connections are cut within the test.
func abuseConfig(backends, maxConns string) string {
	return abuseConfigHealth(abuseHealth, backends, maxConns)
}

// abuseHealth checks the backends as fastHealth does, with a timeout
// that tolerates a machine the abuse itself (and whatever else runs
// there) keeps busy: these tests are about what clients can do to other
// clients, and a check lb's own scheduler answered late would take
// healthy backends out and fail normal requests for a reason that is not
// theirs.
const abuseHealth = `  check = "http"
  path = "/healthz"
  interval = "200ms"
  timeout = "1s"
  rise = 2
  fall = 3`

func abuseConfigHealth(health, backends, maxConns string) string {
	return strings.Replace(baseConfig(health, backends), `pool = "web"`, `pool = "web"
read_timeout = "2s"
write_timeout = "2s"
idle_timeout = "5s"
max_connections = `+maxConns, 1)
}

// peakRSS is the most memory the process has had resident, in MiB.
func peakRSS(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Logf("no peak RSS: %v", err)
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(v), "%f", &kb)
			return kb / 1024
		}
	}
	return 0
}

// closedWithin waits for the server to close each connection (a read
// returns) and returns the longest wait, counted from start.
func closedWithin(conns []net.Conn, start time.Time, limit time.Duration) (longest time.Duration, open int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(start.Add(limit))
			_, err := io.Copy(io.Discard, c)
			mu.Lock()
			defer mu.Unlock()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				open++
				return
			}
			longest = max(longest, time.Since(start))
		}()
	}
	wg.Wait()
	return longest, open
}

// TestClientAbuse: clients that hold connections without finishing a
// request, do not read their answers, flood handshakes, stop halfway
// through one, send noise instead of TLS, or open more connections than
// max_connections. Normal clients keep being served meanwhile, and lb
// cuts the abusers off by its timeouts.
func TestClientAbuse(t *testing.T) {
	phase, workers := reliabilityScale()
	scale := 1
	if os.Getenv("LB_RELIABILITY_LONG") != "" {
		scale = 10
	}
	var rows []reliabilityRow
	normal := fmt.Sprintf("%d normal clients", workers)

	// start runs lb with three backends and the normal load.
	start := func(t *testing.T, maxConns string) (*lbProc, *testCerts, *loadGen, []*backend) {
		dir := t.TempDir()
		certs := writeCerts(t, dir)
		bs := []*backend{startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3")}
		lb := startLB(t, dir, abuseConfig(backendsTOML(bs...), maxConns))
		return lb, certs, startLoad(t, certs, lb.addrs["https"], workers), bs
	}
	tlsDial := func(t *testing.T, addr string) net.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	check := func(t *testing.T, s loadStats) {
		if s.failed > 0 {
			t.Errorf("%d of %d normal requests failed: %v", s.failed, s.sent, s.reasons)
		}
	}

	t.Run("slowloris", func(t *testing.T) {
		lb, _, l, bs := start(t, "10000")
		n := 300 * scale
		var reached atomic.Int64
		for _, b := range bs {
			b.setHook(func(r *http.Request) {
				if r.URL.Path == "/slowloris" {
					reached.Add(1)
				}
			})
		}
		conns := make([]net.Conn, n)
		for i := range conns {
			conns[i] = tlsDial(t, lb.addrs["https"])
			io.WriteString(conns[i], "GET /slowloris HTTP/1.1\r\nHost: www.example.com\r\n")
		}
		begun := time.Now()
		stop := make(chan struct{})
		go func() { // a header byte from each, every 500 ms
			for {
				select {
				case <-stop:
					return
				case <-time.After(500 * time.Millisecond):
				}
				for _, c := range conns {
					c.Write([]byte("X"))
				}
			}
		}()
		longest, open := closedWithin(conns, begun, 10*time.Second)
		close(stop)
		s := l.finish()
		check(t, s)
		if open > 0 {
			t.Errorf("%d slowloris connections still open after 10s (read_timeout 2s)", open)
		}
		if reached.Load() > 0 {
			t.Errorf("%d slowloris requests reached a backend", reached.Load())
		}
		rows = append(rows, reliabilityRow{name: fmt.Sprintf("slowloris: %d TLS connections sending a header byte every 500 ms", n), load: normal,
			sent: s.sent, failed: s.failed, detect: "all cut after " + ms(longest), recover: "-", latency: ms(s.p99) + " / " + ms(s.max),
			notes: fmt.Sprintf("read_timeout 2s; peak RSS %.0f MiB", peakRSS(t, lb.cmd.Process.Pid))})
		for _, c := range conns {
			c.Close()
		}
	})

	t.Run("slow readers", func(t *testing.T) {
		// Larger than what loopback socket buffers can hold.
		const size = 32 << 20
		big := startBigBackend(t, size)
		dir := t.TempDir()
		certs := writeCerts(t, dir)
		// No health checks: the only backend is busy writing 50 large
		// answers, and a check timing out would take it out.
		lb := startLB(t, dir, abuseConfigHealth(`  check = "none"`, fmt.Sprintf("  [[pool.backend]]\n  address = %q\n", big), "10000"))
		l := startLoad(t, certs, lb.addrs["https"], workers)
		n := 50 * scale
		conns := make([]net.Conn, n)
		for i := range conns {
			conns[i] = tlsDial(t, lb.addrs["https"])
			io.WriteString(conns[i], "GET /big HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
		}
		begun := time.Now()
		// Read nothing; lb must give up on them (write_timeout 2s).
		time.Sleep(3 * time.Second)
		var longest time.Duration
		open := 0
		deadline := begun.Add(15 * time.Second)
		for _, c := range conns {
			// Drain fast now: a connection lb has cut ends in an error or
			// EOF before all 4 MiB arrive.
			c.SetReadDeadline(deadline)
			if got, _ := io.Copy(io.Discard, c); got >= size {
				t.Errorf("a slow reader got the whole body (%d bytes): lb kept it", got)
			}
			if time.Now().After(deadline) {
				open++
			}
			longest = max(longest, time.Since(begun))
		}
		s := l.finish()
		check(t, s)
		if open > 0 {
			t.Errorf("%d slow readers still connected after 15s", open)
		}
		rows = append(rows, reliabilityRow{name: fmt.Sprintf("slow readers: %d clients ask for 32 MiB and read nothing", n), load: normal,
			sent: s.sent, failed: s.failed, detect: "all cut when read at 3 s (drained by " + ms(longest) + ")", recover: "-", latency: ms(s.p99) + " / " + ms(s.max),
			notes: fmt.Sprintf("write_timeout 2s; peak RSS %.0f MiB", peakRSS(t, lb.cmd.Process.Pid))})
	})

	// flood runs 8*scale clients doing full TLS handshakes back to back,
	// from 8 addresses other than the normal clients' (127.0.0.2-9),
	// against lb, and returns the handshakes done and refused.
	flood := func(lb *lbProc) (done, failed int64) {
		var d, f atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i := range 8 * scale {
			wg.Add(1)
			go func() {
				defer wg.Done()
				dialer := &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%8))}}
				for {
					select {
					case <-stop:
						return
					default:
					}
					// A full handshake each time: no session cache.
					c, err := tls.DialWithDialer(dialer, "tcp", lb.addrs["https"], &tls.Config{InsecureSkipVerify: true})
					if err != nil {
						f.Add(1)
						continue
					}
					d.Add(1)
					c.Close()
				}
			}()
		}
		time.Sleep(2 * phase)
		close(stop)
		wg.Wait()
		return d.Load(), f.Load()
	}
	t.Run("handshake flood", func(t *testing.T) {
		lb, _, l, _ := start(t, "10000")
		done, failed := flood(lb)
		s := l.finish()
		check(t, s)
		rows = append(rows, reliabilityRow{name: fmt.Sprintf("handshake flood: %d clients doing full TLS handshakes back to back", 8*scale), load: normal,
			sent: s.sent, failed: s.failed, detect: "-", recover: "-", latency: ms(s.p99) + " / " + ms(s.max),
			notes: fmt.Sprintf("%d handshakes in %s (%d failed); peak RSS %.0f MiB", done, 2*phase, failed, peakRSS(t, lb.cmd.Process.Pid))})
	})

	t.Run("handshake flood with limits", func(t *testing.T) {
		dir := t.TempDir()
		certs := writeCerts(t, dir)
		bs := []*backend{startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3")}
		cfg := strings.Replace(abuseConfig(backendsTOML(bs...), "10000"), "  [listener.tls]", `  [listener.limits]
  rate = 100000
  handshake_rate = 5
  handshake_burst = 64
  [listener.tls]`, 1)
		lb := startLB(t, dir, cfg)
		l := startLoad(t, certs, lb.addrs["https"], workers)
		done, failed := flood(lb)
		s := l.finish()
		check(t, s)
		refused := metricValue(lb.metricsText(), `lb_connections_refused_total{listener="https",reason="rate_limited"}`)
		rows = append(rows, reliabilityRow{name: "the same flood, the listener limiting handshakes to 5 a second per address (burst 64)", load: normal,
			sent: s.sent, failed: s.failed, detect: "at once", recover: "-", latency: ms(s.p99) + " / " + ms(s.max),
			notes: fmt.Sprintf("%d handshakes in %s, %d connections closed at accept; peak RSS %.0f MiB", done, 2*phase, int64(refused), peakRSS(t, lb.cmd.Process.Pid))})
		if limit := int64(8 * (64 + 5*(2*phase/time.Second+1))); done > limit {
			t.Errorf("%d handshakes from 8 limited addresses in %s; want at most %d", done, 2*phase, limit)
		}
		_ = failed
	})

	t.Run("half-open TLS and noise", func(t *testing.T) {
		lb, _, l, _ := start(t, "10000")
		n := 200 * scale
		conns := make([]net.Conn, 0, 2*n)
		noise := make([]byte, 1024)
		for i := range 2 * n {
			c, err := net.Dial("tcp", lb.addrs["https"])
			if err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 {
				// The first bytes of a ClientHello record, then nothing.
				c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00})
			} else {
				for j := range noise {
					noise[j] = byte(i*31 + j*7)
				}
				c.Write(noise)
			}
			conns = append(conns, c)
		}
		begun := time.Now()
		var halfLongest, noiseLongest time.Duration
		var halfOpen, noiseOpen int
		var both sync.WaitGroup
		both.Add(2)
		go func() {
			defer both.Done()
			halfLongest, halfOpen = closedWithin(evens(conns), begun, 15*time.Second)
		}()
		go func() {
			defer both.Done()
			noiseLongest, noiseOpen = closedWithin(odds(conns), begun, 15*time.Second)
		}()
		both.Wait()
		s := l.finish()
		check(t, s)
		if halfOpen+noiseOpen > 0 {
			t.Errorf("%d half-open and %d noisy connections still open", halfOpen, noiseOpen)
		}
		rows = append(rows, reliabilityRow{name: fmt.Sprintf("%d half-open TLS handshakes and %d connections sending 1 KiB of noise", n, n), load: normal,
			sent: s.sent, failed: s.failed, detect: fmt.Sprintf("noise cut within %s, half-open within %s", ms(noiseLongest), ms(halfLongest)), recover: "-",
			latency: ms(s.p99) + " / " + ms(s.max), notes: fmt.Sprintf("handshake timeout; peak RSS %.0f MiB", peakRSS(t, lb.cmd.Process.Pid))})
		for _, c := range conns {
			c.Close()
		}
	})

	t.Run("more connections than max_connections", func(t *testing.T) {
		dir := t.TempDir()
		certs := writeCerts(t, dir)
		lb := startLB(t, dir, abuseConfig(backendsTOML(startBackend(t, "b1")), "40"))
		held := make([]*http.Client, 0, 40)
		for range 40 {
			c := certs.client(lb.addrs["https"], true)
			if code, _, err := get(c, "https://www.example.com/hold"); code != 200 {
				t.Fatalf("holding a connection: %d %v", code, err)
			}
			held = append(held, c)
		}
		extra := 30
		results := make(chan error, extra)
		begun := time.Now()
		for range extra {
			go func() {
				code, _, err := get(certs.client(lb.addrs["https"], false), "https://www.example.com/late")
				if err == nil && code != 200 {
					err = fmt.Errorf("status %d", code)
				}
				results <- err
			}()
		}
		time.Sleep(500 * time.Millisecond)
		waiting := extra - len(results)
		if n := lb.status().Listeners[0].ActiveConnections; n > 40 {
			t.Errorf("%d connections open, max_connections 40", n)
		}
		for _, c := range held {
			c.CloseIdleConnections()
		}
		failed := 0
		for range extra {
			if err := <-results; err != nil {
				failed++
				t.Errorf("a client past max_connections failed: %v", err)
			}
		}
		served := time.Since(begun)
		if waiting == 0 {
			t.Error("no client waited: max_connections was not applied")
		}
		rows = append(rows, reliabilityRow{name: fmt.Sprintf("%d more clients than max_connections = 40", extra), load: "40 held keep-alive connections",
			sent: extra, failed: failed, detect: "-", recover: "all served " + ms(served) + " after arriving",
			latency: "-", notes: fmt.Sprintf("%d waited in the kernel's accept queue until held connections closed; none refused", waiting)})
	})
	writeReliabilityTable(t, "reliability-clients.md", "Abusive clients", rows)
}

func evens[T any](s []T) (out []T) {
	for i := 0; i < len(s); i += 2 {
		out = append(out, s[i])
	}
	return out
}

func odds[T any](s []T) (out []T) {
	for i := 1; i < len(s); i += 2 {
		out = append(out, s[i])
	}
	return out
}

// startBigBackend answers /big with size bytes, other paths briefly.
func startBigBackend(t *testing.T, size int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(strings.Repeat("0123456789abcdef", size/16))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", "big")
		if r.URL.Path != "/big" {
			io.WriteString(w, "big "+r.Method+" "+r.URL.Path+"\n")
			return
		}
		w.Write(body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
