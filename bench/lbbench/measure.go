package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// measurement is one scenario run of one contender.
type measurement struct {
	Round  int       `json:"round"`
	At     time.Time `json:"at"`         // when its first run started
	Rate   float64   `json:"rate"`       // requests or handshakes per second
	Count  float64   `json:"count"`      // requests or handshakes in the run
	CPUPer float64   `json:"cpu_per_us"` // proxy CPU µs per request or handshake
	P99    float64   `json:"p99_ms"`
	RSSPer float64   `json:"rss_per_kb"` // idle scenario: KB per connection
	// RSSSettle is RSSPer 1, 2, ... seconds after the last connection
	// opened, before the reading at -idle-settle.
	RSSSettle []float64 `json:"rss_settle_kb,omitempty"`
	ProxyCore float64   `json:"proxy_core"` // proxy CPU as a share of one core
	noise     float64   // % of the proxy's core used by other processes
	Noise     float64   `json:"noise_pct"`
	// NoiseLoad is the % of the load core other processes used (the
	// busy time of both cores that was not lbbench's or its children's,
	// less the proxy core's share).
	NoiseLoad float64 `json:"noise_load_pct"`
	// Runs is how many times this measurement was taken: more than one
	// when others used a core; Noisy when the last was still over
	// -max-noise.
	Runs  int  `json:"runs"`
	Noisy bool `json:"noisy,omitempty"`
	// Served counts every request of the keep-alive scenarios, warm-up
	// included; LogLines the lines of the access log once the proxy
	// stopped (the logged and default scenarios).
	Served   float64 `json:"served,omitempty"`
	LogLines int64   `json:"log_lines,omitempty"`
	// TLS is what the handshake client negotiated (handshake scenario).
	TLS string `json:"tls,omitempty"`
	// Procs and Threads are the proxy's processes and their threads at
	// the end of the run.
	Procs   int `json:"procs,omitempty"`
	Threads int `json:"threads,omitempty"`
	// Body is the outcome of the uploads and downloads scenarios, nil
	// for the others.
	Body *bodyMeasure `json:"body,omitempty"`
}

func (m measurement) summary() string {
	if b := m.Body; b != nil {
		s := fmt.Sprintf("%d/%d done, %d failed, peak RSS %s (%.0f KB each), %.0f s", b.Completed, b.N, b.Failed,
			mib(b.PeakRSS), b.PerConnKB, b.WallS)
		if b.Stopped != "" {
			s += "; stopped: " + b.Stopped
		}
		if len(b.Errors) > 0 {
			s += fmt.Sprintf("; errors %v", b.Errors)
		}
		return s
	}
	if m.RSSPer > 0 {
		return fmt.Sprintf("%.1f KB/conn", m.RSSPer)
	}
	s := fmt.Sprintf("%8.0f/s  %6.1f µs CPU each  proxy %.0f%% of a core  others %.1f%% there, %.1f%% on the load core", m.Rate, m.CPUPer, m.ProxyCore*100, m.noise, m.NoiseLoad)
	if m.P99 > 0 {
		s += fmt.Sprintf("  p99 %.2f ms", m.P99)
	}
	return s
}

// measure starts the contender in the configuration the scenario asks
// for, runs the scenario and stops it.
func (e *env) measure(c *contender, scenario string) (measurement, error) {
	if strings.HasPrefix(scenario, "tcp-") && c.tcpPort == 0 {
		return measurement{}, errSkip
	}
	at := time.Now().UTC()
	v := variantOf(scenario)
	cmd, err := c.start(v)
	if err != nil {
		return measurement{}, err
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		stopProc(cmd)
		// What NGINX spooled of bodies, if it was stopped before
		// removing it.
		for _, d := range c.tempDirs {
			os.RemoveAll(d)
		}
	}
	defer stop()
	addr := fmt.Sprintf("127.0.0.1:%d", c.port)
	if err := waitHTTP(addr, true); err != nil {
		return measurement{}, fmt.Errorf("%s did not come up: %w", c.name, err)
	}
	if _, ok := c.tls[v]; !ok {
		c.tls[v] = e.tlsProbe(addr)
	}
	pid := cmd.Process.Pid
	m, err := e.scenario(c, pid, addr, scenario)
	if err != nil {
		return m, err
	}
	m.At = at
	m.Procs, m.Threads = len(tree(pid)), threads(pid)
	if f := c.accessLog(v); f != "" {
		// Stopped first, so that buffered lines are written.
		stop()
		m.LogLines = countLines(f)
		os.Remove(f)
	}
	return m, nil
}

