package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/offloadlb/lb/internal/certgen"
)

// body is the 100-byte response every backend sends.
var body = strings.Repeat("0123456789", 9) + "abcdefghi\n"

// env is the machine set up for a run: certificates, the two backends,
// and how to start each contender.
type env struct {
	o          options
	work       string
	certFile   string
	keyFile    string
	comboFile  string // cert + key in one file, for HAProxy
	backends   []string
	tcpSinks   []string // backends of the tcp scenarios
	backendCmd []*exec.Cmd
	contenders map[string]*contender
	self       string // this program, for the load-generator subcommands
	cache      bool   // the cache scenario runs: each proxy gets a cached route
}

// contender is one proxy under test.
type contender struct {
	name    string
	version string
	port    int
	tcpPort int // plain TCP listener for the tcp scenarios; 0 if none
	start   func() (*exec.Cmd, error)
}

func setup(o options, work string) (*env, error) {
	e := &env{o: o, work: work, contenders: map[string]*contender{}, cache: contains(o.scenarios, "cache")}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	e.self = self

	pair, err := certgen.New(certgen.Options{Names: []string{"localhost", "127.0.0.1"}, Key: certgen.ECDSA}, nil)
	if err != nil {
		return nil, err
	}
	if e.certFile, e.keyFile, err = pair.Write(work, "site"); err != nil {
		return nil, err
	}
	e.comboFile = filepath.Join(work, "site-combo.pem")
	if err := writeFile(e.comboFile, string(pair.CertPEM)+string(pair.KeyPEM)); err != nil {
		return nil, err
	}

	for i := range 2 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(work, fmt.Sprintf("backend%d", i))
		os.MkdirAll(dir, 0o755)
		conf := filepath.Join(dir, "nginx.conf")
		writeFile(conf, fmt.Sprintf(backendNginx, dir, dir, port, body))
		cmd := exec.Command("taskset", "-c", o.loadCPU, "nginx", "-p", dir, "-c", conf)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("backend nginx: %w", err)
		}
		e.backendCmd = append(e.backendCmd, cmd)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if err := waitHTTP(addr, false); err != nil {
			return nil, fmt.Errorf("backend %s: %w", addr, err)
		}
		e.backends = append(e.backends, addr)
	}
	logf("backends: %s", strings.Join(e.backends, ", "))
	if wantsTCP(o.scenarios) {
		for range 2 {
			port, err := freePort()
			if err != nil {
				return nil, err
			}
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			cmd := exec.Command("taskset", "-c", o.loadCPU, e.self, "tcp-sink", "-addr", addr)
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				return nil, err
			}
			e.backendCmd = append(e.backendCmd, cmd)
			if err := waitTCP(addr); err != nil {
				return nil, err
			}
			e.tcpSinks = append(e.tcpSinks, addr)
		}
		logf("tcp backends: %s", strings.Join(e.tcpSinks, ", "))
	}

	for _, name := range o.contenders {
		c, err := e.contender(name)
		if err != nil {
			return nil, err
		}
		e.contenders[name] = c
	}
	return e, nil
}

func (e *env) stop() {
	for _, c := range e.backendCmd {
		stopProc(c)
	}
}

// backendNginx is a single-worker NGINX that answers 200 with a fixed body.
const backendNginx = `worker_processes 1;
daemon off;
master_process off;
user root;
pid %[1]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:%[3]d backlog=4096;
    location / { return 200 "%[4]s"; }
    location /cached/ { add_header Cache-Control "max-age=3600"; return 200 "%[4]s"; }
  }
}
`

