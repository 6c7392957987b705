package tlsterm

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/internal/certgen"
	"github.com/offloadlb/lb/internal/testutil"
	"github.com/offloadlb/lb/pkg/config"
)

// serveHandshaker accepts connections and runs them through a Handshaker
// with term, as a listener does; the connections it delivers come out of
// the returned channel.
func serveHandshaker(tb testing.TB, term *Terminator) (string, <-chan net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	h := NewHandshaker(5 * time.Second)
	out := make(chan net.Conn, 16)
	// Every handshake ends with its connection delivered or closed; the
	// cleanup waits for all of them.
	var handshakes sync.WaitGroup
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handshakes.Add(1)
			ec := &endedConn{Conn: c, end: handshakes.Done}
			h.Handshake(ec, nil, term, func(c net.Conn) {
				out <- c
				ec.ended()
			})
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-accepting
		h.Close()
		handshakes.Wait()
	})
	return ln.Addr().String(), out
}

// endedConn calls end once, when it is closed or ended is called.
type endedConn struct {
	net.Conn
	once sync.Once
	end  func()
}

func (c *endedConn) ended() { c.once.Do(c.end) }

func (c *endedConn) Close() error {
	c.ended()
	return c.Conn.Close()
}

type clientCerts struct {
	caFile        string
	good, otherCA tls.Certificate
	expired       tls.Certificate
}

