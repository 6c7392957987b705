package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// variant is the configuration a scenario runs a contender in.
type variant string

const (
	// tuned is the same job in each proxy (see lbConf), set up as a
	// benchmark would: keep-alive to the backends in all three, one
	// worker, no access log.
	tuned variant = "tuned"
	// logged is tuned with every request logged to a file, the way each
	// proxy's users log: lb's combined format, HAProxy's option httplog
	// (on stdout, which goes to the file), NGINX's combined format with a
	// 64 KiB buffer.
	logged variant = "logged"
	// defaults is each proxy's own configuration out of the box (lb's
	// defaults, and Debian's haproxy.cfg and nginx.conf as far as a proxy
	// config takes them) with what makes it proxy the same job, and an
	// access log to a file.
	defaults variant = "default"
)

// variantOf is the configuration a scenario runs in.
func variantOf(scenario string) variant {
	switch scenario {
	case "logged":
		return logged
	case "default":
		return defaults
	}
	return tuned
}

// tls13Suites is the TLS 1.3 cipher suite order HAProxy and NGINX are
// given with -suites aes128 (the default): AES-128-GCM first, the suite
// Go's TLS, and so lb, picks on a machine with AES instructions whatever
// the client prefers. Left to themselves, HAProxy (which prefers its own
// order) and NGINX (which follows the client's) take OpenSSL's default
// order, AES-256-GCM-SHA384 first, from wrk and h2load, and HAProxy also
// from lbbench's handshake client: more AES rounds per record, and a
// handshake whose transcript and key schedule hash with SHA-384, which
// this machine's SHA instructions do not speed up, where lb's use
// SHA-256. Debian's haproxy.cfg sets this same order.
const tls13Suites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

// nginxStreamModule is where Debian's libnginx-mod-stream puts NGINX's
// layer-4 proxy; without it NGINX sits out the tcp scenarios.
const nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

