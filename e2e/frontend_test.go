package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/offloadlb/lb/internal/certgen"
)

// frontConfig is one TLS listener (with tlsExtra added to its
// [listener.tls]) in front of pool "web" with the given backends.
func frontConfig(listenerExtra, tlsExtra, poolExtra, backends string) string {
	return `
[global]
log_level = "info"
access_log = "stdout"
admin = "127.0.0.1:0"
shutdown_grace = "5s"
watch = false

[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "web"
` + listenerExtra + `
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"
` + tlsExtra + `

[[pool]]
name = "web"
` + poolExtra + `
  [pool.health]
  check = "none"
` + backends
}

// headerBackend is a backend that remembers the headers, body length and
// body hash of the last request.
type headerBackend struct {
	*backend
	mu     sync.Mutex
	header http.Header
	n      int
	sum    string
}

func startHeaderBackend(t *testing.T, id string) *headerBackend {
	hb := &headerBackend{backend: startBackend(t, id)}
	hb.setHook(func(r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		hb.mu.Lock()
		hb.header, hb.n, hb.sum = r.Header.Clone(), int(n), hex.EncodeToString(h.Sum(nil))
		hb.mu.Unlock()
	})
	return hb
}

func (hb *headerBackend) last() (http.Header, int, string) {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	return hb.header, hb.n, hb.sum
}

