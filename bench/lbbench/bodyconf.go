package main

import (
	"fmt"
	"strconv"
	"strings"
)

// The contenders' listeners for the uploads and downloads scenarios: TLS
// like the main one, HTTP/1.1, to the body backend, with every limit on
// body size off, every timeout longer than a run (-body-timeout) so
// that none cuts a slow transfer, and 10 s to connect to the backend: lb
// reading 1,000 bodies whole on its one core took more than its default
// 2 s to see some of its backend connections complete, and answered 502.
// They are added to a contender's config only when one of those
// scenarios runs.
//
// The body backend is not health-checked, actively or passively, by any
// contender: with the proxy's one core saturated by thousands of TLS
// connections a check can miss its deadline, and the one backend taken
// out would turn the rest of the run into 503s, which measures something
// other than memory.

// lbBodyListener is lb's listener and pool for the body scenarios. The
// keys that decide how lb holds bodies are here, to be adjusted as lb
// learns to stream request bodies: max_request_body (-lb-max-body; 0
// means no limit where lb accepts it), and the timeouts, which in lb
// bound a whole request or response rather than a pause in it.
const lbBodyListener = `
[[listener]]
name = "bodies"
bind = "127.0.0.1:%d"
pool = "bodies"
max_connections = 30000
max_request_body = %s
read_timeout = "10m"
write_timeout = "10m"
idle_timeout = "10m"
  [listener.tls]
  cert = %q
  key = %q
  alpn = ["http/1.1"]
[[pool]]
name = "bodies"
max_conns_per_backend = 0
retries = 0
connect_timeout = "10s"
response_timeout = "10m"
  [pool.health]
  check = "none"
  passive_failures = 0
  [[pool.backend]]
  address = %q
`

// lbBodyFallback is the max_request_body used when lb refuses
// -lb-max-body (lb before streaming request bodies refuses 0).
const lbBodyFallback = "200GiB"

// lbBodies returns lb's body listener for a config whose other sections
// are text, checked with lb -check: if lb refuses -lb-max-body, it falls
// back to lbBodyFallback and notes it in the report.
func (e *env) lbBodies(conf, text string, port int) (string, error) {
	body := func(max string) string {
		v := strconv.Quote(max)
		if _, err := strconv.ParseInt(max, 10, 64); err == nil {
			v = max
		}
		return fmt.Sprintf(lbBodyListener, port, v, e.certFile, e.keyFile, e.bodyAddr)
	}
	check := func(max string) (string, error) {
		if err := writeFile(conf, text+body(max)); err != nil {
			return "", err
		}
		return outputErr(e.o.lbBin, "-check", "-config", conf)
	}
	out, err := check(e.o.lbMaxBody)
	if err == nil {
		return body(e.o.lbMaxBody), nil
	}
	if e.o.lbMaxBody == lbBodyFallback {
		return "", fmt.Errorf("lb -check refused the body listener:\n%s", out)
	}
	// "error: /tmp/.../lb.toml:32: listener[1].max_request_body: ..."
	// without the work folder's path.
	refusal := strings.TrimSpace(out)
	if i := strings.Index(refusal, "listener["); i >= 0 {
		refusal = refusal[i:]
	}
	if out2, err := check(lbBodyFallback); err != nil {
		return "", fmt.Errorf("lb -check refused the body listener:\n%s\nand with %s:\n%s", out, lbBodyFallback, out2)
	}
	note := fmt.Sprintf("lb -check refused max_request_body = %s (%s); lb ran with max_request_body = %q.",
		e.o.lbMaxBody, refusal, lbBodyFallback)
	e.notes = append(e.notes, note)
	logf("%s", note)
	return body(lbBodyFallback), nil
}

// haproxyBodies is HAProxy's frontend and backend for the body
// scenarios. HAProxy streams bodies both ways unless told to buffer
// (option http-buffer-request), holding at most a buffer (tune.bufsize,
// 16 KiB) each way per stream.
const haproxyBodies = `frontend fe_bodies
  bind 127.0.0.1:%d ssl crt %s alpn http/1.1
  maxconn 50000
  timeout client 10m
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %%[req.hdr(host)]
  default_backend bodies
backend bodies
  timeout connect 10s
  timeout server 10m
  server b0 %s
`

// nginxBodies is NGINX's server for the body scenarios, put inside its
// http block. "nginx" streams both ways (proxy_request_buffering and
// proxy_buffering off); "nginx-buffered" keeps NGINX's defaults (both
// on): it reads a whole request body, to a temporary file past
// client_body_buffer_size, before sending it on, and reads responses
// ahead of a slow client into proxy_buffers and then a temporary file of
// up to proxy_max_temp_file_size (1 GiB) each.
const nginxBodies = `  upstream bodies {
    server %s max_fails=0;
    keepalive 256;
  }
  server {
    listen 127.0.0.1:%d ssl backlog=4096;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_protocols TLSv1.2 TLSv1.3;
    client_max_body_size 0;
    client_body_timeout 600s;
    send_timeout 600s;
    client_body_temp_path %s;
    proxy_temp_path %s;
    location / {
` + nginxBodyProxy + `    }
  }
`

const nginxBodyProxy = `      proxy_pass http://bodies;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Host $host;
      proxy_connect_timeout 10s;
      proxy_read_timeout 600s;
      proxy_send_timeout 600s;
      proxy_request_buffering %[7]s;
      proxy_buffering %[7]s;
`