func (e *env) contender(name string) (*contender, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.work, name)
	os.MkdirAll(dir, 0o755)
	c := &contender{name: name, kind: name, suites: e.o.suites, port: port, dir: dir, tls: map[variant]string{}}
	// haproxy-native and nginx-native keep their own TLS 1.3 suite order
	// whatever -suites says, to compare the two within one run.
	if k, ok := strings.CutSuffix(name, "-native"); ok && (k == "haproxy" || k == "nginx") {
		c.kind, c.suites = k, "native"
	}
	name = c.kind
	tcp := len(e.tcpSinks) > 0 && (name == "lb" || name == "haproxy" ||
		c.name == "nginx" && fileExists(nginxStreamModule))
	if tcp {
		if c.tcpPort, err = freePort(); err != nil {
			return nil, err
		}
	} else if len(e.tcpSinks) > 0 && c.name == "nginx" {
		e.notes = append(e.notes, "NGINX sat out the tcp scenarios: its stream module ("+nginxStreamModule+", Debian's libnginx-mod-stream) is not installed.")
	}
	if e.bodyAddr != "" {
		if c.bodyPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	configs := map[variant]string{}
	switch name {
	case "lb":
		err = e.lbConfigs(c, configs)
	case "haproxy":
		e.haproxyConfigs(c, configs)
	case "nginx", "nginx-buffered":
		e.nginxConfigs(c, configs)
	default:
		return nil, fmt.Errorf("unknown contender %q (lb, haproxy, nginx, nginx-buffered, haproxy-native, nginx-native)", c.name)
	}
	if err != nil {
		return nil, err
	}
	files := map[variant]string{}
	for v, text := range configs {
		ext := map[string]string{"lb": ".toml", "haproxy": ".cfg"}[name]
		if ext == "" {
			ext = ".conf"
		}
		f := filepath.Join(dir, name+"-"+string(v)+ext)
		if err := writeFile(f, text); err != nil {
			return nil, err
		}
		files[v] = f
	}
	if name == "lb" {
		// A config lb refuses would show only as a proxy that never comes up.
		for _, f := range files {
			if out, err := outputErr(e.o.lbBin, "-check", "-config", f); err != nil {
				return nil, fmt.Errorf("lb -check %s: %v\n%s", f, err, out)
			}
		}
	}
	switch name {
	case "lb":
		c.version = strings.TrimSpace(output(e.o.lbBin, "-version"))
	case "haproxy":
		c.version = firstLine(output("haproxy", "-v"))
	default:
		c.version = strings.TrimSpace(output("nginx", "-v"))
	}
	c.start = func(v variant) (*exec.Cmd, error) {
		conf, ok := files[v]
		if !ok {
			return nil, errSkip
		}
		if stopping.Load() {
			return nil, errStopping
		}
		var env []string
		args := []string{"-c", e.o.proxyCPU}
		switch name {
		case "lb":
			if v != defaults {
				// lb out of the box takes GOMAXPROCS from the cores it
				// may run on, 1 here too.
				env = []string{"GOMAXPROCS=1"}
			}
			args = append(args, e.o.lbBin, "-config", conf)
		case "haproxy":
			args = append(args, "haproxy", "-db", "-f", conf)
		default:
			args = append(args, "nginx", "-p", dir, "-c", conf)
		}
		cmd := exec.Command("taskset", args...)
		cmd.Env = append(os.Environ(), env...)
		// Appended to, so that every start's log is kept (-keep).
		errs, err := os.OpenFile(filepath.Join(dir, "stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		defer errs.Close()
		cmd.Stdout, cmd.Stderr = errs, errs
		if name == "haproxy" && c.accessLog(v) != "" {
			// HAProxy logs to stdout (log stdout), which is the file.
			out, err := os.OpenFile(c.accessLog(v), os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o644)
			if err != nil {
				return nil, err
			}
			defer out.Close()
			cmd.Stdout = out
		}
		return cmd, cmd.Start()
	}
	return c, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// lbConfigs writes lb's config for each variant into configs.
func (e *env) lbConfigs(c *contender, configs map[variant]string) error {
	var bs strings.Builder
	for _, b := range e.backends {
		fmt.Fprintf(&bs, "  [[pool.backend]]\n  address = %q\n", b)
	}
	text := fmt.Sprintf(lbConf, c.port, e.certFile, e.keyFile, bs.String())
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
		body, err := e.lbBodies(filepath.Join(c.dir, "lb-check.toml"), text, c.bodyPort)
		if err != nil {
			return err
		}
		text += body
	}
	configs[tuned] = text
	configs[logged] = strings.Replace(text, "access_log = \"\"\n",
		fmt.Sprintf("access_log = %q\naccess_log_format = \"combined\"\n", c.accessLog(logged)), 1)
	admin, err := freePort()
	if err != nil {
		return err
	}
	configs[defaults] = fmt.Sprintf(lbDefaultConf, c.accessLog(defaults), admin, c.port, e.certFile, e.keyFile, bs.String())
	return nil
}

// haproxyConfigs writes HAProxy's config for each variant into configs.
func (e *env) haproxyConfigs(c *contender, configs map[variant]string) {
	var bs strings.Builder
	for i, b := range e.backends {
		fmt.Fprintf(&bs, "  server s%d %s check inter 2s\n", i, b)
	}
	text := fmt.Sprintf(haproxyConf, c.port, e.comboFile, bs.String())
	if c.suites == "aes128" {
		text = strings.Replace(text, "global\n", "global\n  ssl-default-bind-ciphersuites "+tls13Suites+"\n", 1)
	}
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
	configs[tuned] = text
	withLog := strings.Replace(text, "global\n", "global\n  log stdout format raw local0\n", 1)
	configs[logged] = strings.Replace(withLog, "defaults\n", "defaults\n  log global\n  option httplog\n", 1)
	var ds strings.Builder
	for i, b := range e.backends {
		fmt.Fprintf(&ds, "  server s%d %s check\n", i, b)
	}
	configs[defaults] = fmt.Sprintf(haproxyDefaultConf, c.port, e.comboFile, ds.String())
}

// nginxConfigs writes NGINX's config for each variant into configs.
func (e *env) nginxConfigs(c *contender, configs map[variant]string) {
	var bs strings.Builder
	for _, b := range e.backends {
		fmt.Fprintf(&bs, "    server %s;\n", b)
	}
	text := fmt.Sprintf(nginxConf, c.dir, c.dir, bs.String(), c.port, e.certFile, e.keyFile)
	if c.suites == "aes128" {
		text = strings.Replace(text, "  access_log off;\n", "  access_log off;\n  ssl_prefer_server_ciphers on;\n  ssl_conf_command Ciphersuites "+tls13Suites+";\n", 1)
	}
	if e.cache {
		text = strings.Replace(text, "  upstream be {", fmt.Sprintf("  proxy_cache_path %s/cache levels=1:2 keys_zone=c:10m max_size=256m inactive=60m use_temp_path=off;\n  upstream be {", c.dir), 1)
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
		if c.name == "nginx-buffered" {
			buffering = "on"
		}
		c.tempDirs = []string{filepath.Join(c.dir, "client_body_temp"), filepath.Join(c.dir, "proxy_temp")}
		server := fmt.Sprintf(nginxBodies, e.bodyAddr, c.bodyPort, e.certFile, e.keyFile,
			c.tempDirs[0], c.tempDirs[1], buffering)
		text = strings.TrimSuffix(strings.TrimSpace(text), "}") + server + "}\n"
	}
	if c.tcpPort != 0 {
		text = "load_module " + nginxStreamModule + ";\n" + text
		var ts strings.Builder
		for _, b := range e.tcpSinks {
			fmt.Fprintf(&ts, "    server %s;\n", b)
		}
		text += fmt.Sprintf(nginxStream, ts.String(), c.tcpPort)
	}
	configs[tuned] = text
	configs[logged] = strings.Replace(text, "  access_log off;\n",
		fmt.Sprintf("  access_log %s combined buffer=64k;\n", c.accessLog(logged)), 1)
	mime := ""
	if fileExists("/etc/nginx/mime.types") {
		mime = "  include /etc/nginx/mime.types;\n"
	}
	configs[defaults] = fmt.Sprintf(nginxDefaultConf, c.dir, c.dir, mime, c.accessLog(defaults), bs.String(), c.port, e.certFile, e.keyFile)
}

// The three tuned configurations do the same work: TLS 1.2/1.3 with the
// same ECDSA certificate, HTTP/1.1 keep-alive to both backends (reused),
// round robin, X-Forwarded-For/-Proto/-Host, health checks every 2 s, no
// access log, one worker. With -suites aes128 all three pick the TLS 1.3
// suite TLS_AES_128_GCM_SHA256 (tls13Suites).
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

// nginxStream is NGINX's layer-4 proxy for the tcp scenarios, like
// HAProxy's mode tcp (no health checks: NGINX's open-source stream
// module has none).
const nginxStream = `stream {
  upstream tcpbe {
%s  }
  server {
    listen 127.0.0.1:%d backlog=4096;
    proxy_pass tcpbe;
    proxy_timeout 60s;
  }
}
`

// The default variant: what each proxy does out of the box, given only
// what it takes to do the job (TLS with the certificate, the two
// backends, X-Forwarded-For/-Proto/-Host, health checks where the proxy
// has them) and an access log to a file. Each is still pinned to the
// proxy's core, and so runs one worker or thread: lb's GOMAXPROCS,
// HAProxy's nbthread and NGINX's worker_processes auto follow the cores
// a process may use (NGINX: the cores the machine has, see the report).
//
// lb: every key not written takes its default (examples/reference.toml):
// the access log in lb's text format, log_level info, the admin server
// (on a free port, 127.0.0.1:9100 may be taken), watching the config
// file, 512 requests in flight per backend, TCP health checks every 2 s.
const lbDefaultConf = `[global]
access_log = %q
admin = "127.0.0.1:%d"

[[listener]]
name = "https"
bind = "127.0.0.1:%d"
pool = "web"
  [listener.tls]
  cert = %q
  key = %q

[[pool]]
name = "web"
%s`

// HAProxy: Debian's haproxy.cfg (global and defaults) without what a
// foreground process in a work folder cannot use (chroot, user, daemon,
// the stats socket, the error files), logging to stdout, which is a
// file, instead of to syslog's /dev/log (the whole cost of a log line is
// then on the proxy's core, as for the others). Keep-alive to the
// backends is HAProxy's default (http-reuse safe).
const haproxyDefaultConf = `global
  log stdout format raw local0
  ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384
  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
  ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
defaults
  log global
  mode http
  option httplog
  option dontlognull
  timeout connect 5000
  timeout client 50000
  timeout server 50000
frontend fe
  bind 127.0.0.1:%d ssl crt %s
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %%[req.hdr(host)]
  default_backend be
backend be
  balance roundrobin
%s`

// NGINX: Debian's nginx.conf (worker_processes auto, 768 connections,
// sendfile, tcp_nopush, gzip, ssl_prefer_server_ciphers, the combined
// access log unbuffered) with a server that proxies. NGINX's defaults
// for that: HTTP/1.0 to the backends and a new backend connection per
// request (keep-alive to backends takes an upstream keepalive and
// proxy_http_version 1.1), and a client connection closed after 1,000
// requests (keepalive_requests), which wrk then opens again.
const nginxDefaultConf = `user root;
worker_processes auto;
daemon off;
pid %s/nginx.pid;
error_log %s/error.log;
events {
  worker_connections 768;
}
http {
  sendfile on;
  tcp_nopush on;
  types_hash_max_size 2048;
%s  default_type application/octet-stream;
  ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
  ssl_prefer_server_ciphers on;
  access_log %s;
  gzip on;
  upstream be {
%s  }
  server {
    listen 127.0.0.1:%d ssl;
    ssl_certificate %s;
    ssl_certificate_key %s;
    location / {
      proxy_pass http://be;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Host $host;
    }
  }
}
`