// scenario runs one scenario against the contender's process pid, whose
// HTTPS listener is addr.
func (e *env) scenario(c *contender, pid int, addr, scenario string) (measurement, error) {
	if strings.HasPrefix(scenario, "tcp-") {
		tcpAddr := fmt.Sprintf("127.0.0.1:%d", c.tcpPort)
		if err := waitTCP(tcpAddr); err != nil {
			return measurement{}, err
		}
		return e.tcpScenario(pid, tcpAddr, strings.TrimPrefix(scenario, "tcp-"))
	}
	switch scenario {
	case "uploads", "downloads":
		return e.bodies(c, pid, fmt.Sprintf("127.0.0.1:%d", c.bodyPort), scenario)
	case "keepalive", "logged", "default":
		return e.keepalive(pid, addr, "/")
	case "cache":
		return e.keepalive(pid, addr, "/cached/object")
	case "handshake":
		return e.handshake(pid, addr)
	case "idle":
		return e.idle(pid, addr)
	case "h2":
		return e.h2(pid, addr)
	}
	return measurement{}, fmt.Errorf("unknown scenario %q (%s)", scenario, strings.Join(allScenarios, ", "))
}

// allScenarios are the scenarios lbbench knows, in the order of the
// report. "tcp" on the command line stands for both tcp ones.
var allScenarios = []string{"keepalive", "logged", "default", "handshake", "h2", "cache", "idle",
	"tcp-throughput", "tcp-connrate", "uploads", "downloads"}

