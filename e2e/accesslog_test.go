package e2e

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// goaccessCombined is GoAccess's COMBINED log format
// (%h %^[%d:%t %^] "%r" %s %b "%R" "%u") as a regular expression.
var goaccessCombined = regexp.MustCompile(`^(\S+) \S+ \S+ \[(\d{2}/[A-Z][a-z]{2}/\d{4}):(\d{2}:\d{2}:\d{2}) [-+]\d{4}\] "((?:[^"\\]|\\.)*)" (\d{3}) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"$`)

// TestAccessLogFormats: the real binary writes its access log to a file
// in the combined format (every line as GoAccess reads it, a hostile
// target escaped), then, after a reload, in JSON and in text; the
// requests in between are all there, in order.
func TestAccessLogFormats(t *testing.T) {
	b := startBackend(t, "b1")
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	logFile := filepath.Join(dir, "access.log")
	bind := freePort(t) // kept across reloads
	cfg := func(format string) string {
		return fmt.Sprintf(`
[global]
access_log = %q
access_log_format = %q
admin = "127.0.0.1:0"
watch = false

[[listener]]
name = "https"
bind = %q
pool = "web"
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"

[[pool]]
name = "web"
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = %q
`, logFile, format, bind, b.addr)
	}
	lb := startLB(t, dir, cfg("combined"))
	addr := lb.addrs["https"]
	c := certs.client(addr, true)
	send := func(n int) {
		for i := range n {
			req, _ := http.NewRequest("GET", fmt.Sprintf("https://localhost/page/%d?q=1", i), nil)
			req.Header.Set("Referer", "https://localhost/from")
			req.Header.Set("User-Agent", `test "agent" 1.0`)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	lines := func(n int) []string {
		t.Helper()
		var l []string
		if !waitFor(5*time.Second, func() bool {
			data, _ := os.ReadFile(logFile)
			l = strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
			return len(l) >= n
		}) {
			t.Fatalf("%d lines in the access log, want %d", len(l), n)
		}
		return l
	}

	send(5)
	// A target with a quote and a byte that is not ASCII, sent raw.
	tc, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: certs.pool(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(tc, "GET /q\"uote\xff HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	tc.Close()
	for i, l := range lines(6) {
		m := goaccessCombined.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("line %d is not in the combined format: %q", i, l)
		}
		if i < 5 && (m[1] != "127.0.0.1" || m[4] != fmt.Sprintf("GET /page/%d?q=1 HTTP/1.1", i) || m[5] != "200" ||
			m[7] != "https://localhost/from" || m[8] != `test \x22agent\x22 1.0`) {
			t.Errorf("line %d: fields %q", i, m[1:])
		}
		if i == 5 && m[4] != `GET /q\x22uote\xff HTTP/1.1` {
			t.Errorf("hostile target logged as %q", m[4])
		}
	}

	lb.rewrite(cfg("json"))
	lb.signal(syscall.SIGHUP)
	lb.waitLog("config reloaded", 1, 5*time.Second)
	send(3)
	for i, l := range lines(9)[6:] {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("line %d after the reload to json: %v: %q", i, err, l)
		}
		if rec["uri"] != fmt.Sprintf("/page/%d?q=1", i) || rec["status"] != float64(200) || rec["listener"] != "https" || rec["backend"] != b.addr {
			t.Errorf("JSON line %d: %v", i, rec)
		}
	}

	lb.rewrite(cfg("text"))
	lb.signal(syscall.SIGHUP)
	lb.waitLog("config reloaded", 2, 5*time.Second)
	send(1)
	if l := lines(10)[9]; !strings.Contains(l, " [INFO]  access: request: listener=https client=127.0.0.1:") ||
		!strings.Contains(l, " uri=/page/0?q=1 status=200 ") {
		t.Errorf("text line after the reload: %q", l)
	}
}