func makeClientCerts(t *testing.T) *clientCerts {
	t.Helper()
	dir := t.TempDir()
	ca, err := certgen.New(certgen.Options{IsCA: true, Names: []string{"Partner CA"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := certgen.New(certgen.Options{IsCA: true, Names: []string{"Somebody Else"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cc := &clientCerts{caFile: filepath.Join(dir, "clients-ca.pem")}
	if err := os.WriteFile(cc.caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	pair := func(o certgen.Options, parent *certgen.Pair) tls.Certificate {
		p, err := certgen.New(o, parent)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cc.good = pair(certgen.Options{Names: []string{"partner-1"}}, ca)
	cc.otherCA = pair(certgen.Options{Names: []string{"intruder"}}, other)
	cc.expired = pair(certgen.Options{Names: []string{"partner-old"}, NotAfter: time.Now().Add(-30 * time.Minute)}, ca)
	return cc
}

func TestClientAuth(t *testing.T) {
	c := makeCerts(t)
	cc := makeClientCerts(t)
	dial := func(addr string, cert *tls.Certificate) error {
		// Send the certificate whatever CAs the server names (Go's
		// client would otherwise hold back one they do not cover).
		cfg := &tls.Config{InsecureSkipVerify: true, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		}}
		conn, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			return err
		}
		defer conn.Close()
		// TLS 1.3 clients learn of a refused certificate on their first
		// read.
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err = conn.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return nil
		}
		return err
	}
	get := func(t *testing.T, out <-chan net.Conn) *Conn {
		t.Helper()
		select {
		case nc := <-out:
			nc.Close()
			return nc.(*Conn)
		case <-time.After(2 * time.Second):
			t.Fatal("no connection delivered")
			return nil
		}
	}

	t.Run("none", func(t *testing.T) {
		term, err := New(&config.TLS{Cert: c.siteFile, Key: c.siteKey, ClientAuth: "none"}, "http", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		addr, out := serveHandshaker(t, term)
		if err := dial(addr, &cc.good); err != nil {
			t.Fatal(err)
		}
		if got := get(t, out); got.ClientVerify != "" || got.ClientSubject != "" {
			t.Errorf("client_auth none reported %q %q", got.ClientVerify, got.ClientSubject)
		}
	})

	t.Run("request", func(t *testing.T) {
		term, err := New(&config.TLS{Cert: c.siteFile, Key: c.siteKey, ClientAuth: "request", ClientCA: cc.caFile}, "http", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		addr, out := serveHandshaker(t, term)
		for _, tc := range []struct {
			name          string
			cert          *tls.Certificate
			verify, subj  string
			verifyPrefix  bool
			expectSubject bool
		}{
			{"no certificate", nil, "NONE", "", false, false},
			{"good", &cc.good, "SUCCESS", "CN=partner-1", false, true},
			{"unknown CA", &cc.otherCA, "FAILED:unknown issuer", "CN=intruder", false, true},
			{"expired", &cc.expired, "FAILED:certificate expired", "CN=partner-old", true, true},
		} {
			if err := dial(addr, tc.cert); err != nil {
				t.Fatalf("%s: request mode refused the handshake: %v", tc.name, err)
			}
			got := get(t, out)
			ok := got.ClientVerify == tc.verify || tc.verifyPrefix && strings.HasPrefix(got.ClientVerify, tc.verify)
			if !ok || got.ClientSubject != tc.subj {
				t.Errorf("%s: verify %q subject %q, want %q %q", tc.name, got.ClientVerify, got.ClientSubject, tc.verify, tc.subj)
			}
		}
	})

	t.Run("require", func(t *testing.T) {
		term, err := New(&config.TLS{Cert: c.siteFile, Key: c.siteKey, ClientAuth: "require", ClientCA: cc.caFile}, "http", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		addr, out := serveHandshaker(t, term)
		if err := dial(addr, &cc.good); err != nil {
			t.Fatalf("good certificate refused: %v", err)
		}
		if got := get(t, out); got.ClientVerify != "SUCCESS" || got.ClientSubject != "CN=partner-1" {
			t.Errorf("verify %q subject %q", got.ClientVerify, got.ClientSubject)
		}
		for name, cert := range map[string]*tls.Certificate{"no certificate": nil, "unknown CA": &cc.otherCA, "expired": &cc.expired} {
			if err := dial(addr, cert); err == nil {
				t.Errorf("%s: handshake accepted", name)
			}
		}
		select {
		case <-out:
			t.Error("a refused client's connection was delivered")
		case <-time.After(100 * time.Millisecond):
		}
	})

	t.Run("client CA list", func(t *testing.T) {
		// The CertificateRequest names the accepted CAs, so that clients
		// (browsers) offer a matching certificate.
		term, err := New(&config.TLS{Cert: c.siteFile, Key: c.siteKey, ClientAuth: "require", ClientCA: cc.caFile}, "http", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		addr, _ := serveHandshaker(t, term)
		var names []string
		var mu sync.Mutex
		cfg := &tls.Config{InsecureSkipVerify: true, GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			mu.Lock()
			defer mu.Unlock()
			for _, dn := range cri.AcceptableCAs {
				names = append(names, string(dn))
			}
			return &cc.good, nil
		}}
		conn, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		mu.Lock()
		defer mu.Unlock()
		if len(names) != 1 || !strings.Contains(names[0], "Partner CA") {
			t.Errorf("acceptable CAs %q, want the Partner CA", names)
		}
	})
}

func TestHeaderSafe(t *testing.T) {
	for in, want := range map[string]string{
		"CN=plain,O=Example":  "CN=plain,O=Example",
		"CN=Zoë":              `CN=Zo\c3\ab`,
		"CN=a\r\nX-Evil: yes": `CN=a\0d\0aX-Evil: yes`,
	} {
		if got := headerSafe(in); got != want {
			t.Errorf("headerSafe(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTicketKeysRotate(t *testing.T) {
	k := NewTicketKeys()
	now := time.Now()
	k.now = func() time.Time { return now }
	cfg := &tls.Config{}
	var gen atomic.Uint64
	k.apply(cfg, &gen)
	first := gen.Load()
	if len(k.keys) != 1 {
		t.Fatalf("%d keys at start", len(k.keys))
	}
	k.apply(cfg, &gen)
	if gen.Load() != first {
		t.Fatal("keys changed without a rotation")
	}
	for i := 2; i <= TicketKeyCount+3; i++ {
		now = now.Add(TicketRotation)
		k.apply(cfg, &gen)
		want := min(i, TicketKeyCount)
		if len(k.keys) != want {
			t.Fatalf("after %d rotations: %d keys, want %d", i-1, len(k.keys), want)
		}
	}
	if gen.Load() == first {
		t.Error("rotation did not reach the config")
	}
}

// TestResumption: a client resumes with a ticket across a certificate
// reload (the keys belong to the listener, not to one tls.Config), and
// not once the key that sealed its ticket has been rotated out.
func TestResumption(t *testing.T) {
	c := makeCerts(t)
	keys := NewTicketKeys()
	var now atomic.Int64 // read by handshakes on other goroutines
	now.Store(time.Now().UnixNano())
	keys.now = func() time.Time { return time.Unix(0, now.Load()) }
	term, err := New(&config.TLS{Cert: c.siteFile, Key: c.siteKey}, "http", keys, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveResumable(t, term)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cache := tls.NewLRUClientSessionCache(4)
		resumed := func() bool { t.Helper(); return resumes(t, addr, cache, v) }
		if resumed() {
			t.Fatalf("TLS %s: first handshake resumed", VersionName(v))
		}
		if !resumed() {
			t.Fatalf("TLS %s: second handshake did not resume", VersionName(v))
		}
		if err := term.Reload(); err != nil {
			t.Fatal(err)
		}
		if !resumed() {
			t.Errorf("TLS %s: no resumption after a certificate reload", VersionName(v))
		}
		now.Add(int64(TicketRotation * (TicketKeyCount + 1)))
		if resumed() {
			t.Errorf("TLS %s: resumed with a ticket whose key was rotated out", VersionName(v))
		}
	}
}

// TestWatch: replacing the certificate files (in place, or by renaming a
// new file over the old as certbot and Kubernetes do) reaches new
// handshakes within seconds; a broken pair leaves the old one serving.
func TestWatch(t *testing.T) {
	c := makeCerts(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "site.pem"), filepath.Join(dir, "site.key")
	copyFile(t, c.siteFile, cert)
	copyFile(t, c.siteKey, key)
	term, err := New(&config.TLS{Cert: cert, Key: key}, "http", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf testutil.SyncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logBuf, Level: hclog.Info})
	term.Watch("https", log)
	defer term.Close()
	addr := serve(t, term)
	served := func() *x509.Certificate {
		st, err := handshake(addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		return st.PeerCertificates[0]
	}
	waitFor := func(want *x509.Certificate) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !served().Equal(want) {
			if time.Now().After(deadline) {
				t.Fatalf("still serving the old certificate after 5s; log:\n%s", logBuf.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// In place: key first, then certificate, as an operator copying
	// files would (the pair mismatches for a moment).
	copyFile(t, c.apiKey, key)
	copyFile(t, c.apiFile, cert)
	waitFor(c.api.Cert)

	// Renamed over the old files.
	copyFile(t, c.wildFile, cert+".new")
	copyFile(t, c.wildKey, key+".new")
	if err := os.Rename(key+".new", key); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(cert+".new", cert); err != nil {
		t.Fatal(err)
	}
	waitFor(c.wild.Cert)

	// Broken: a certificate without its key. The old pair stays.
	if err := os.WriteFile(cert, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logBuf.String(), "still serving the previous certificates") {
		if time.Now().After(deadline) {
			t.Fatalf("no error logged for a broken certificate; log:\n%s", logBuf.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !served().Equal(c.wild.Cert) {
		t.Error("a broken certificate file replaced the working one")
	}
	if !strings.Contains(logBuf.String(), "certificate reloaded") {
		t.Errorf("reloads not logged:\n%s", logBuf.String())
	}
}

// TestSharedTicketKeys: two listeners with key sets of their own, as two
// lb processes have, resume each other's sessions when they read the same
// ticket_keys file, and not without it. A rotation that puts a new key
// first keeps the old tickets good; dropping their key ends them.
func TestSharedTicketKeys(t *testing.T) {
	c := makeCerts(t)
	keyFile := filepath.Join(t.TempDir(), "tickets.key")
	newKey := func() string {
		b := make([]byte, 32)
		rand.Read(b)
		return base64.StdEncoding.EncodeToString(b)
	}
	k1, k2 := newKey(), newKey()
	writeKeys := func(lines ...string) {
		t.Helper()
		if err := os.WriteFile(keyFile, []byte("# session ticket keys\n"+strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeKeys(k1)
	start := func(shared bool) (*Terminator, string) {
		cfg := &config.TLS{Cert: c.siteFile, Key: c.siteKey}
		if shared {
			cfg.TicketKeys = keyFile
		}
		term, err := New(cfg, "http", NewTicketKeys(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return term, serveResumable(t, term)
	}
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		resumed := func(cache tls.ClientSessionCache, addr string) bool {
			t.Helper()
			return resumes(t, addr, cache, v)
		}
		name := VersionName(v)

		_, own1 := start(false)
		_, own2 := start(false)
		cache := tls.NewLRUClientSessionCache(4)
		resumed(cache, own1)
		if resumed(cache, own2) {
			t.Errorf("TLS %s: resumed on another listener with keys of its own", name)
		}

		writeKeys(k1)
		a, addrA := start(true)
		_, addrB := start(true)
		cache = tls.NewLRUClientSessionCache(4)
		if resumed(cache, addrA) {
			t.Fatalf("TLS %s: first handshake resumed", name)
		}
		if !resumed(cache, addrB) {
			t.Errorf("TLS %s: a session from one listener did not resume on the other sharing its keys", name)
		}

		// Rotation: a new key first seals new tickets; the old one still
		// opens the tickets it sealed.
		writeKeys(k2, k1)
		if err := a.Reload(); err != nil {
			t.Fatal(err)
		}
		if !resumed(cache, addrA) {
			t.Errorf("TLS %s: a ticket sealed with the second key did not resume after the rotation", name)
		}
		writeKeys(k2)
		if err := a.Reload(); err != nil {
			t.Fatal(err)
		}
		old := tls.NewLRUClientSessionCache(4)
		resumed(old, addrB) // sealed by B, which still has only k1
		if resumed(old, addrA) {
			t.Errorf("TLS %s: resumed with a ticket whose key left the file", name)
		}

		// A file that no longer parses leaves the keys in use.
		writeKeys("not a key")
		if err := a.Reload(); err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("TLS %s: reload with a bad key file: %v", name, err)
		}
	}
}

// serveResumable serves term's handshakes, then reads (so that TLS 1.3
// tickets, sent after the handshake, reach the client) and closes.
func serveResumable(t *testing.T, term *Terminator) string {
	addr, out := serveHandshaker(t, term)
	go func() {
		for c := range out {
			go func() {
				c.SetReadDeadline(time.Now().Add(time.Second))
				c.Read(make([]byte, 1))
				c.Close()
			}()
		}
	}()
	return addr
}

// resumes makes a TLS connection of version v with the session cache and
// reports whether it resumed a session.
func resumes(t *testing.T, addr string, cache tls.ClientSessionCache, v uint16) bool {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ClientSessionCache: cache, MaxVersion: v, ServerName: "www.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A 1.3 ticket arrives after the handshake: read for it.
	conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	conn.Read(make([]byte, 1))
	return conn.ConnectionState().DidResume
}
