package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/certgen"
	"github.com/offloadlb/lb/internal/testutil"
	"github.com/offloadlb/lb/pkg/admin"
)

// The ACME tests run lb against Pebble, Let's Encrypt's test CA, which
// really validates challenges: it connects to lb's listeners (its httpPort
// and tlsPort are lb's ports) for names that pebble-challtestsrv resolves
// to 127.0.0.1. They skip when the two are not installed (.ci/run
// installs them with go install).

// pebble is a running Pebble and its DNS server.
type pebble struct {
	dir       string
	directory string         // the ACME directory URL
	caFile    string         // PEM of the CA behind Pebble's own HTTPS (lb's directory_ca)
	roots     *x509.CertPool // Pebble's issuing roots, fetched from its management port
	cmd       *exec.Cmd
	exited    chan struct{}
	log       *testutil.SyncBuffer
}

// freePortNum is freePort's port: Pebble must know lb's ports before lb
// starts.
func freePortNum(t *testing.T) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(freePort(t))
	n, _ := strconv.Atoi(port)
	return n
}

// startPebble runs pebble-challtestsrv (DNS only, every name resolving to
// 127.0.0.1) and Pebble, validating http-01 on httpPort and tls-alpn-01 on
// tlsPort, with a "shortlived" profile whose certificates live for
// shortLife.
func startPebble(t *testing.T, httpPort, tlsPort int, shortLife time.Duration) *pebble {
	t.Helper()
	return startPebbleEAB(t, httpPort, tlsPort, shortLife, nil)
}

// startPebbleEAB is startPebble with External Account Binding required
// when eabKeys (key ID to base64url HMAC key) is not nil.
func startPebbleEAB(t *testing.T, httpPort, tlsPort int, shortLife time.Duration, eabKeys map[string]string) *pebble {
	t.Helper()
	pebbleBin := needGoTool(t, "pebble")
	challBin := needGoTool(t, "pebble-challtestsrv")
	dir := t.TempDir()

	dnsPort := freePortNum(t)
	chall := exec.Command(challBin, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort),
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
		"-management", fmt.Sprintf("127.0.0.1:%d", freePortNum(t)), "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
	chall.Stdout, chall.Stderr = io.Discard, io.Discard
	if err := chall.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { chall.Process.Kill(); chall.Wait() })

	// Pebble's own HTTPS certificate, from a CA lb is told of.
	ca, err := certgen.New(certgen.Options{IsCA: true, Names: []string{"Pebble HTTPS CA"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := certgen.New(certgen.Options{Names: []string{"127.0.0.1", "localhost"}}, ca)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := leaf.Write(dir, "pebble")
	if err != nil {
		t.Fatal(err)
	}
	p := &pebble{dir: dir, caFile: filepath.Join(dir, "pebble-ca.pem"), exited: make(chan struct{}), log: &testutil.SyncBuffer{}}
	if err := os.WriteFile(p.caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	apiPort, mgmtPort := freePortNum(t), freePortNum(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", apiPort),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", mgmtPort),
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": eabKeys != nil,
		"externalAccountMACKeys":         eabKeys,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles": map[string]any{
			"default":    map[string]any{"description": "90 days", "validityPeriod": 7776000},
			"shortlived": map[string]any{"description": "for renewal tests", "validityPeriod": int(shortLife.Seconds())},
		},
	}}
	b, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(pebbleBin, "-config", cfgFile, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort))
	// Challenges are really validated (no PEBBLE_VA_ALWAYS_VALID), at
	// once rather than after Pebble's random wait; every order needs
	// its own validation; and no good nonce is refused at random, which
	// would only test the client's retry of badNonce.
	p.cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_AUTHZREUSE=0", "PEBBLE_WFE_NONCEREJECT=0")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("pebble:\n%s", tail(p.log.String(), 40))
		}
	})
	p.directory = fmt.Sprintf("https://127.0.0.1:%d/dir", apiPort)

	// Pebble's issuing root, once it answers.
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", mgmtPort))
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			p.roots = x509.NewCertPool()
			if resp.StatusCode == 200 && p.roots.AppendCertsFromPEM(body) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble did not serve its root: %v\n%s", err, p.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p
}

