package e2e

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// forged are forwarding headers as a client forging them sends them:
// twice, and spelt with underscores.
const forged = "X-Forwarded-For: 10.0.0.1\r\nX_Forwarded_For: 10.6.6.6\r\n" +
	"X-Forwarded-Host: evil.example\r\nX-Forwarded-Host: evil2.example\r\nX_Forwarded_Host: evil3.example\r\n" +
	"X-Forwarded-Proto: https\r\nX-Forwarded-Proto: gopher\r\n" +
	"X-Forwarded-Port: 666\r\nX-Forwarded-Prefix: /evil\r\nX-Forwarded-Ssl: on\r\n" +
	"X-Real-IP: 10.6.6.7\r\nX_Real_IP: 10.6.6.8\r\n" +
	"Forwarded: for=10.6.6.9;host=evil.example;proto=https\r\nForwarded: host=evil4.example\r\n"

// TestForgedForwardingHeaders sends forged forwarding headers through
// the real binary, plain, over TLS and behind accept_proxy_protocol: the
// backend's raw bytes hold lb's values alone, once each.
func TestForgedForwardingHeaders(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	rec := startRecorder(t)
	lb := startLB(t, dir, `
[global]
access_log = ""
admin = "127.0.0.1:0"
shutdown_grace = "1s"
watch = false

[[listener]]
name = "plain"
bind = "127.0.0.1:0"
pool = "web"

[[listener]]
name = "tls"
bind = "127.0.0.1:0"
pool = "web"
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"
  alpn = ["http/1.1"]

[[listener]]
name = "proxied"
bind = "127.0.0.1:0"
pool = "web"
accept_proxy_protocol = true

[[pool]]
name = "web"
retries = 0
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = "`+rec.addr+`"
`)
	for _, tc := range []struct {
		listener, prelude, client, proto, port string
	}{
		{"plain", "", "127.0.0.1", "http", "80"},
		{"tls", "", "127.0.0.1", "https", "443"},
		{"proxied", "PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n", "2001:db8::7", "http", "80"},
	} {
		t.Run(tc.listener, func(t *testing.T) {
			before := rec.count()
			var c net.Conn
			var err error
			if tc.listener == "tls" {
				c, err = tls.Dial("tcp", lb.addrs["tls"], &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com"})
			} else {
				c, err = net.Dial("tcp", lb.addrs[tc.listener])
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, tc.prelude+"GET /x HTTP/1.1\r\nHost: www.example.com\r\n"+forged+"Connection: close\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			got := rec.since(before)
			if len(got) != 1 || got[0].err != nil {
				t.Fatalf("backend saw %s", backendSummary(got))
			}
			seen := map[string][]string{}
			for _, f := range got[0].fields {
				n := strings.ReplaceAll(strings.ToLower(f[0]), "_", "-")
				if n == "forwarded" || n == "x-real-ip" || strings.HasPrefix(n, "x-forwarded-") {
					seen[n] = append(seen[n], f[1])
					sort.Strings(seen[n])
				}
			}
			forHost := tc.client
			if strings.Contains(forHost, ":") {
				forHost = `"[` + forHost + `]"`
			}
			want := map[string][]string{
				"x-forwarded-for":   {"10.0.0.1, " + tc.client},
				"x-forwarded-proto": {tc.proto},
				"x-forwarded-host":  {"www.example.com"},
				"x-forwarded-port":  {tc.port},
				"x-real-ip":         {tc.client},
				"forwarded":         {"for=" + forHost + ";host=www.example.com;proto=" + tc.proto},
			}
			if !reflect.DeepEqual(seen, want) {
				t.Errorf("backend got\n%v\nwant\n%v\nraw: %q", seen, want, got[0].raw)
			}
		})
	}
}