func (e *env) contender(name string) (*contender, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c := &contender{name: name, port: port}
	if len(e.tcpSinks) > 0 && name != "nginx" {
		if c.tcpPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(e.work, name)
	os.MkdirAll(dir, 0o755)
	pin := func(env []string, args ...string) *exec.Cmd {
		cmd := exec.Command("taskset", append([]string{"-c", e.o.proxyCPU}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		f, _ := os.Create(filepath.Join(dir, "stderr.log"))
		cmd.Stdout, cmd.Stderr = f, f
		return cmd
	}
	switch name {
	case "lb":
		conf := filepath.Join(dir, "lb.toml")
		var bs strings.Builder
		for _, b := range e.backends {
			fmt.Fprintf(&bs, "  [[pool.backend]]\n  address = %q\n", b)
		}
		text := fmt.Sprintf(lbConf, port, e.certFile, e.keyFile, bs.String())
		if e.cache {
			// A route to a second pool with the same backends and a cache.
			text = strings.Replace(text, "  [listener.tls]", "  [[listener.route]]\n  path_prefix = \"/cached/\"\n  pool = \"cached\"\n  [listener.tls]", 1)
			text += "\n[[pool]]\nname = \"cached\"\nmax_conns_per_backend = 0\n  [pool.health]\n  check = \"tcp\"\n  interval = \"2s\"\n  [pool.cache]\n  max_size = \"256MiB\"\n  max_object = \"1MiB\"\n" + bs.String()
		}
		if c.tcpPort != 0 {
			text += fmt.Sprintf("\n[[listener]]\nname = \"tcp\"\nmode = \"tcp\"\nbind = \"127.0.0.1:%d\"\npool = \"tcp\"\nmax_connections = 30000\n\n[[pool]]\nname = \"tcp\"\nmax_conns_per_backend = 0\n  [pool.health]\n  check = \"tcp\"\n  interval = \"2s\"\n", c.tcpPort)
			for _, b := range e.tcpSinks {
				text += fmt.Sprintf("  [[pool.backend]]\n  address = %q\n", b)
			}
		}
		writeFile(conf, text)
		c.version = strings.TrimSpace(output(e.o.lbBin, "-version"))
		c.start = func() (*exec.Cmd, error) {
			cmd := pin([]string{"GOMAXPROCS=1"}, e.o.lbBin, "-config", conf)
			return cmd, cmd.Start()
		}
	case "haproxy":
		conf := filepath.Join(dir, "haproxy.cfg")
		var bs strings.Builder
		for i, b := range e.backends {
			fmt.Fprintf(&bs, "  server s%d %s check inter 2s\n", i, b)
		}
		text := fmt.Sprintf(haproxyConf, port, e.comboFile, bs.String())
		if e.cache {
			text = strings.Replace(text, "  default_backend be", "  use_backend cached if { path_beg /cached/ }\n  default_backend be", 1)
			text += "cache c\n  total-max-size 256\n  max-object-size 1048576\n  max-age 3600\nbackend cached\n  balance roundrobin\n  http-request cache-use c\n  http-response cache-store c\n" + bs.String()
		}
		if c.tcpPort != 0 {
			text += fmt.Sprintf("listen tcp\n  mode tcp\n  bind 127.0.0.1:%d\n  balance roundrobin\n  timeout client 60s\n  timeout server 60s\n", c.tcpPort)
			for i, b := range e.tcpSinks {
				text += fmt.Sprintf("  server t%d %s check inter 2s\n", i, b)
			}
		}
		writeFile(conf, text)
		c.version = firstLine(output("haproxy", "-v"))
		c.start = func() (*exec.Cmd, error) {
			cmd := pin(nil, "haproxy", "-db", "-f", conf)
			return cmd, cmd.Start()
		}
	case "nginx":
		conf := filepath.Join(dir, "nginx.conf")
		var bs strings.Builder
		for _, b := range e.backends {
			fmt.Fprintf(&bs, "    server %s;\n", b)
		}
		text := fmt.Sprintf(nginxConf, dir, dir, bs.String(), port, e.certFile, e.keyFile)
		if e.cache {
			text = strings.Replace(text, "  upstream be {", fmt.Sprintf("  proxy_cache_path %s/cache levels=1:2 keys_zone=c:10m max_size=256m inactive=60m use_temp_path=off;\n  upstream be {", dir), 1)
			text = strings.Replace(text, "    location / {", `    location /cached/ {
      proxy_cache c;
`+nginxProxy+`    }
    location / {`, 1)
		}
		writeFile(conf, text)
		c.version = strings.TrimSpace(output("nginx", "-v"))
		c.start = func() (*exec.Cmd, error) {
			cmd := pin(nil, "nginx", "-p", dir, "-c", conf)
			return cmd, cmd.Start()
		}
	default:
		return nil, fmt.Errorf("unknown contender %q (lb, haproxy, nginx)", name)
	}
	return c, nil
}

// The three configurations do the same work: TLS 1.2/1.3 with the same
// ECDSA certificate, HTTP/1.1 keep-alive to both backends (reused), round
// robin, X-Forwarded-For/-Proto/-Host, health checks every 2 s, no access
// log, one worker.
const lbConf = `
[global]
log_level = "warn"
access_log = ""
admin = ""
watch = false
[[listener]]
name = "https"
bind = "127.0.0.1:%d"
pool = "web"
max_connections = 30000
  [listener.tls]
  cert = %q
  key = %q
  alpn = ["h2", "http/1.1"]
[[pool]]
name = "web"
max_conns_per_backend = 0
  [pool.health]
  check = "tcp"
  interval = "2s"
%s`

const haproxyConf = `global
  nbthread 1
  maxconn 9000
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:%d ssl crt %s alpn h2,http/1.1
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %%[req.hdr(host)]
  default_backend be
backend be
  balance roundrobin
%s`

const nginxConf = `worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
user root;
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 9000; }
http {
  access_log off;
  upstream be {
%s    keepalive 256;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:%d ssl http2 backlog=4096;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    location / {
` + nginxProxy + `    }
  }
}
`

// nginxProxy is how NGINX passes a request to the backends.
const nginxProxy = `      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Host $host;
`

// measurement is one scenario run of one contender.
type measurement struct {
	Rate      float64 `json:"rate"`       // requests or handshakes per second
	Count     float64 `json:"count"`      // requests or handshakes in the run
	CPUPer    float64 `json:"cpu_per_us"` // proxy CPU µs per request or handshake
	P99       float64 `json:"p99_ms"`
	RSSPer    float64 `json:"rss_per_kb"` // idle scenario: KB per connection
	ProxyCore float64 `json:"proxy_core"` // proxy CPU as a share of one core
	noise     float64 // % of the proxy's core used by other processes
	Noise     float64 `json:"noise_pct"`
}

func (m measurement) summary() string {
	if m.RSSPer > 0 {
		return fmt.Sprintf("%.1f KB/conn", m.RSSPer)
	}
	s := fmt.Sprintf("%8.0f/s  %6.1f µs CPU each  proxy %.0f%% of a core  others %.1f%%", m.Rate, m.CPUPer, m.ProxyCore*100, m.noise)
	if m.P99 > 0 {
		s += fmt.Sprintf("  p99 %.2f ms", m.P99)
	}
	return s
}

// measure starts the contender, runs one scenario and stops it.
func (e *env) measure(c *contender, scenario string) (measurement, error) {
	cmd, err := c.start()
	if err != nil {
		return measurement{}, err
	}
	defer stopProc(cmd)
	addr := fmt.Sprintf("127.0.0.1:%d", c.port)
	if err := waitHTTP(addr, true); err != nil {
		return measurement{}, fmt.Errorf("%s did not come up: %w", c.name, err)
	}
	pid := cmd.Process.Pid
	if strings.HasPrefix(scenario, "tcp-") {
		if c.tcpPort == 0 {
			return measurement{}, errSkip
		}
		tcpAddr := fmt.Sprintf("127.0.0.1:%d", c.tcpPort)
		if err := waitTCP(tcpAddr); err != nil {
			return measurement{}, err
		}
		return e.tcpScenario(pid, tcpAddr, strings.TrimPrefix(scenario, "tcp-"))
	}
	switch scenario {
	case "keepalive":
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
	return measurement{}, fmt.Errorf("unknown scenario %q (keepalive, handshake, h2, idle, cache, tcp-throughput, tcp-connrate)", scenario)
}

// keepalive runs wrk over TLS keep-alive connections against path.
func (e *env) keepalive(pid int, addr, path string) (measurement, error) {
	url := "https://" + addr + path
	wrk := func(d time.Duration) (string, error) {
		return outputErr("taskset", "-c", e.o.loadCPU, "wrk", "-t1", "-c", strconv.Itoa(e.o.conns),
			"-d", fmt.Sprintf("%ds", int(d.Seconds())), "--latency", url)
	}
	if _, err := wrk(e.o.warmup); err != nil {
		return measurement{}, err
	}
	before := sample(pid, e.o.proxyCPU)
	out, err := wrk(e.o.duration)
	after := sample(pid, e.o.proxyCPU)
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
	m := cpuMeasurement(before, after, w.requests)
	m.P99 = w.p99
	return m, nil
}

// h2 runs h2load: 16 TLS connections negotiating h2, 10 streams each.
func (e *env) h2(pid int, addr string) (measurement, error) {
	url := "https://" + addr + "/"
	run := func(d time.Duration) (float64, error) {
		out, err := outputErr("taskset", "-c", e.o.loadCPU, "h2load", "-c16", "-m10", "-t1",
			"-D", strconv.Itoa(int(d.Seconds())), url)
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
	before := sample(pid, e.o.proxyCPU)
	n, err := run(e.o.duration)
	after := sample(pid, e.o.proxyCPU)
	if err != nil {
		return measurement{}, err
	}
	return cpuMeasurement(before, after, n), nil
}

func (e *env) handshake(pid int, addr string) (measurement, error) {
	return e.timed(pid, func(d time.Duration) (float64, error) {
		out, err := outputErr("taskset", "-c", e.o.loadCPU, e.self, "handshake-client",
			"-addr", addr, "-c", strconv.Itoa(e.o.hsConns), "-d", d.String())
		if err != nil {
			return 0, fmt.Errorf("handshake client: %v\n%s", err, out)
		}
		var r hsResult
		if err := jsonLast(out, &r); err != nil {
			return 0, err
		}
		if r.Resumed > 0 {
			return 0, fmt.Errorf("%d handshakes resumed a session; the scenario needs full handshakes", r.Resumed)
		}
		if r.Errors > r.Handshakes/100 {
			return 0, fmt.Errorf("%d of %d handshakes failed: %s", r.Errors, r.Handshakes, r.LastError)
		}
		return float64(r.Handshakes), nil
	})
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
		"-n", strconv.Itoa(e.o.idleConns), "-hold", "30s")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
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
	// Let idle-time memory release happen, then read the peak-free value.
	time.Sleep(3 * time.Second)
	held := treeRSS(pid)
	return measurement{RSSPer: float64(held-base) / 1024 / float64(e.o.idleConns)}, nil
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
}

// cpuSample is a proxy's CPU time and the busy time of its core.
type cpuSample struct {
	at        time.Time
	proxy     float64 // seconds of CPU, the whole process tree
	coreBusy  float64 // seconds the proxy's core was busy
	coreTotal float64
}

func sample(pid int, core string) cpuSample {
	busy, total := coreTimes(core)
	return cpuSample{at: time.Now(), proxy: treeCPU(pid), coreBusy: busy, coreTotal: total}
}

func cpuMeasurement(before, after cpuSample, count float64) measurement {
	wall := after.at.Sub(before.at).Seconds()
	cpu := after.proxy - before.proxy
	busy := after.coreBusy - before.coreBusy
	m := measurement{Count: count, Rate: count / wall, ProxyCore: cpu / wall}
	if count > 0 {
		m.CPUPer = cpu / count * 1e6
	}
	if total := after.coreTotal - before.coreTotal; total > 0 {
		m.noise = max(0, (busy-cpu)/total*100)
	}
	m.Noise = m.noise
	return m
}

var clkTck = 100.0 // USER_HZ on Linux

// treeCPU is the user+system CPU seconds of pid and all its descendants.
func treeCPU(pid int) float64 {
	total := 0.0
	for _, p := range tree(pid) {
		f := statFields(p)
		if len(f) > 14 {
			u, _ := strconv.ParseFloat(f[13], 64)
			s, _ := strconv.ParseFloat(f[14], 64)
			total += (u + s) / clkTck
		}
	}
	return total
}

// treeRSS is the resident memory in bytes of pid and its descendants.
func treeRSS(pid int) int64 {
	var total int64
	for _, p := range tree(pid) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}

// statFields splits /proc/PID/stat after the command name.
func statFields(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	// Fields after ')' start at field 3 (state); pad so indexes match
	// proc(5)'s 1-based numbering minus one.
	return append([]string{"pid", "comm"}, strings.Fields(s[i+1:])...)
}

// tree returns pid and every process descended from it.
func tree(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := statFields(p)
		if len(f) > 3 {
			pp, _ := strconv.Atoi(f[3])
			children[pp] = append(children[pp], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// coreTimes reads busy and total time of one core from /proc/stat.
func coreTimes(core string) (busy, total float64) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[0] != "cpu"+core {
			continue
		}
		var v [8]float64
		for i := range v {
			v[i], _ = strconv.ParseFloat(fields[i+1], 64)
		}
		idle := v[3] + v[4]
		for _, x := range v {
			total += x
		}
		return (total - idle) / clkTck, total / clkTck
	}
	return 0, 0
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitHTTP waits until addr answers a GET (over TLS when tlsOn).
func waitHTTP(addr string, tlsOn bool) error {
	deadline := time.Now().Add(15 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		var c net.Conn
		c, last = net.DialTimeout("tcp", addr, time.Second)
		if last == nil {
			if tlsOn {
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
				last = tc.Handshake()
				c = tc
			}
			if last == nil {
				c.SetDeadline(time.Now().Add(2 * time.Second))
				fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil && strings.Contains(line, " 200 ") {
					c.Close()
					return nil
				}
				last = fmt.Errorf("answer %q: %v", line, err)
			}
			c.Close()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

func stopProc(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func output(name string, args ...string) string {
	out, _ := outputErr(name, args...)
	return out
}

func outputErr(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}

// wrkResult is what the report needs from wrk's output.
type wrkResult struct {
	requests float64
	p99      float64 // ms
	errors   int
}

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "99%":
			r.p99 = parseLatency(f[1])
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			r.requests, _ = strconv.ParseFloat(f[0], 64)
		case strings.Contains(line, "Non-2xx or 3xx responses:"):
			n, _ := strconv.Atoi(f[len(f)-1])
			r.errors += n
		case strings.HasPrefix(strings.TrimSpace(line), "Socket errors:"):
			for i := 2; i+1 < len(f); i += 2 {
				n, _ := strconv.Atoi(strings.TrimSuffix(f[i+1], ","))
				r.errors += n
			}
		}
	}
	if r.requests == 0 {
		return r, errors.New("could not read wrk's output:\n" + out)
	}
	return r, nil
}

// parseLatency reads wrk's "1.23ms" / "456.00us" / "1.02s" as milliseconds.
func parseLatency(s string) float64 {
	for _, u := range []struct {
		suffix string
		ms     float64
	}{{"us", 0.001}, {"ms", 1}, {"s", 1000}} {
		if strings.HasSuffix(s, u.suffix) {
			v, _ := strconv.ParseFloat(strings.TrimSuffix(s, u.suffix), 64)
			return v * u.ms
		}
	}
	return 0
}

func jsonLast(out string, v any) error {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return jsonUnmarshal([]byte(lines[len(lines)-1]), v)
}
