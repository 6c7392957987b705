package tlsterm

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/certgen"
	"github.com/offloadlb/lb/pkg/config"
)

// fakeAuto serves one automatic name, whose certificate can be swapped,
// and a challenge certificate for TLS-ALPN-01 handshakes.
type fakeAuto struct {
	name      string
	cert      atomic.Pointer[tls.Certificate]
	challenge *tls.Certificate
}

func (f *fakeAuto) Certificate(name string) *tls.Certificate {
	if name == f.name {
		return f.cert.Load()
	}
	return nil
}

func (f *fakeAuto) Challenge(*tls.ClientHelloInfo) (*tls.Certificate, error) { return f.challenge, nil }

func (f *fakeAuto) HasChallenge(name string) bool { return name == f.name }

func tlsPair(t *testing.T, ca *certgen.Pair, names ...string) *tls.Certificate {
	t.Helper()
	p, err := certgen.New(certgen.Options{Names: names}, ca)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

// TestAutomaticCertificates: SNI picks an automatic certificate first,
// then static ones; a name whose automatic certificate is not there yet
// gets the static default, or fails the handshake without one; a swapped
// certificate serves from the next handshake on.
func TestAutomaticCertificates(t *testing.T) {
	c := makeCerts(t)
	auto := &fakeAuto{name: "auto.example.com"}
	roots := x509.NewCertPool()
	roots.AddCert(c.ca.Cert)
	subject := func(addr, name string) (string, error) {
		st, err := handshake(addr, &tls.Config{ServerName: name, RootCAs: roots, InsecureSkipVerify: true})
		if err != nil {
			return "", err
		}
		return st.PeerCertificates[0].DNSNames[0], nil
	}

	withStatic, err := New(&config.TLS{Cert: c.siteFile, Key: c.siteKey, MinVersion: "1.2",
		SNI: []config.Cert{{Cert: c.apiFile, Key: c.apiKey}}}, "http", nil, auto)
	if err != nil {
		t.Fatal(err)
	}
	onlyAuto, err := New(&config.TLS{MinVersion: "1.2"}, "http", nil, auto)
	if err != nil {
		t.Fatal(err)
	}
	if files := onlyAuto.Files(); len(files) != 0 {
		t.Errorf("a listener without static certificates watches %q", files)
	}
	static, only := serve(t, withStatic), serve(t, onlyAuto)

	// Not obtained yet.
	if got, err := subject(static, "auto.example.com"); err != nil || got != "www.example.com" {
		t.Errorf("before the automatic certificate: %q, %v; want the static default", got, err)
	}
	if _, err := subject(only, "auto.example.com"); err == nil {
		t.Error("a handshake with no certificate at all succeeded")
	}

	auto.cert.Store(tlsPair(t, c.ca, "auto.example.com"))
	for _, addr := range []string{static, only} {
		if got, err := subject(addr, "AUTO.example.com."); err != nil || got != "auto.example.com" {
			t.Errorf("automatic name: %q, %v", got, err)
		}
	}
	if got, err := subject(static, "api.example.com"); err != nil || got != "api.example.com" {
		t.Errorf("static sni name beside automatic ones: %q, %v", got, err)
	}
	if _, err := subject(only, "other.example.com"); err == nil {
		t.Error("a name nothing covers got a certificate on a listener without a static one")
	}

	// A renewal: the next handshake has the new certificate.
	next := tlsPair(t, c.ca, "auto.example.com", "renewed.example.com")
	auto.cert.Store(next)
	st, err := handshake(static, &tls.Config{ServerName: "auto.example.com", InsecureSkipVerify: true})
	if err != nil || !st.PeerCertificates[0].Equal(next.Leaf) {
		t.Errorf("after a swap, the handshake got %v (%v)", st, err)
	}
}

// TestTLSALPNChallenge: a handshake that offers only "acme-tls/1" gets the
// challenge certificate and that protocol (RFC 8737), and the handshaker
// closes it instead of handing it to the HTTP server.
func TestTLSALPNChallenge(t *testing.T) {
	c := makeCerts(t)
	auto := &fakeAuto{name: "auto.example.com", challenge: tlsPair(t, c.ca, "challenge.example.com")}
	term, err := New(&config.TLS{Cert: c.siteFile, Key: c.siteKey, MinVersion: "1.2", ALPN: []string{"h2", "http/1.1"}}, "http", nil, auto)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := NewHandshaker(5 * time.Second)
	defer h.Close()
	delivered := make(chan string, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			h.Handshake(conn, nil, term, func(nc net.Conn) {
				delivered <- nc.(*Conn).Proto
				nc.Close()
			})
		}
	}()

	cs, err := handshake(ln.Addr().String(), &tls.Config{ServerName: "auto.example.com", NextProtos: []string{ACMETLS1}, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if cs.NegotiatedProtocol != ACMETLS1 || cs.PeerCertificates[0].DNSNames[0] != "challenge.example.com" {
		t.Errorf("challenge handshake: protocol %q, certificate %v", cs.NegotiatedProtocol, cs.PeerCertificates[0].DNSNames)
	}
	// An ordinary handshake offering acme-tls/1 among others is not a
	// validation.
	cs, err = handshake(ln.Addr().String(), &tls.Config{ServerName: "www.example.com", NextProtos: []string{"h2", ACMETLS1}, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if cs.NegotiatedProtocol != "h2" || cs.PeerCertificates[0].DNSNames[0] != "www.example.com" {
		t.Errorf("ordinary handshake: protocol %q, certificate %v", cs.NegotiatedProtocol, cs.PeerCertificates[0].DNSNames)
	}
	select {
	case p := <-delivered:
		if p != "h2" {
			t.Errorf("delivered a connection with protocol %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the ordinary connection was not delivered")
	}
	select {
	case p := <-delivered:
		t.Errorf("a second connection was delivered (%q): the validation's", p)
	case <-time.After(200 * time.Millisecond):
	}
	// A validation handshake for a name that is not automatic fails
	// without a challenge certificate.
	if cs, err := handshake(ln.Addr().String(), &tls.Config{ServerName: "other.example.com", NextProtos: []string{ACMETLS1}, InsecureSkipVerify: true}); err == nil {
		t.Errorf("acme-tls/1 for a name without ACME: protocol %q, certificate %v", cs.NegotiatedProtocol, cs.PeerCertificates[0].DNSNames)
	}
}
