package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

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
	bodyAddr   string   // backend of the uploads and downloads scenarios; "" if none
	backendCmd []*exec.Cmd
	contenders map[string]*contender
	self       string // this program, for the load-generator subcommands
	cache      bool   // the cache scenario runs: each proxy gets a cached route
	notes      []string
}

// contender is one proxy under test.
type contender struct {
	name    string
	version string
	port    int
	tcpPort int // plain TCP listener for the tcp scenarios; 0 if none
	// bodyPort is the TLS listener of the uploads and downloads
	// scenarios, 0 if none; tempDirs are where it may spool bodies.
	bodyPort int
	tempDirs []string
	start    func() (*exec.Cmd, error)
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
	if wantsBodies(o.scenarios) {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		cmd := exec.Command("taskset", "-c", o.loadCPU, e.self, "body-backend", "-addr", addr,
			"-rate", formatSize(o.backendRate), "-sockbuf", formatSize(o.sockbuf))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		e.backendCmd = append(e.backendCmd, cmd)
		if err := waitHTTP(addr, false); err != nil {
			return nil, fmt.Errorf("body backend %s: %w", addr, err)
		}
		e.bodyAddr = addr
		logf("body backend: %s", addr)
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
	if len(e.tcpSinks) > 0 && !strings.HasPrefix(name, "nginx") {
		if c.tcpPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	if e.bodyAddr != "" {
		if c.bodyPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(e.work, name)
	os.MkdirAll(dir, 0o755)
	pin := func(env []string, args ...string) *exec.Cmd {
		cmd := exec.Command("taskset", append([]string{"-c", e.o.proxyCPU}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		// Appended to, so that every start's log is kept (-keep).
		f, _ := os.OpenFile(filepath.Join(dir, "stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
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
		if c.bodyPort != 0 {
			body, err := e.lbBodies(conf, text, c.bodyPort)
			if err != nil {
				return nil, err
			}
			text += body
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
		if c.bodyPort != 0 {
			// Room for the body scenarios' connections, as many as the
			// open-file limit allows (HAProxy refuses to start with a
			// maxconn it has no descriptors for: two per connection).
			text = strings.Replace(text, "  maxconn 9000", fmt.Sprintf("  maxconn %d", min(50000, (e.o.nofile-100)/2)), 1)
			text += fmt.Sprintf(haproxyBodies, c.bodyPort, e.comboFile, e.bodyAddr)
		}
		writeFile(conf, text)
		c.version = firstLine(output("haproxy", "-v"))
		c.start = func() (*exec.Cmd, error) {
			cmd := pin(nil, "haproxy", "-db", "-f", conf)
			return cmd, cmd.Start()
		}
	case "nginx", "nginx-buffered":
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
		if c.bodyPort != 0 {
			// Connections count both sides of a proxied request.
			text = strings.Replace(text, "worker_rlimit_nofile 20000;", fmt.Sprintf("worker_rlimit_nofile %d;", e.o.nofile), 1)
			text = strings.Replace(text, "worker_connections 9000;", fmt.Sprintf("worker_connections %d;", e.o.nofile), 1)
			buffering := "off"
			if name == "nginx-buffered" {
				buffering = "on"
			}
			c.tempDirs = []string{filepath.Join(dir, "client_body_temp"), filepath.Join(dir, "proxy_temp")}
			server := fmt.Sprintf(nginxBodies, e.bodyAddr, c.bodyPort, e.certFile, e.keyFile,
				c.tempDirs[0], c.tempDirs[1], buffering)
			text = strings.TrimSuffix(strings.TrimSpace(text), "}") + server + "}\n"
		}
		writeFile(conf, text)
		c.version = strings.TrimSpace(output("nginx", "-v"))
		c.start = func() (*exec.Cmd, error) {
			cmd := pin(nil, "nginx", "-p", dir, "-c", conf)
			return cmd, cmd.Start()
		}
	default:
		return nil, fmt.Errorf("unknown contender %q (lb, haproxy, nginx, nginx-buffered)", name)
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
