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
	kind    string // lb, haproxy, nginx or nginx-buffered: the name without -native
	suites  string // TLS 1.3 suites of HAProxy and NGINX: aes128 or native (-suites)
	version string
	dir     string // its folder in the work folder: configs, logs
	port    int
	tcpPort int // plain TCP listener for the tcp scenarios; 0 if none
	// bodyPort is the TLS listener of the uploads and downloads
	// scenarios, 0 if none; tempDirs are where it may spool bodies.
	bodyPort int
	tempDirs []string
	// start starts the proxy in the configuration of v, pinned to the
	// proxy's core; its access log, if v has one, goes to accessLog(v).
	start func(v variant) (*exec.Cmd, error)
	// tls is how an OpenSSL client (wrk, h2load) negotiates with each
	// variant, read once with openssl s_client ("" until then).
	tls map[variant]string
}

// accessLog is the file the proxy logs requests to in variant v, "" for
// none.
func (c *contender) accessLog(v variant) string {
	if v == tuned {
		return ""
	}
	return filepath.Join(c.dir, "access-"+string(v)+".log")
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