// keepalive runs wrk over TLS keep-alive connections against path.
func (e *env) keepalive(pid int, addr, path string) (measurement, error) {
	url := "https://" + addr + path
	wrk := func(d time.Duration) (string, error) {
		return outputErr("taskset", "-c", e.o.loadCPU, "wrk", "-t1", "-c", strconv.Itoa(e.o.conns),
			"-d", fmt.Sprintf("%ds", int(d.Seconds())), "--latency", url)
	}
	warm, err := wrk(e.o.warmup)
	if err != nil {
		return measurement{}, err
	}
	before := e.sample(pid)
	out, err := wrk(e.o.duration)
	after := e.sample(pid)
	if err != nil {
		return measurement{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	w, err := parseWrk(out)
	if err != nil {
		return measurement{}, err
	}
	if w.errors > 0 {
		return measurement{}, fmt.Errorf("wrk saw %d errors:\n%s", w.errors, out)
	}
	m := e.cpuMeasurement(before, after, w.requests)
	m.P99 = w.p99
	m.Served = w.requests
	if ww, err := parseWrk(warm); err == nil {
		m.Served += ww.requests
	}
	return m, nil
}

// h2 runs h2load: 16 TLS connections negotiating h2, 10 streams each.
func (e *env) h2(pid int, addr string) (measurement, error) {
	url := "https://" + addr + "/"
	run := func(d time.Duration) (float64, error) {
		args := []string{"-c", e.o.loadCPU, "h2load", "-c16", "-m10", "-t1", "-D", strconv.Itoa(int(d.Seconds()))}
		if e.o.h2RPS > 0 {
			args = append(args, "--rps", strconv.Itoa(e.o.h2RPS))
		}
		out, err := outputErr("taskset", append(args, url)...)
		if err != nil {
			return 0, fmt.Errorf("h2load: %v\n%s", err, out)
		}
		if !strings.Contains(out, "Application protocol: h2") {
			return 0, fmt.Errorf("h2load did not speak h2:\n%s", out)
		}
		var total, started, done, ok, failed int
		i := strings.Index(out, "requests: ")
		if i < 0 {
			return 0, fmt.Errorf("no h2load summary:\n%s", out)
		}
		if _, err := fmt.Sscanf(out[i:], "requests: %d total, %d started, %d done, %d succeeded, %d failed", &total, &started, &done, &ok, &failed); err != nil {
			return 0, fmt.Errorf("h2load summary: %v\n%s", err, out)
		}
		if failed > 0 || ok == 0 {
			return 0, fmt.Errorf("h2load: %d of %d requests failed:\n%s", failed, done, out)
		}
		return float64(ok), nil
	}
	return e.timed(pid, run)
}

// timed runs a load once to warm up and once measured, and returns the
// proxy's CPU per unit of what run counted (requests, handshakes, MB).
func (e *env) timed(pid int, run func(time.Duration) (float64, error)) (measurement, error) {
	if _, err := run(e.o.warmup); err != nil {
		return measurement{}, err
	}
	before := e.sample(pid)
	n, err := run(e.o.duration)
	after := e.sample(pid)
	if err != nil {
		return measurement{}, err
	}
	return e.cpuMeasurement(before, after, n), nil
}

func (e *env) handshake(pid int, addr string) (measurement, error) {
	var hsTLS string
	m, err := e.timed(pid, func(d time.Duration) (float64, error) {
		out, err := outputErr("taskset", "-c", e.o.loadCPU, e.self, "handshake-client",
			"-addr", addr, "-c", strconv.Itoa(e.o.hsConns), "-d", d.String())
		if err != nil {
			return 0, fmt.Errorf("handshake client: %v\n%s", err, out)
		}
		var r hsResult
		if err := jsonLast(out, &r); err != nil {
			return 0, err
		}
		hsTLS = r.TLS
		if r.Resumed > 0 {
			return 0, fmt.Errorf("%d handshakes resumed a session; the scenario needs full handshakes", r.Resumed)
		}
		if r.Errors > r.Handshakes/100 {
			return 0, fmt.Errorf("%d of %d handshakes failed: %s", r.Errors, r.Handshakes, r.LastError)
		}
		return float64(r.Handshakes), nil
	})
	m.TLS = hsTLS
	return m, err
}

func (e *env) idle(pid int, addr string) (measurement, error) {
	// One request first, so that lazily made state exists before the
	// baseline is read.
	if err := waitHTTP(addr, true); err != nil {
		return measurement{}, err
	}
	time.Sleep(500 * time.Millisecond)
	base := treeRSS(pid)
	cmd := exec.Command("taskset", "-c", e.o.loadCPU, e.self, "idle-client", "-addr", addr,
		"-n", strconv.Itoa(e.o.idleConns), "-hold", (e.o.idleSettle + 30*time.Second).String())
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if stopping.Load() {
		return measurement{}, errStopping
	}
	if err := cmd.Start(); err != nil {
		return measurement{}, err
	}
	defer stopProc(cmd)
	// The client prints "ready" once every connection is open and has
	// made one request.
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(out.String(), "ready") {
		if time.Now().After(deadline) {
			return measurement{}, fmt.Errorf("idle client did not get ready: %s", out.String())
		}
		if cmd.ProcessState != nil {
			return measurement{}, fmt.Errorf("idle client exited: %s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Let idle-time memory release happen, then read the peak-free
	// value; the value at each second on the way is kept in the JSON.
	per := func() float64 { return float64(treeRSS(pid)-base) / 1024 / float64(e.o.idleConns) }
	var m measurement
	for t := time.Second; t < e.o.idleSettle; t += time.Second {
		time.Sleep(time.Second)
		m.RSSSettle = append(m.RSSSettle, per())
	}
	time.Sleep(e.o.idleSettle - time.Duration(len(m.RSSSettle))*time.Second)
	m.RSSPer = per()
	return m, nil
}

// errSkip marks a scenario a contender does not take part in.
var errSkip = errors.New("not measured for this contender")

func wantsTCP(scenarios []string) bool {
	for _, s := range scenarios {
		if strings.HasPrefix(s, "tcp-") {
			return true
		}
	}
	return false
}

// waitTCP waits until addr accepts connections.
func waitTCP(addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tcpScenario runs the tcp client in throughput or connrate mode.
func (e *env) tcpScenario(pid int, addr, mode string) (measurement, error) {
	conc := "4"
	if mode == "connrate" {
		conc = "16"
	}
	return e.timed(pid, func(d time.Duration) (float64, error) {
		out, err := outputErr("taskset", "-c", e.o.loadCPU, e.self, "tcp-client", "-mode", mode,
			"-addr", addr, "-c", conc, "-d", d.String())
		if err != nil {
			return 0, fmt.Errorf("tcp client: %v\n%s", err, out)
		}
		var r tcpResult
		if err := jsonLast(out, &r); err != nil {
			return 0, err
		}
		if r.Errors > 0 {
			return 0, fmt.Errorf("%d errors: %s", r.Errors, r.LastError)
		}
		if mode == "throughput" {
			return float64(r.Bytes) / 1e6, nil // CPU per MB
		}
		return float64(r.Conns), nil
	})
}

// hsResult is what handshake-client prints.
type hsResult struct {
	Handshakes int    `json:"handshakes"`
	Resumed    int    `json:"resumed"`
	Errors     int    `json:"errors"`
	LastError  string `json:"last_error"`
	TLS        string `json:"tls"` // version, suite and group negotiated
}
