package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/certgen"
)

// tcpBackend is a raw TCP server on 127.0.0.1 running fn for each
// connection; it counts connections, open and total.
type tcpBackend struct {
	addr  string
	ln    net.Listener
	total atomic.Int64
	open  atomic.Int64
}

func startTCP(t *testing.T, fn func(c net.Conn)) *tcpBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &tcpBackend{addr: ln.Addr().String(), ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.total.Add(1)
			b.open.Add(1)
			go func() {
				defer b.open.Add(-1)
				defer c.Close()
				fn(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return b
}

// echo copies everything back, then half-closes.
func echo(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

func tcpConfig(listener, pool string, backends ...string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, `
[global]
access_log = "stderr"
admin = "127.0.0.1:0"
shutdown_grace = "3s"
watch = false
%s
[[pool]]
name = "tcp"
%s
  [pool.health]
  check = "tcp"
  interval = "200ms"
  timeout = "100ms"
  fall = 2
  rise = 2
`, listener, pool)
	for _, b := range backends {
		fmt.Fprintf(&sb, "  [[pool.backend]]\n  address = %q\n", b)
	}
	return sb.String()
}

const tlsTCPListener = `
[[listener]]
name = "tcps"
mode = "tcp"
bind = "127.0.0.1:0"
pool = "tcp"
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"
`

func TestTCPOverTLS10MBBothWays(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startTCP(t, echo)
	lb := startLB(t, dir, tcpConfig(tlsTCPListener+`
[[listener]]
name = "plain"
mode = "tcp"
bind = "127.0.0.1:0"
pool = "tcp"
idle_timeout = "2s"
`, "", b.addr))
	t.Run("tls", func(t *testing.T) {
		conn, err := tls.Dial("tcp", lb.addrs["tcps"], &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com"})
		if err != nil {
			t.Fatal(err)
		}
		transfer10MB(t, conn)
	})
	t.Run("plain, spliced", func(t *testing.T) {
		conn, err := net.Dial("tcp", lb.addrs["plain"])
		if err != nil {
			t.Fatal(err)
		}
		transfer10MB(t, conn.(*net.TCPConn))
	})
}

// transfer10MB sends 10 MB through an echo and checks every byte comes
// back, half-closing after the last.
func transfer10MB(t *testing.T, conn interface {
	net.Conn
	CloseWrite() error
}) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))

	payload := make([]byte, 10<<20)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		if err == nil {
			err = conn.CloseWrite() // half-close: the echo still comes back
		}
		errc <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, conn)
	if err != nil {
		t.Fatalf("reading the echo after %d bytes: %v", n, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n != int64(len(payload)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echoed %d bytes, want %d identical ones", n, len(payload))
	}
}

func TestTCPHalfClose(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	// The backend reads everything until the client's FIN, then answers.
	b := startTCP(t, func(c net.Conn) {
		req, _ := io.ReadAll(c)
		fmt.Fprintf(c, "got %d bytes: %s", len(req), bytes.ToUpper(req))
	})
	lb := startLB(t, dir, tcpConfig(`
[[listener]]
name = "plain"
mode = "tcp"
bind = "127.0.0.1:0"
pool = "tcp"
idle_timeout = "5s"
`, "", b.addr))
	conn, err := net.Dial("tcp", lb.addrs["plain"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "hello, ")
	time.Sleep(50 * time.Millisecond)
	io.WriteString(conn, "world")
	conn.(*net.TCPConn).CloseWrite()
	answer, err := io.ReadAll(conn)
	if err != nil || string(answer) != "got 12 bytes: HELLO, WORLD" {
		t.Fatalf("answer after a half-close: %q, %v", answer, err)
	}
}

func TestTCPLeastConnSpreadsLongLivedConnections(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	hold := func(c net.Conn) { io.Copy(io.Discard, c) }
	b1, b2 := startTCP(t, hold), startTCP(t, hold)
	lb := startLB(t, dir, tcpConfig(`
[[listener]]
name = "plain"
mode = "tcp"
bind = "127.0.0.1:0"
pool = "tcp"
`, `algorithm = "least_conn"`, b1.addr, b2.addr))
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 10 {
		c, err := net.Dial("tcp", lb.addrs["plain"])
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		deadline := time.Now().Add(2 * time.Second)
		for b1.open.Load()+b2.open.Load() < int64(len(conns)) && time.Now().Before(deadline) {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if b1.open.Load() != 5 || b2.open.Load() != 5 {
		t.Fatalf("10 long-lived connections spread %d / %d, want 5 / 5", b1.open.Load(), b2.open.Load())
	}
	if st := lb.backendStatus("tcp", b1.addr); st.ActiveConnections != 5 {
		t.Errorf("status counts %d active connections on %s, want 5", st.ActiveConnections, b1.addr)
	}
}

func TestTCPDeadBackendPruned(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	b1, b2 := startTCP(t, echo), startTCP(t, echo)
	lb := startLB(t, dir, tcpConfig(`
[[listener]]
name = "plain"
mode = "tcp"
bind = "127.0.0.1:0"
pool = "tcp"
`, "retries = 1", b1.addr, b2.addr))
	ping := func() error {
		c, err := net.Dial("tcp", lb.addrs["plain"])
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "ping")
		c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		if string(b) != "ping" {
			return fmt.Errorf("answer %q (%v)", b, err)
		}
		return nil
	}
	b2.ln.Close()
	// Connections keep working throughout: a refused connect moves on
	// to the other backend before the client's first byte is lost.
	for range 20 {
		if err := ping(); err != nil {
			t.Fatalf("while the dead backend is being pruned: %v", err)
		}
	}
	lb.waitState("tcp", b2.addr, "down", 3*time.Second)
	before := b1.total.Load()
	for range 10 {
		if err := ping(); err != nil {
			t.Fatal(err)
		}
	}
	if got := b1.total.Load() - before; got != 10 {
		t.Errorf("the live backend got %d of 10 connections", got)
	}
}

// tlsBackend serves TLS with its own certificate for name and answers with
// its name.
func tlsBackend(t *testing.T, name string, ca *certgen.Pair) *tcpBackend {
	t.Helper()
	p, err := certgen.New(certgen.Options{Names: []string{name}}, ca)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	return startTCP(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if tc.Handshake() != nil {
			return
		}
		io.WriteString(tc, "this is "+name)
		tc.Close()
	})
}

func TestSNIPassthrough(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	a := tlsBackend(t, "a.example.com", certs.ca)
	b := tlsBackend(t, "b.example.com", certs.ca)
	cfg := fmt.Sprintf(`
[global]
access_log = "stderr"
admin = "127.0.0.1:0"
watch = false

[[listener]]
name = "passthrough"
mode = "tcp"
bind = "127.0.0.1:0"
  [[listener.route]]
  sni = "a.example.com"
  pool = "a"
  [[listener.route]]
  sni = "*.b.example.com"
  pool = "b"
  [[listener.route]]
  sni = "b.example.com"
  pool = "b"

[[pool]]
name = "a"
  [[pool.backend]]
  address = %q

[[pool]]
name = "b"
  [[pool.backend]]
  address = %q
`, a.addr, b.addr)
	lb := startLB(t, dir, cfg)
	for _, tc := range []struct{ sni, want string }{
		{"a.example.com", "a.example.com"},
		{"b.example.com", "b.example.com"},
	} {
		conn, err := tls.Dial("tcp", lb.addrs["passthrough"], &tls.Config{RootCAs: certs.pool(), ServerName: tc.sni})
		if err != nil {
			t.Fatalf("SNI %s: %v", tc.sni, err)
		}
		leaf := conn.ConnectionState().PeerCertificates[0]
		body, _ := io.ReadAll(conn)
		conn.Close()
		if leaf.Subject.CommonName != tc.want || string(body) != "this is "+tc.want {
			t.Errorf("SNI %s reached %q with the certificate of %q", tc.sni, body, leaf.Subject.CommonName)
		}
	}
	// A name no route covers, with no default pool, is closed.
	conn, err := tls.Dial("tcp", lb.addrs["passthrough"], &tls.Config{InsecureSkipVerify: true, ServerName: "c.example.com"})
	if err == nil {
		conn.Close()
		t.Error("an unrouted server name was forwarded")
	}
}

// readProxyHeader parses a PROXY header the way a backend would, written
// here independently of lb's own decoder: v1 text, or v2 binary.
func readProxyHeader(br *bufio.Reader) (version int, src string, tlvs map[byte]string, err error) {
	first, err := br.Peek(12)
	if err != nil {
		return 0, "", nil, err
	}
	if bytes.HasPrefix(first, []byte("PROXY ")) {
		line, err := br.ReadString('\n')
		if err != nil {
			return 0, "", nil, err
		}
		f := strings.Fields(line)
		if len(f) != 6 {
			return 1, "", nil, fmt.Errorf("v1 line %q", line)
		}
		return 1, net.JoinHostPort(f[2], f[4]), nil, nil
	}
	if string(first) != "\r\n\r\n\x00\r\nQUIT\n" {
		return 0, "", nil, fmt.Errorf("no PROXY header: %q", first)
	}
	hdr := make([]byte, 16)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return 2, "", nil, err
	}
	body := make([]byte, int(hdr[14])<<8|int(hdr[15]))
	if _, err := io.ReadFull(br, body); err != nil {
		return 2, "", nil, err
	}
	if hdr[12] != 0x21 || hdr[13] != 0x11 {
		return 2, "", nil, fmt.Errorf("v2 ver/cmd %x family %x", hdr[12], hdr[13])
	}
	src = net.JoinHostPort(net.IP(body[0:4]).String(), fmt.Sprint(int(body[8])<<8|int(body[9])))
	tlvs = map[byte]string{}
	for rest := body[12:]; len(rest) >= 3; {
		l := int(rest[1])<<8 | int(rest[2])
		tlvs[rest[0]] = string(rest[3 : 3+l])
		rest = rest[3+l:]
	}
	return 2, src, tlvs, nil
}

func TestProxyProtocolToBackends(t *testing.T) {
	for _, version := range []string{"v1", "v2"} {
		t.Run(version, func(t *testing.T) {
			dir := t.TempDir()
			certs := writeCerts(t, dir)
			type seen struct {
				version int
				src     string
				tlvs    map[byte]string
			}
			got := make(chan seen, 1)
			b := startTCP(t, func(c net.Conn) {
				br := bufio.NewReader(c)
				v, src, tlvs, err := readProxyHeader(br)
				if err == io.EOF {
					return // a health check
				}
				if err != nil {
					t.Error(err)
					return
				}
				got <- seen{v, src, tlvs}
				io.WriteString(c, "hi")
			})
			lb := startLB(t, dir, tcpConfig(strings.Replace(tlsTCPListener, `pool = "tcp"`, `pool = "tcp"
proxy_protocol = "`+version+`"`, 1), "", b.addr))
			conn, err := tls.Dial("tcp", lb.addrs["tcps"], &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com"})
			if err != nil {
				t.Fatal(err)
			}
			io.ReadAll(conn)
			s := <-got
			conn.Close()
			if want := conn.LocalAddr().String(); s.src != want {
				t.Errorf("backend saw client %s, want %s", s.src, want)
			}
			if version == "v2" {
				if s.tlvs[0x02] != "www.example.com" {
					t.Errorf("v2 AUTHORITY TLV %q", s.tlvs[0x02])
				}
				if ssl := s.tlvs[0x20]; len(ssl) < 5 || ssl[0] != 1 || !strings.Contains(ssl, "TLSv1.3") {
					t.Errorf("v2 SSL TLV %q", ssl)
				}
			}
		})
	}
}

func TestAcceptProxyProtocolFromABalancerInFront(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	web := startBackend(t, "w1")
	got := make(chan string, 1)
	tcpB := startTCP(t, func(c net.Conn) {
		_, src, _, err := readProxyHeader(bufio.NewReader(c))
		if err == io.EOF {
			return // a health check
		}
		if err != nil {
			t.Error(err)
		}
		got <- src
	})
	cfg := fmt.Sprintf(`
[global]
access_log = "stderr"
admin = "127.0.0.1:0"
watch = false

[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"
accept_proxy_protocol = true

[[listener]]
name = "tcp"
mode = "tcp"
bind = "127.0.0.1:0"
pool = "tcp"
accept_proxy_protocol = true
proxy_protocol = "v2"

[[pool]]
name = "web"
  [[pool.backend]]
  address = %q

[[pool]]
name = "tcp"
  [[pool.backend]]
  address = %q
`, web.addr, tcpB.addr)
	lb := startLB(t, dir, cfg)

	// HTTP: the backend's X-Forwarded-For names the client the header
	// gave, not the balancer's address.
	c, err := net.Dial("tcp", lb.addrs["web"])
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "PROXY TCP4 203.0.113.7 192.0.2.1 51234 80\r\nGET /via-proxy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	c.Close()
	if !strings.Contains(string(body), "xff=203.0.113.7 ") {
		t.Errorf("backend answer %q: want X-Forwarded-For 203.0.113.7", body)
	}

	// TCP, v2 in, v2 out.
	c, err = net.Dial("tcp", lb.addrs["tcp"])
	if err != nil {
		t.Fatal(err)
	}
	hdr := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c")
	hdr = append(hdr, 198, 51, 100, 9, 192, 0, 2, 1, 0xc3, 0x50, 0x01, 0xbb) // 198.51.100.9:50000 -> 192.0.2.1:443
	c.Write(append(hdr, "payload"...))
	select {
	case src := <-got:
		if src != "198.51.100.9:50000" {
			t.Errorf("tcp backend saw %s, want 198.51.100.9:50000", src)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no connection reached the tcp backend")
	}
	c.Close()

	// Without a header, a connection is refused.
	c, err = net.Dial("tcp", lb.addrs["web"])
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Errorf("a connection without a PROXY header got %q", b)
	}
	c.Close()
}

func TestTCPMetricsAndLog(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	b := startTCP(t, echo)
	accessLog := filepath.Join(dir, "access.log")
	cfg := strings.Replace(tcpConfig(`
[[listener]]
name = "plain"
mode = "tcp"
bind = "127.0.0.1:0"
pool = "tcp"
`, "", b.addr), `access_log = "stderr"`, `access_log = "`+accessLog+`"`, 1)
	lb := startLB(t, dir, cfg)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", lb.addrs["plain"])
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.Write(make([]byte, 1000))
			c.(*net.TCPConn).CloseWrite()
			io.ReadAll(c)
		}()
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond)
	m := scrape(t, lb)
	if v := value(m, "lb_tcp_connections_total", "listener", "plain", "pool", "tcp", "backend", b.addr); v != 3 {
		t.Errorf("lb_tcp_connections_total = %v, want 3", v)
	}
	for _, dir := range []string{"in", "out"} {
		if v := value(m, "lb_tcp_bytes_total", "listener", "plain", "backend", b.addr, "direction", dir); v != 3000 {
			t.Errorf("lb_tcp_bytes_total{direction=%s} = %v, want 3000", dir, v)
		}
	}
	if v := histogramCount(m, "lb_tcp_connection_duration_seconds", "listener", "plain", "pool", "tcp"); v != 3 {
		t.Errorf("lb_tcp_connection_duration_seconds count = %v, want 3", v)
	}
	data, _ := os.ReadFile(accessLog)
	if n := strings.Count(string(data), "connection: listener=plain"); n != 3 {
		t.Errorf("%d connection lines in the access log, want 3:\n%s", n, data)
	}
	if !strings.Contains(string(data), "bytes_in=1000 bytes_out=1000") {
		t.Errorf("access log lacks byte counts:\n%s", data)
	}
}