// writeClientCerts makes certs/clients-ca.pem, a client certificate
// signed by it (certs/partner.pem/.key, CN=partner-1) and one signed by a
// CA lb does not trust (certs/stranger.pem/.key).
func writeClientCerts(t *testing.T, dir string) {
	t.Helper()
	cdir := filepath.Join(dir, "certs")
	ca, err := certgen.New(certgen.Options{IsCA: true, Names: []string{"Partner CA"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := certgen.New(certgen.Options{IsCA: true, Names: []string{"Other CA"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cdir, "clients-ca.pem"), ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, parent := range map[string]*certgen.Pair{"partner": ca, "stranger": other} {
		cn := "partner-1"
		if name == "stranger" {
			cn = "stranger"
		}
		p, err := certgen.New(certgen.Options{Names: []string{cn}}, parent)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := p.Write(cdir, name); err != nil {
			t.Fatal(err)
		}
	}
}

// TestClientCertificatesWithCurl: each client_auth mode with curl
// offering no certificate, a trusted one and an untrusted one; what the
// backend is told; and that clients cannot forge it.
func TestClientCertificatesWithCurl(t *testing.T) {
	curl := needTool(t, "curl")
	dir := t.TempDir()
	writeCerts(t, dir)
	writeClientCerts(t, dir)
	hb := startHeaderBackend(t, "b1")
	cfg := frontConfig("", `  client_auth = "request"
  client_ca = "certs/clients-ca.pem"`, "", backendsTOML(hb.backend)) + `
[[listener]]
name = "strict"
bind = "127.0.0.1:0"
pool = "web"
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"
  client_auth = "require"
  client_ca = "certs/clients-ca.pem"
`
	lb := startLB(t, dir, cfg)
	certs := filepath.Join(dir, "certs")
	run := func(listener, clientCert string, extra ...string) (string, error) {
		_, port, _ := net.SplitHostPort(lb.addrs[listener])
		args := []string{"-sS", "--max-time", "10", "--cacert", filepath.Join(certs, "ca.pem"),
			"--resolve", "www.example.com:" + port + ":127.0.0.1"}
		if clientCert != "" {
			args = append(args, "--cert", filepath.Join(certs, clientCert+".pem"), "--key", filepath.Join(certs, clientCert+".key"))
		}
		args = append(args, extra...)
		return runCmd(t, 15*time.Second, curl, append(args, "https://www.example.com:"+port+"/who")...)
	}
	for _, tc := range []struct {
		listener, cert  string
		refused         bool
		verify, subject string
	}{
		{"https", "", false, "NONE", ""},
		{"https", "partner", false, "SUCCESS", "CN=partner-1"},
		{"https", "stranger", false, "FAILED:unknown issuer", "CN=stranger"},
		{"strict", "partner", false, "SUCCESS", "CN=partner-1"},
		{"strict", "", true, "", ""},
		{"strict", "stranger", true, "", ""},
	} {
		name := fmt.Sprintf("%s with %q", tc.listener, tc.cert)
		before := hb.hits.Load()
		out, err := run(tc.listener, tc.cert, "-H", "X-Client-Verify: SUCCESS", "-H", "X-Client-Cert-Subject: CN=admin")
		if tc.refused {
			if err == nil || hb.hits.Load() != before {
				t.Errorf("%s: not refused: %s", name, out)
			}
			continue
		}
		if err != nil || !strings.HasPrefix(out, "b1 GET /who") {
			t.Fatalf("%s: %v: %s", name, err, out)
		}
		h, _, _ := hb.last()
		if got := h.Values("X-Client-Verify"); len(got) != 1 || got[0] != tc.verify {
			t.Errorf("%s: X-Client-Verify %q, want %q", name, got, tc.verify)
		}
		if got := strings.Join(h.Values("X-Client-Cert-Subject"), "|"); got != tc.subject {
			t.Errorf("%s: X-Client-Cert-Subject %q, want %q", name, got, tc.subject)
		}
	}
}

// servedSerial asks openssl s_client for the certificate lb serves.
func servedSerial(t *testing.T, openssl, addr string) string {
	t.Helper()
	cmd := exec.Command(openssl, "s_client", "-connect", addr, "-servername", "www.example.com")
	cmd.Stdin = strings.NewReader("")
	out, _ := cmd.CombinedOutput()
	block, _ := pem.Decode(out[max(0, strings.Index(string(out), "-----BEGIN CERTIFICATE-----")):])
	if block == nil {
		t.Fatalf("openssl s_client printed no certificate:\n%s", out)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return strings.ToUpper(c.SerialNumber.Text(16))
}

// TestCertificateRotation: a certificate renewed on disk (renamed over the
// old file, as certbot does) is served to the next openssl handshake
// within seconds, while a keep-alive connection opened before carries on;
// a broken replacement is refused and logged and the working certificate
// stays; status.json and /metrics follow.
func TestCertificateRotation(t *testing.T) {
	openssl := needTool(t, "openssl")
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	lb := startLB(t, dir, frontConfig("", "", "", backendsTOML(b)))
	addr := lb.addrs["https"]
	client := certs.client(addr, true)
	reused := func() bool {
		var got bool
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { got = i.Reused }})
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://www.example.com/", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return got
	}
	reused()
	old := servedSerial(t, openssl, addr)
	if st := lb.status(); len(st.Listeners[0].Certificates) != 1 || st.Listeners[0].Certificates[0].Serial != old {
		t.Fatalf("status.json certificates %+v, want serial %s", st.Listeners[0].Certificates, old)
	}

	renewed, err := certgen.New(certgen.Options{Names: []string{"www.example.com", "localhost", "127.0.0.1"}, NotAfter: time.Now().Add(90 * 24 * time.Hour)}, certs.ca)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.ToUpper(renewed.Cert.SerialNumber.Text(16))
	cdir := filepath.Join(dir, "certs")
	if _, _, err := renewed.Write(cdir, "renewed"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(cdir, "renewed.key"), filepath.Join(cdir, "site.key")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(cdir, "renewed.pem"), filepath.Join(cdir, "site.pem")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for servedSerial(t, openssl, addr) != want {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("still serving serial %s 10s after the files changed", old)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("new certificate served %s after the files changed", time.Since(start).Round(time.Millisecond))
	lb.waitLog("certificate reloaded", 1, 5*time.Second)
	if !reused() {
		t.Error("the keep-alive connection opened before the renewal was not reused")
	}
	if st := lb.status(); st.Listeners[0].Certificates[0].Serial != want || st.Listeners[0].Certificates[0].ExpiresIn < 89*24*3600 {
		t.Errorf("status.json after renewal: %+v", st.Listeners[0].Certificates)
	}
	if v, _ := lookup(scrape(t, lb), "lb_tls_certificate_expiry_seconds", "listener", "https", "subject", "CN=www.example.com"); v < 89*24*3600 {
		t.Errorf("expiry metric %v after renewal", v)
	}

	// A truncated certificate: refused, logged, the renewed one stays.
	if err := os.WriteFile(filepath.Join(cdir, "site.pem"), renewed.CertPEM[:len(renewed.CertPEM)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	lb.waitLog("still serving the previous certificates", 1, 10*time.Second)
	if got := servedSerial(t, openssl, addr); got != want {
		t.Errorf("serving %s after a broken file, want %s", got, want)
	}
}

// TestHTTP2WithCurlAndH2load: clients that negotiate h2 reach HTTP/1.1
// backends through the same routing, headers and access log; a 1 MB
// upload arrives whole; HSTS is on every answer; h2load's requests all
// succeed.
func TestHTTP2WithCurlAndH2load(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	hb := startHeaderBackend(t, "b1")
	lb := startLB(t, dir, frontConfig("", `  hsts = "max-age=31536000; includeSubDomains"`, "", backendsTOML(hb.backend)))
	_, port, _ := net.SplitHostPort(lb.addrs["https"])
	base := "https://www.example.com:" + port
	resolve := []string{"--resolve", "www.example.com:" + port + ":127.0.0.1", "--cacert", filepath.Join(dir, "certs", "ca.pem")}

	t.Run("curl", func(t *testing.T) {
		curl := needTool(t, "curl")
		out, err := runCmd(t, 15*time.Second, curl, append(resolve, "-sS", "--http2", "-D", "-", base+"/h2?x=1", "-H", "Cookie: a=1", "-H", "Cookie: b=2")...)
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if !strings.HasPrefix(out, "HTTP/2 200") || !strings.Contains(out, "strict-transport-security: max-age=31536000; includeSubDomains") ||
			!strings.Contains(out, "b1 GET /h2?x=1 xff=127.0.0.1 proto=https") {
			t.Errorf("curl --http2:\n%s", out)
		}
		h, _, _ := hb.last()
		if h.Get("Cookie") != "a=1; b=2" || h.Get("X-Forwarded-Host") != "www.example.com:"+port {
			t.Errorf("backend headers %v", h)
		}

		file := filepath.Join(dir, "upload.bin")
		data := make([]byte, 1<<20)
		for i := range data {
			data[i] = byte(i * 7)
		}
		os.WriteFile(file, data, 0o644)
		sum := sha256.Sum256(data)
		out, err = runCmd(t, 15*time.Second, curl, append(resolve, "-sS", "--http2", "-w", "%{http_version} %{http_code}", "--data-binary", "@"+file, base+"/upload")...)
		if err != nil || !strings.HasSuffix(out, "2 200") {
			t.Fatalf("upload: %v: %s", err, out)
		}
		_, n, got := hb.last()
		if n != len(data) || got != hex.EncodeToString(sum[:]) {
			t.Errorf("backend received %d bytes (sha256 %s), want %d", n, got, len(data))
		}

		// HTTP/1.1 on the same listener gets HSTS too.
		out, _ = runCmd(t, 15*time.Second, curl, append(resolve, "-sS", "--http1.1", "-D", "-", "-o", "/dev/null", base+"/")...)
		if !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(strings.ToLower(out), "strict-transport-security: max-age=31536000; includesubdomains") {
			t.Errorf("curl --http1.1:\n%s", out)
		}
		// (The access log writes its lines within 100 ms.)
		if !waitFor(3*time.Second, func() bool {
			return strings.Contains(lb.stdout.String(), "proto=HTTP/2.0 method=POST host=www.example.com:"+port+" uri=/upload status=200")
		}) {
			t.Errorf("access log has no h2 upload line:\n%s", tail(lb.stdout.String(), 5))
		}
	})

	t.Run("h2load", func(t *testing.T) {
		h2load := needTool(t, "h2load")
		before := hb.hits.Load()
		out, err := runCmd(t, 60*time.Second, h2load, "-n", "2000", "-c", "4", "-m", "16", "https://127.0.0.1:"+port+"/load")
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if !strings.Contains(out, "Application protocol: h2") || !strings.Contains(out, "2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed") ||
			!strings.Contains(out, "status codes: 2000 2xx") {
			t.Errorf("h2load:\n%s", out)
		}
		if got := hb.hits.Load() - before; got != 2000 {
			t.Errorf("backend saw %d requests, want 2000", got)
		}
		t.Log(regexp.MustCompile(`finished in .*`).FindString(out))
	})
}

// wsEcho is a WebSocket echo server.
func wsEcho(t *testing.T, id string) *backend {
	b := &backend{t: t, id: id}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		ctx := context.Background()
		c.Write(ctx, websocket.MessageText, []byte("hello from "+id+" via "+r.Header.Get("X-Forwarded-Proto")))
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

// TestWebSocket: WebSocket connections through the TLS front end to two
// echo backends, spread by least_conn (which counts open WebSockets),
// carrying messages both ways, ended by lb after idle_timeout of silence.
func TestWebSocket(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b1, b2 := wsEcho(t, "ws1"), wsEcho(t, "ws2")
	lb := startLB(t, dir, frontConfig(`idle_timeout = "1500ms"`, "", `algorithm = "least_conn"`, backendsTOML(b1, b2)))
	addr := lb.addrs["https"]
	dial := func() (*websocket.Conn, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, "wss://www.example.com/chat", &websocket.DialOptions{HTTPClient: certs.client(addr, false)})
		if err != nil {
			t.Fatalf("dial: %v (%v)", err, resp)
		}
		c.SetReadLimit(4 << 20)
		_, hello, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c, string(hello)
	}
	var conns []*websocket.Conn
	seen := map[string]int{}
	for range 4 {
		c, hello := dial()
		conns = append(conns, c)
		seen[strings.Fields(hello)[2]]++
		if !strings.HasSuffix(hello, "via https") {
			t.Errorf("greeting %q", hello)
		}
	}
	if seen["ws1"] != 2 || seen["ws2"] != 2 {
		t.Errorf("least_conn spread 4 open WebSockets as %v, want 2 and 2", seen)
	}
	for _, addr := range []string{b1.addr, b2.addr} {
		if a := lb.backendStatus("web", addr).ActiveConnections; a != 2 {
			t.Errorf("backend %s: %d active, want its 2 open WebSockets", addr, a)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := strings.Repeat("0123456789", 100_000)
	for i, c := range conns {
		for _, msg := range []string{fmt.Sprintf("message %d", i), big} {
			if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, got, err := c.Read(ctx)
			if err != nil || string(got) != msg {
				t.Fatalf("echo of %d bytes: got %d, %v", len(msg), len(got), err)
			}
		}
	}
	for _, c := range conns[:2] {
		c.Close(websocket.StatusNormalClosure, "bye")
	}
	// The other two idle past idle_timeout: lb ends them.
	start := time.Now()
	for _, c := range conns[2:] {
		if _, _, err := c.Read(ctx); err == nil {
			t.Error("an idle WebSocket was not closed")
		}
	}
	if d := time.Since(start); d < time.Second || d > 5*time.Second {
		t.Errorf("idle WebSockets closed after %s, want about 1.5s", d)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, addr := range []string{b1.addr, b2.addr} {
		for lb.backendStatus("web", addr).ActiveConnections != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("backend %s still counts open connections", addr)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// (The access log writes its lines within 100 ms.)
	waitFor(3*time.Second, func() bool { return strings.Count(lb.stdout.String(), "status=101") >= 4 })
	if n := strings.Count(lb.stdout.String(), "status=101"); n != 4 {
		t.Errorf("%d access log lines with status 101, want 4", n)
	}
}

// TestH2Spec runs the h2spec conformance suite against the h2 front end:
// every case must pass.
func TestH2Spec(t *testing.T) {
	h2spec := needTool(t, "h2spec")
	dir := t.TempDir()
	writeCerts(t, dir)
	b := startBackend(t, "b1")
	lb := startLB(t, dir, frontConfig("", "", "", backendsTOML(b)))
	_, port, _ := net.SplitHostPort(lb.addrs["https"])
	report := filepath.Join(dir, "h2spec.xml")
	out, _ := runCmd(t, 5*time.Minute, h2spec, "-t", "-k", "-h", "127.0.0.1", "-p", port, "-o", "3", "-j", report)
	if d := artifactDir(t); d != "" {
		os.WriteFile(filepath.Join(d, "h2spec.txt"), []byte(out), 0o644)
	}
	m := regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no h2spec summary:\n%s", out)
	}
	t.Logf("h2spec: %s", m[0])
	b2, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var suites struct {
		Suites []struct {
			Package string `xml:"package,attr"`
			Cases   []struct {
				Name    string    `xml:"classname,attr"`
				Failure *struct{} `xml:"failure"`
				Error   *struct{} `xml:"error"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b2, &suites); err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, s := range suites.Suites {
		for _, c := range s.Cases {
			if c.Failure == nil && c.Error == nil {
				continue
			}
			failed++
			t.Errorf("h2spec failure: %s %s", s.Package, c.Name)
		}
	}
	if fmt.Sprint(failed) != m[4] || m[1] != m[2] {
		t.Errorf("report lists %d failures; summary: %s", failed, m[0])
	}
}

// testsslEnvironmentNotices are the finding ids testssl.sh uses for what
// it says about the machine it runs on rather than about the server it
// scans, with the reason: the ones it writes through its
// fileout_insert_warning, its channel for client-side warnings (its
// pretty JSON files them under "clientProblemN", apart from the scan
// result). scanProblem is not one of them: it also reports a server that
// cannot be scanned.
var testsslEnvironmentNotices = map[string]string{
	// The local openssl has no GOST engine (Debian's
	// libengine-gost-openssl, which .ci/run installs): GOST ciphers go
	// untested, which lb does not offer anyway.
	"engine_problem": "no GOST engine in the local openssl",
	// The local openssl is too old to scan with; testssl stops right
	// after, and the missing findings fail the test.
	"old_fart": "local openssl too old",
}

// TestTestSSL runs testssl.sh against each TLS mode of a listener (the
// defaults, TLS 1.3 only, client certificates required): protocols,
// cipher categories, forward secrecy and known vulnerabilities must all
// be rated OK (or merely informational). testssl's notices about its
// own machine (testsslEnvironmentNotices) are logged, not failures.
func TestTestSSL(t *testing.T) {
	testssl := ""
	for _, name := range []string{"testssl", "testssl.sh"} {
		if p, err := exec.LookPath(name); err == nil {
			testssl = p
			break
		}
	}
	if testssl == "" {
		needTool(t, "testssl.sh")
	}
	for _, mode := range []struct {
		name, tls string
		minOK     int // findings rated OK at the least: testssl ran
		// untestable are checks testssl cannot run in this mode (it has
		// no client certificate to offer), reported as WARN with this
		// reason; the default mode runs them on the same TLS stack.
		untestable []string
	}{
		{"default", "", 20, nil},
		{"tls13-only", `  min_version = "1.3"`, 20, nil},
		{"client-auth-require", `  client_auth = "require"
  client_ca = "certs/clients-ca.pem"`, 20, []string{"secure_client_renego", "BREACH"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writeCerts(t, dir)
			writeClientCerts(t, dir)
			b := startBackend(t, "b1")
			lb := startLB(t, dir, frontConfig("", mode.tls, "", backendsTOML(b)))
			report := filepath.Join(dir, "testssl.json")
			out, err := runCmd(t, 8*time.Minute, testssl, "--quiet", "--color", "0", "--warnings", "off", "--sneaky",
				"-p", "-s", "-f", "-U", "--jsonfile", report, lb.addrs["https"])
			if d := artifactDir(t); d != "" {
				os.WriteFile(filepath.Join(d, "testssl-"+mode.name+".txt"), []byte(out), 0o644)
			}
			b2, rerr := os.ReadFile(report)
			if rerr != nil {
				t.Fatalf("testssl (%v) wrote no report:\n%s", err, out)
			}
			var findings []struct{ ID, Severity, Finding string }
			if err := json.Unmarshal(b2, &findings); err != nil {
				t.Fatal(err)
			}
			count := map[string]int{}
			for _, f := range findings {
				count[f.Severity]++
				if why, ok := testsslEnvironmentNotices[f.ID]; ok {
					t.Logf("ignored, about testssl's own machine and not lb (%s): testssl %s: %s: %s", why, f.Severity, f.ID, f.Finding)
					continue
				}
				if f.Severity == "WARN" && slices.Contains(mode.untestable, f.ID) && strings.Contains(f.Finding, "client x509-based authentication prevents this from being tested") {
					t.Logf("not testable with client certificates required: %s", f.ID)
					continue
				}
				switch f.Severity {
				case "OK", "INFO", "DEBUG": // DEBUG: testssl's own notes, below INFO
				default:
					t.Errorf("testssl %s: %s: %s", f.Severity, f.ID, f.Finding)
				}
			}
			if count["OK"] < mode.minOK {
				t.Errorf("only %d findings rated OK; did testssl run? %v\n%s", count["OK"], count, out)
			}
			t.Logf("testssl findings by rating: %v", count)
		})
	}
}

// TestGODEBUGInEnvironment: lb re-executes itself with a GODEBUG setting;
// one already in the environment must not make it loop.
func TestGODEBUGInEnvironment(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	lb := startLBEnv(t, dir, frontConfig("", "", "", backendsTOML(b)), []string{"GODEBUG=http2debug=0"})
	if code, _, err := get(certs.client(lb.addrs["https"], false), "https://localhost/"); err != nil || code != 200 {
		t.Fatalf("%d %v", code, err)
	}
}

// TestSessionResumption: a client with a session ticket resumes, also
// after a reload, and resumed handshakes are counted apart in
// lb_tls_handshakes_total.
func TestSessionResumption(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	// A fixed port: a reload keeps that socket (and its ticket keys),
	// where port 0 would bind a new one.
	cfg := strings.Replace(frontConfig("", "", "", backendsTOML(b)), `bind = "127.0.0.1:0"`, `bind = "`+freePort(t)+`"`, 1)
	lb := startLB(t, dir, cfg)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cache := tls.NewLRUClientSessionCache(4)
		resumed := func() bool { t.Helper(); return resumes(t, lb.addrs["https"], certs, cache, v) }
		name := "TLS 1.3"
		if v == tls.VersionTLS12 {
			name = "TLS 1.2"
		}
		if resumed() || !resumed() {
			t.Fatalf("%s: want a full handshake, then a resumed one", name)
		}
		if code, body := lb.post("/reload"); code != 200 {
			t.Fatalf("reload: %d %s", code, body)
		}
		if !resumed() {
			t.Errorf("%s: no resumption after a reload", name)
		}
	}
	m := scrape(t, lb)
	for version, want := range map[string]float64{"1.3": 2, "1.2": 2} {
		if got, _ := lookup(m, "lb_tls_handshakes_total", "listener", "https", "version", version, "result", "resumed"); got != want {
			t.Errorf("resumed TLS %s handshakes counted %v, want %v", version, got, want)
		}
		if got, _ := lookup(m, "lb_tls_handshakes_total", "listener", "https", "version", version, "result", "success"); got < 1 {
			t.Errorf("full TLS %s handshakes counted %v", version, got)
		}
	}
}

// resumes makes one request on a new TLS connection of version v with the
// session cache, and reports whether the handshake resumed. The answer is
// read: TLS 1.3 tickets come after the handshake and are read with it.
func resumes(t *testing.T, addr string, certs *testCerts, cache tls.ClientSessionCache, v uint16) bool {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com",
		ClientSessionCache: cache, MaxVersion: v})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return conn.ConnectionState().DidResume
}

// TestSharedTicketKeysAcrossProcesses: two lb processes reading the same
// ticket_keys file resume each other's sessions, as two instances behind
// DNS round-robin would; and a key file others can read is warned about.
func TestSharedTicketKeysAcrossProcesses(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	certs := writeCerts(t, dir1)
	b := startBackend(t, "b1")
	keyFile := filepath.Join(dir1, "tickets.key")
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(keyFile, 0o644) // past the umask: readable by others
	cfg := func(certDir string) string {
		c := frontConfig("", `  ticket_keys = "`+keyFile+`"`, "", backendsTOML(b))
		return strings.ReplaceAll(c, `"certs/`, `"`+certDir+`/certs/`)
	}
	lb1 := startLB(t, dir1, cfg(dir1))
	lb2 := startLB(t, dir2, cfg(dir1))
	if lb1.logCount("can be read by other users") != 1 {
		t.Errorf("no warning about the key file's mode:\n%s", tail(lb1.stderr.String(), 10))
	}
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cache := tls.NewLRUClientSessionCache(4)
		resumed := func(addr string) bool { t.Helper(); return resumes(t, addr, certs, cache, v) }
		if resumed(lb1.addrs["https"]) {
			t.Fatalf("TLS %x: first handshake resumed", v)
		}
		if !resumed(lb2.addrs["https"]) {
			t.Errorf("TLS %x: the second process did not resume the first one's session", v)
		}
		if !resumed(lb1.addrs["https"]) {
			t.Errorf("TLS %x: the first process did not resume the second one's session", v)
		}
	}
}

// TestMaxConnectionsPerClient: a client address past its limit has its
// next connection closed before any handshake, other addresses go on, and
// the refusals are counted and logged.
func TestMaxConnectionsPerClient(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	lb := startLB(t, dir, frontConfig("max_connections_per_client = 2", "", "", backendsTOML(b)))
	addr := lb.addrs["https"]
	dial := func(from string) (*tls.Conn, error) {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 2 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com"})
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return c, err
	}
	for i := range 2 {
		if _, err := dial("127.0.0.1"); err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
	}
	if _, err := dial("127.0.0.1"); err == nil {
		t.Fatal("a third connection from 127.0.0.1 completed its handshake")
	}
	c, err := dial("127.0.0.2")
	if err != nil {
		t.Fatalf("another address: %v", err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("another address: %v %v", resp, err)
	}
	if got, _ := lookup(scrape(t, lb), "lb_connections_refused_total", "listener", "https", "reason", "per_client"); got != 1 {
		t.Errorf("lb_connections_refused_total{reason=per_client} = %v, want 1", got)
	}
	lb.waitLog("connection refused: the client already holds max_connections_per_client", 1, 2*time.Second)
}
