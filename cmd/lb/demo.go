package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/offloadlb/lb/internal/certgen"
	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/server"
)

// demoConfig is the config the demo runs; %s are filled in at start.
const demoConfig = `
[global]
log_level = "info"
access_log = "stdout"
admin = %q
shutdown_grace = "5s"
watch = false

[[listener]]
name = "https"
bind = %q
pool = "web"

  [listener.tls]
  cert = "demo.pem"  # made in memory at start
  key = "demo.key"

[[pool]]
name = "web"
algorithm = "round_robin"
retries = 1

  [pool.health]
  check = "http"
  path = "/healthz"
  interval = "2s"
  rise = 2
  fall = 3
%s`

// runDemo starts three backends on loopback and an lb in front of them,
// with a self-signed certificate made in memory.
func runDemo(listen, adminAddr string, stdout, stderr io.Writer) int {
	var backends []string
	var servers []*http.Server
	for i := 1; i <= 3; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintf(stderr, "lb -demo: cannot start a backend: %v\n", err)
			return 1
		}
		addr := ln.Addr().String()
		srv := &http.Server{Handler: demoBackend(i, addr), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		servers = append(servers, srv)
		backends = append(backends, addr)
	}
	defer func() {
		for _, s := range servers {
			s.Close()
		}
	}()

	pair, err := certgen.SelfSigned("localhost", "127.0.0.1", "::1")
	if err != nil {
		fmt.Fprintf(stderr, "lb -demo: cannot make a certificate: %v\n", err)
		return 1
	}
	var b strings.Builder
	for _, a := range backends {
		fmt.Fprintf(&b, "\n  [[pool.backend]]\n  address = %q\n", a)
	}
	src := fmt.Sprintf(demoConfig, adminAddr, listen, b.String())
	cfg, err := config.ParseWith([]byte(src), "", config.ParseOptions{
		Files: map[string][]byte{"demo.pem": pair.CertPEM, "demo.key": pair.KeyPEM},
	})
	if err != nil {
		printConfigErrors(stderr, err)
		return 1
	}

	log := newLogger(cfg.Global, stderr)
	for _, w := range cfg.Warnings { // -demo-admin 0.0.0.0:9100 is open to the network
		log.Warn(w)
	}
	return serve(cfg, "", log, func(s *server.Server) {
		url := "https://" + s.Addrs()["https"]
		fmt.Fprintf(stdout, `
lb demo: three backends behind one HTTPS listener.

  HTTPS:     %s   (self-signed certificate, so curl needs -k)
  backends:  %s
  admin:     http://%s/status.json

Try:
  curl -k %s/
  for i in 1 2 3 4 5 6; do curl -sk %s/ | head -1; done
  curl -s http://%s/status.json

Each request is logged below. Press Ctrl-C to stop.

`, url, strings.Join(backends, ", "), s.AdminAddr(), url, url, s.AdminAddr())
	})
}

// demoBackend answers with which backend it is and what lb told it.
func demoBackend(n int, addr string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			io.WriteString(w, "ok\n")
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "backend %d (%s) answered %s %s\n", n, addr, r.Method, r.URL.RequestURI())
		for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"} {
			fmt.Fprintf(w, "  %s: %s\n", h, r.Header.Get(h))
		}
	})
}