func (p *pebble) stop() {
	p.cmd.Process.Kill()
	<-p.exited
}

// needGoTool finds a Go program that .ci/run installs, or skips.
func needGoTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed; .ci/run installs it (go install github.com/letsencrypt/pebble/v2/cmd/%s@v2.10.3)", name, name)
	}
	return p
}

// acmeStatus returns a name's entry in /status.json.
func (p *lbProc) acmeStatus(listener, domain string) (admin.ACMEStatus, bool) {
	for _, l := range p.status().Listeners {
		if l.Name != listener {
			continue
		}
		for _, a := range l.ACME {
			if a.Domain == domain {
				return a, true
			}
		}
	}
	return admin.ACMEStatus{}, false
}

// waitACME waits until a name is in state want and returns its entry.
func (p *lbProc) waitACME(listener, domain, want string, timeout time.Duration) admin.ACMEStatus {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		a, ok := p.acmeStatus(listener, domain)
		if ok && a.State == want && (want != "valid" || a.Certificate != nil) {
			return a
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s on listener %s: state %q (last error %q) after %s, want %s", domain, listener, a.State, a.LastError, timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metricsText fetches /metrics.
func (p *lbProc) metricsText() string {
	p.t.Helper()
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metricValue reads one sample of /metrics (a line starting with series),
// -1 when it is not there.
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// served does a handshake with addr for name and returns the leaf,
// verified against roots when roots is not nil.
func served(t *testing.T, addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	t.Helper()
	cfg := &tls.Config{ServerName: name, RootCAs: roots, InsecureSkipVerify: roots == nil}
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

func serialOf(c *x509.Certificate) string { return strings.ToUpper(c.SerialNumber.Text(16)) }

// acmeListeners is a config with a TLS listener answering tls-alpn-01 for
// alpnName on tlsPort, another getting httpName by http-01, answered by a
// plaintext redirect_https listener on httpPort.
func acmeListeners(b *backend, pb *pebble, storage string, tlsPort, otherPort, httpPort int, alpnName, httpName, extra string) string {
	return fmt.Sprintf(`
[global]
admin = "127.0.0.1:0"
access_log = ""

[[listener]]
name = "https"
bind = "127.0.0.1:%d"
pool = "web"
  [listener.tls]
  [listener.tls.acme]
  domains = [%q]
  directory = %q
  directory_ca = %q
  storage = %q
  challenges = ["tls-alpn-01"]
  email = "ops@lb.test"
%s
[[listener]]
name = "other"
bind = "127.0.0.1:%d"
pool = "web"
  [listener.tls]
  [listener.tls.acme]
  domains = [%q]
  directory = %q
  directory_ca = %q
  storage = %q
  challenges = ["http-01"]
  key_type = "rsa-2048"

[[listener]]
name = "http"
bind = "127.0.0.1:%d"
redirect_https = "https://:%d"

[[pool]]
name = "web"
%s`, tlsPort, alpnName, pb.directory, pb.caFile, storage, extra,
		otherPort, httpName, pb.directory, pb.caFile, storage, httpPort, tlsPort, backendsTOML(b))
}

// TestACMEObtainAndRestart: lb gets one certificate by TLS-ALPN-01 (on its
// TLS listener) and one by HTTP-01 (on a plaintext listener that
// otherwise redirects to HTTPS), both verified against Pebble's root, and
// counts them; restarted with Pebble gone, it serves both from storage at
// once.
func TestACMEObtainAndRestart(t *testing.T) {
	b := startBackend(t, "a")
	tlsPort, otherPort, httpPort := freePortNum(t), freePortNum(t), freePortNum(t)
	pb := startPebble(t, httpPort, tlsPort, time.Hour)
	dir := t.TempDir()
	storage := filepath.Join(dir, "acme")
	cfg := acmeListeners(b, pb, storage, tlsPort, otherPort, httpPort, "alpn.lb.test", "http.lb.test", "")
	lb := startLB(t, dir, cfg)

	alpn := lb.waitACME("https", "alpn.lb.test", "valid", 60*time.Second)
	httpName := lb.waitACME("other", "http.lb.test", "valid", 60*time.Second)
	tlsAddr, otherAddr := fmt.Sprintf("127.0.0.1:%d", tlsPort), fmt.Sprintf("127.0.0.1:%d", otherPort)
	leaf, err := served(t, tlsAddr, "alpn.lb.test", pb.roots)
	if err != nil {
		t.Fatalf("alpn.lb.test does not verify against Pebble's root: %v", err)
	}
	if serialOf(leaf) != alpn.Certificate.Serial {
		t.Errorf("served serial %s, status says %s", serialOf(leaf), alpn.Certificate.Serial)
	}
	leaf2, err := served(t, otherAddr, "http.lb.test", pb.roots)
	if err != nil {
		t.Fatalf("http.lb.test does not verify against Pebble's root: %v", err)
	}
	if _, ok := leaf2.PublicKey.(interface{ Size() int }); !ok || serialOf(leaf2) != httpName.Certificate.Serial {
		t.Errorf("http.lb.test: key %T (want RSA), serial %s (status %s)", leaf2.PublicKey, serialOf(leaf2), httpName.Certificate.Serial)
	}
	if !strings.Contains(lb.stderr.String(), "challenge=http-01") || !strings.Contains(lb.stderr.String(), "challenge=tls-alpn-01") {
		t.Errorf("lb's log does not show both challenges answered:\n%s", tail(lb.stderr.String(), 40))
	}
	// The redirect listener still redirects everything else, the
	// challenge path included when no challenge is pending.
	noRedirect := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, path := range []string{"/", "/.well-known/acme-challenge/unknown"} {
		resp, err := noRedirect.Get(fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusPermanentRedirect {
			t.Errorf("GET %s on the redirect listener: %d, want 308", path, resp.StatusCode)
		}
	}
	m := lb.metricsText()
	for series, want := range map[string]float64{
		`lb_acme_certificates{domain="alpn.lb.test",listener="https",state="valid"}`:     1,
		`lb_acme_certificates{domain="alpn.lb.test",listener="https",state="obtaining"}`: 0,
		`lb_acme_certificates{domain="http.lb.test",listener="other",state="valid"}`:     1,
		`lb_acme_orders_total{result="success"}`:                                         2,
		`lb_acme_orders_total{result="failure"}`:                                         0,
	} {
		if got := metricValue(m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if metricValue(m, `lb_tls_certificate_expiry_seconds{listener="https",subject="alpn.lb.test"}`) <= 0 &&
		!regexp.MustCompile(`lb_tls_certificate_expiry_seconds\{listener="https",subject="[^"]*"\} [0-9.e+]+`).MatchString(m) {
		t.Errorf("no expiry metric for the ACME certificate:\n%s", m)
	}

	// Reloads order nothing again: one that keeps the settings keeps
	// the names as they run, one that changes a name's settings (here
	// its email) loads its certificate from storage.
	for i, c := range []string{cfg, strings.Replace(cfg, `email = "ops@lb.test"`, `email = "sre@lb.test"`, 1)} {
		lb.rewrite(c)
		if code, body := lb.post("/reload"); code != http.StatusOK {
			t.Fatalf("reload %d: %d %s", i, code, body)
		}
		for _, n := range []struct{ listener, name, serial string }{
			{"https", "alpn.lb.test", alpn.Certificate.Serial}, {"other", "http.lb.test", httpName.Certificate.Serial},
		} {
			a, _ := lb.acmeStatus(n.listener, n.name)
			if a.State != "valid" || a.Certificate == nil || a.Certificate.Serial != n.serial {
				t.Errorf("after reload %d, %s: %+v, want valid with serial %s", i, n.name, a, n.serial)
			}
		}
		if leaf, err := served(t, tlsAddr, "alpn.lb.test", pb.roots); err != nil || serialOf(leaf) != alpn.Certificate.Serial {
			t.Errorf("after reload %d, alpn.lb.test serves %v (%v)", i, leaf, err)
		}
	}
	time.Sleep(2 * time.Second) // an order a reload set off would have started by now
	if n := metricValue(lb.metricsText(), `lb_acme_orders_total{result="success"}`); n != 2 {
		t.Errorf("after reloads lb_acme_orders_total{result=\"success\"} = %v, want 2", n)
	}
	if n := strings.Count(pb.log.String(), "Issued certificate serial"); n != 2 {
		t.Errorf("Pebble issued %d certificates, want 2", n)
	}

	// Restart without the CA: both serve from storage at once.
	lb.signal(syscall.SIGTERM)
	lb.wait(10 * time.Second)
	pb.stop()
	lb2 := startLB(t, dir, cfg)
	for _, c := range []struct{ listener, name, addr, serial string }{
		{"https", "alpn.lb.test", tlsAddr, alpn.Certificate.Serial},
		{"other", "http.lb.test", otherAddr, httpName.Certificate.Serial},
	} {
		a, ok := lb2.acmeStatus(c.listener, c.name)
		if !ok || a.State != "valid" || a.Certificate == nil || a.Certificate.Serial != c.serial {
			t.Errorf("%s right after a restart: %+v, want valid with serial %s", c.name, a, c.serial)
		}
		leaf, err := served(t, c.addr, c.name, pb.roots)
		if err != nil || serialOf(leaf) != c.serial {
			t.Errorf("%s after a restart: %v, serial %v, want %s", c.name, err, leaf, c.serial)
		}
	}
	if n := metricValue(lb2.metricsText(), `lb_acme_orders_total{result="success"}`); n != 0 {
		t.Errorf("the restarted lb ordered %v certificates, want none", n)
	}
}

// TestACMERenewal: certificates that live 30 seconds are renewed before
// they expire, the new one serves, and the expiry metric follows.
func TestACMERenewal(t *testing.T) {
	b := startBackend(t, "a")
	tlsPort, otherPort, httpPort := freePortNum(t), freePortNum(t), freePortNum(t)
	pb := startPebble(t, httpPort, tlsPort, 30*time.Second)
	dir := t.TempDir()
	cfg := acmeListeners(b, pb, filepath.Join(dir, "acme"), tlsPort, otherPort, httpPort, "short.lb.test", "long.lb.test",
		`  profile = "shortlived"`)
	lb := startLBEnv(t, dir, cfg, []string{"LB_ACME_CHECK_INTERVAL=1s"})
	first := lb.waitACME("https", "short.lb.test", "valid", 60*time.Second)
	if life := time.Until(first.Certificate.NotAfter); life > 31*time.Second {
		t.Fatalf("the shortlived profile gave a certificate for %s", life)
	}
	metric := func() float64 {
		m := lb.metricsText()
		re := regexp.MustCompile(`lb_tls_certificate_expiry_seconds\{listener="https",subject="[^"]*"\} (\S+)`)
		if s := re.FindStringSubmatch(m); s != nil {
			v, _ := strconv.ParseFloat(s[1], 64)
			return v
		}
		return -1
	}
	if m := metric(); m <= 0 || m > 31 {
		t.Errorf("expiry metric %v for a 30-second certificate", m)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		a, _ := lb.acmeStatus("https", "short.lb.test")
		if a.Certificate != nil && a.Certificate.Serial != first.Certificate.Serial {
			if !a.Certificate.NotAfter.After(first.Certificate.NotAfter) {
				t.Errorf("renewed certificate expires %s, not after the first's %s", a.Certificate.NotAfter, first.Certificate.NotAfter)
			}
			if time.Now().After(first.Certificate.NotAfter) {
				t.Errorf("renewed only after the first certificate expired (%s)", first.Certificate.NotAfter)
			}
			leaf, err := served(t, fmt.Sprintf("127.0.0.1:%d", tlsPort), "short.lb.test", pb.roots)
			if err != nil || serialOf(leaf) != a.Certificate.Serial {
				t.Errorf("after renewal lb serves %v (%v), want serial %s", leaf, err, a.Certificate.Serial)
			}
			// The metric gives the new certificate's time left, past
			// the first's.
			if after, old := metric(), time.Until(first.Certificate.NotAfter).Seconds(); after < old+1 {
				t.Errorf("expiry metric %v after renewal, the first certificate has %v left: it does not follow", after, old)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not renewed within 60s: %+v", a)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := metricValue(lb.metricsText(), `lb_acme_orders_total{result="success"}`); n < 3 {
		t.Errorf("lb_acme_orders_total{result=\"success\"} = %v, want at least 3 (two names and a renewal)", n)
	}
}

// sharedConfig is one lb of several sharing storage: one TLS listener
// with name, the plaintext one only for the first.
func sharedConfig(b *backend, pb *pebble, storage string, tlsPort int, name, directory string) string {
	if directory == "" {
		directory = pb.directory
	}
	return fmt.Sprintf(`
[global]
admin = "127.0.0.1:0"
access_log = ""

[[listener]]
name = "https"
bind = "127.0.0.1:%d"
pool = "web"
  [listener.tls]
  [listener.tls.acme]
  domains = [%q]
  directory = %q
  directory_ca = %q
  storage = %q
  challenges = ["tls-alpn-01"]

[[pool]]
name = "web"
%s`, tlsPort, name, directory, pb.caFile, storage, backendsTOML(b))
}

// TestACMESharedStorage: two lb processes sharing storage order the name
// once between them and serve the same certificate. Pebble validates on
// the first one's port only, so when the second wins the lock, the first
// answers its challenge from storage.
func TestACMESharedStorage(t *testing.T) {
	b := startBackend(t, "a")
	portA, portB := freePortNum(t), freePortNum(t)
	pb := startPebble(t, freePortNum(t), portA, time.Hour)
	storage := filepath.Join(t.TempDir(), "shared")
	a := startLB(t, t.TempDir(), sharedConfig(b, pb, storage, portA, "shared.lb.test", ""))
	bb := startLB(t, t.TempDir(), sharedConfig(b, pb, storage, portB, "shared.lb.test", ""))
	sa := a.waitACME("https", "shared.lb.test", "valid", 60*time.Second)
	sb := bb.waitACME("https", "shared.lb.test", "valid", 60*time.Second)
	if sa.Certificate.Serial != sb.Certificate.Serial {
		t.Errorf("the two serve serials %s and %s", sa.Certificate.Serial, sb.Certificate.Serial)
	}
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", portA), fmt.Sprintf("127.0.0.1:%d", portB)} {
		leaf, err := served(t, addr, "shared.lb.test", pb.roots)
		if err != nil || serialOf(leaf) != sa.Certificate.Serial {
			t.Errorf("%s serves %v (%v), want serial %s", addr, leaf, err, sa.Certificate.Serial)
		}
	}
	orders := metricValue(a.metricsText(), `lb_acme_orders_total{result="success"}`) +
		metricValue(bb.metricsText(), `lb_acme_orders_total{result="success"}`)
	if orders != 1 {
		t.Errorf("%v orders between the two, want 1", orders)
	}
	if n := strings.Count(pb.log.String(), "Issued certificate serial"); n > 1 {
		t.Errorf("Pebble issued %d certificates", n)
	}
}

// TestACMEExternalAccountBinding: with a CA that requires External Account
// Binding, eab_kid and eab_hmac get the account and the certificate; a
// wrong HMAC key gets the name failing with the CA's refusal.
func TestACMEExternalAccountBinding(t *testing.T) {
	b := startBackend(t, "a")
	portA, portB := freePortNum(t), freePortNum(t)
	const kid, hmac = "kid-lb", "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
	pb := startPebbleEAB(t, freePortNum(t), portA, time.Hour, map[string]string{kid: hmac})
	withEAB := func(port int, name, key string) string {
		return strings.Replace(sharedConfig(b, pb, filepath.Join(t.TempDir(), "acme"), port, name, ""),
			`challenges = ["tls-alpn-01"]`, fmt.Sprintf("challenges = [\"tls-alpn-01\"]\n  eab_kid = %q\n  eab_hmac = %q", kid, key), 1)
	}
	good := startLB(t, t.TempDir(), withEAB(portA, "eab.lb.test", hmac))
	st := good.waitACME("https", "eab.lb.test", "valid", 60*time.Second)
	if leaf, err := served(t, fmt.Sprintf("127.0.0.1:%d", portA), "eab.lb.test", pb.roots); err != nil || serialOf(leaf) != st.Certificate.Serial {
		t.Errorf("serves %v (%v), want serial %s", leaf, err, st.Certificate.Serial)
	}
	wrong := startLB(t, t.TempDir(), withEAB(portB, "wrong.lb.test", strings.Repeat("A", len(hmac))))
	st = wrong.waitACME("https", "wrong.lb.test", "failing", 60*time.Second)
	if st.LastError == "" {
		t.Error("a wrong EAB key fails with no error shown")
	}
	t.Logf("with a wrong EAB key: %s", st.LastError)
}

// unreachableACME is a config whose listener has a static certificate
// (certs/site.pem, for www.example.com) and the same name in ACME, from a
// CA nothing listens for.
func unreachableACME(t *testing.T, b *backend) string {
	return fmt.Sprintf(`
[global]
admin = "127.0.0.1:0"
access_log = ""

[[listener]]
name = "https"
bind = "127.0.0.1:0"
pool = "web"
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"
  [listener.tls.acme]
  domains = ["www.example.com"]
  directory = "https://127.0.0.1:%d/dir"
  storage = "acme"

[[pool]]
name = "web"
%s`, freePortNum(t), backendsTOML(b))
}

// TestACMEUnreachableDirectory: with the CA out of reach, the static
// certificate serves the name and /status.json shows the failure and
// when it is tried again.
func TestACMEUnreachableDirectory(t *testing.T) {
	b := startBackend(t, "a")
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	lb := startLB(t, dir, unreachableACME(t, b))
	a := lb.waitACME("https", "www.example.com", "failing", 30*time.Second)
	if a.LastError == "" || !strings.Contains(a.LastError, "connect") {
		t.Errorf("last error %q does not say the CA could not be reached", a.LastError)
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.NextAttempt == nil && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		a, _ = lb.acmeStatus("https", "www.example.com")
	}
	if a.NextAttempt == nil || !a.NextAttempt.After(time.Now()) {
		t.Errorf("no next attempt in the future: %v", a.NextAttempt)
	}
	leaf, err := served(t, lb.addrs["https"], "www.example.com", certs.pool())
	if err != nil {
		t.Fatalf("the static certificate does not serve: %v", err)
	}
	if leaf.Issuer.String() != certs.ca.Cert.Subject.String() {
		t.Errorf("served %s, want the static certificate", leaf.Issuer)
	}
	if v := metricValue(lb.metricsText(), `lb_acme_certificates{domain="www.example.com",listener="https",state="failing"}`); v != 1 {
		t.Errorf("lb_acme_certificates{state=\"failing\"} = %v, want 1", v)
	}
	if v := metricValue(lb.metricsText(), `lb_acme_orders_total{result="failure"}`); v < 1 {
		t.Errorf("lb_acme_orders_total{result=\"failure\"} = %v, want 1 or more", v)
	}
}

// TestACMELockHolderKilled: an lb killed with SIGKILL while it holds the
// order lock of a name (its CA accepts connections and never answers, so
// the order hangs) does not block another lb sharing the storage for
// long: the lock, no longer refreshed, goes stale and the other takes it
// and orders.
func TestACMELockHolderKilled(t *testing.T) {
	b := startBackend(t, "a")
	portA, portB := freePortNum(t), freePortNum(t)
	pb := startPebble(t, freePortNum(t), portB, time.Hour)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, unanswered, until the test ends
		}
	}()
	storage := filepath.Join(t.TempDir(), "shared")
	holder := startLB(t, t.TempDir(), sharedConfig(b, pb, storage, portA, "locked.lb.test", "https://"+silent.Addr().String()+"/dir"))
	lock := filepath.Join(storage, "locks", "issue_cert_locked.lb.test.lock")
	if !waitFor(30*time.Second, func() bool { _, err := os.Stat(lock); return err == nil }) {
		t.Fatalf("the lb whose CA does not answer took no lock")
	}
	holder.cmd.Process.Signal(syscall.SIGKILL)
	<-holder.exited
	killed := time.Now()

	other := startLB(t, t.TempDir(), sharedConfig(b, pb, storage, portB, "locked.lb.test", ""))
	st := other.waitACME("https", "locked.lb.test", "valid", 90*time.Second)
	t.Logf("ordered %s after the holder was killed", time.Since(killed).Round(time.Second))
	if _, err := served(t, fmt.Sprintf("127.0.0.1:%d", portB), "locked.lb.test", pb.roots); err != nil {
		t.Errorf("serving %s: %v", st.Certificate.Serial, err)
	}
}
