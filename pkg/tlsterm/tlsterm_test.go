package tlsterm

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/offloadlb/lb/internal/certgen"
	"github.com/offloadlb/lb/pkg/config"
)

type certs struct {
	ca                *certgen.Pair
	site, api, wild   *certgen.Pair
	siteFile, siteKey string
	apiFile, apiKey   string
	wildFile, wildKey string
	rsaFile, rsaKey   string
}

func makeCerts(t *testing.T) *certs {
	t.Helper()
	dir := t.TempDir()
	ca, err := certgen.New(certgen.Options{IsCA: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &certs{ca: ca}
	mk := func(names []string, kt certgen.KeyType, base string) (*certgen.Pair, string, string) {
		p, err := certgen.New(certgen.Options{Names: names, Key: kt}, ca)
		if err != nil {
			t.Fatal(err)
		}
		cf, kf, err := p.Write(dir, base)
		if err != nil {
			t.Fatal(err)
		}
		return p, cf, kf
	}
	c.site, c.siteFile, c.siteKey = mk([]string{"www.example.com", "127.0.0.1"}, certgen.ECDSA, "site")
	c.api, c.apiFile, c.apiKey = mk([]string{"api.example.com"}, certgen.ECDSA, "api")
	c.wild, c.wildFile, c.wildKey = mk([]string{"*.example.org"}, certgen.ECDSA, "wild")
	_, c.rsaFile, c.rsaKey = mk([]string{"api.example.com"}, certgen.RSA, "api-rsa")
	return c
}

// serve runs a TLS listener with t's config that completes handshakes and
// closes.
func serve(tb testing.TB, term *Terminator) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, term.current().tls)
				tc.Handshake()
				tc.Close()
			}()
		}
	}()
	tb.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

func handshake(addr string, cfg *tls.Config) (*tls.ConnectionState, error) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	st := c.ConnectionState()
	return &st, nil
}

func TestSNISelection(t *testing.T) {
	c := makeCerts(t)
	term, err := New(&config.TLS{
		Cert: c.siteFile, Key: c.siteKey, MinVersion: "1.2",
		SNI: []config.Cert{{Cert: c.apiFile, Key: c.apiKey}, {Cert: c.wildFile, Key: c.wildKey}},
	}, "http", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, term)
	for _, tc := range []struct {
		sni  string
		want *certgen.Pair
	}{
		{"www.example.com", c.site},
		{"api.example.com", c.api},
		{"API.Example.com", c.api},
		{"shop.example.org", c.wild},
		{"a.b.example.org", c.site}, // a wildcard covers one level only
		{"unknown.test", c.site},    // the first certificate is the default
		{"", c.site},                // no SNI at all
	} {
		st, err := handshake(addr, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("SNI %q: %v", tc.sni, err)
		}
		if got := st.PeerCertificates[0]; !got.Equal(tc.want.Cert) {
			t.Errorf("SNI %q got certificate for %v, want %v", tc.sni, got.DNSNames, tc.want.Cert.DNSNames)
		}
	}
	// A client that verifies gets a chain it accepts.
	pool := x509.NewCertPool()
	pool.AddCert(c.ca.Cert)
	if _, err := handshake(addr, &tls.Config{ServerName: "api.example.com", RootCAs: pool}); err != nil {
		t.Fatalf("verified handshake: %v", err)
	}
}

func TestRSAAndECDSAForOneName(t *testing.T) {
	c := makeCerts(t)
	term, err := New(&config.TLS{
		Cert: c.siteFile, Key: c.siteKey, MinVersion: "1.2",
		SNI: []config.Cert{{Cert: c.apiFile, Key: c.apiKey}, {Cert: c.rsaFile, Key: c.rsaKey}},
	}, "http", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, term)
	st, err := handshake(addr, &tls.Config{ServerName: "api.example.com", InsecureSkipVerify: true,
		MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}})
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerCertificates[0].PublicKeyAlgorithm != x509.RSA {
		t.Errorf("an RSA-only client got a %v certificate", st.PeerCertificates[0].PublicKeyAlgorithm)
	}
	st, err = handshake(addr, &tls.Config{ServerName: "api.example.com", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerCertificates[0].PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("a modern client got a %v certificate, want the first listed (ECDSA)", st.PeerCertificates[0].PublicKeyAlgorithm)
	}
}

func TestVersionsAndSuites(t *testing.T) {
	c := makeCerts(t)
	term, err := New(&config.TLS{Cert: c.siteFile, Key: c.siteKey, MinVersion: "1.2"}, "http", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, term)
	if _, err := handshake(addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS11, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Error("TLS 1.1 accepted")
	}
	st, err := handshake(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil || st.Version != tls.VersionTLS13 {
		t.Errorf("TLS 1.3: %v, version %x", err, st.Version)
	}
	st, err = handshake(addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil || st.Version != tls.VersionTLS12 {
		t.Fatalf("TLS 1.2: %v", err)
	}
	if st.NegotiatedProtocol != "http/1.1" {
		t.Errorf("ALPN %q, want http/1.1 (only it is configured)", st.NegotiatedProtocol)
	}
	termH2, err := New(&config.TLS{Cert: c.siteFile, Key: c.siteKey, MinVersion: "1.2", ALPN: []string{"h2", "http/1.1"}}, "http", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err = handshake(serve(t, termH2), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil || st.NegotiatedProtocol != "h2" {
		t.Errorf("ALPN %q (%v), want h2", st.NegotiatedProtocol, err)
	}
	for _, weak := range []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, // not AEAD
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256,      // not forward-secret
	} {
		if _, err := handshake(addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{weak}}); err == nil {
			t.Errorf("suite %s accepted", tls.CipherSuiteName(weak))
		}
	}

	term13, err := New(&config.TLS{Cert: c.siteFile, Key: c.siteKey, MinVersion: "1.3"}, "http", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr13 := serve(t, term13)
	if _, err := handshake(addr13, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}); err == nil {
		t.Error("min_version 1.3 accepted TLS 1.2")
	}
}

func TestReloadKeepsOldOnError(t *testing.T) {
	c := makeCerts(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "c.key")
	copyFile(t, c.siteFile, cert)
	copyFile(t, c.siteKey, key)
	term, err := New(&config.TLS{Cert: cert, Key: key}, "http", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, term)

	copyFile(t, c.apiFile, cert) // key no longer matches
	if err := term.Reload(); err == nil {
		t.Fatal("mismatched pair accepted")
	}
	st, err := handshake(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil || !st.PeerCertificates[0].Equal(c.site.Cert) {
		t.Fatalf("old certificate not kept: %v", err)
	}
	copyFile(t, c.apiKey, key)
	if err := term.Reload(); err != nil {
		t.Fatal(err)
	}
	st, err = handshake(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil || !st.PeerCertificates[0].Equal(c.api.Cert) {
		t.Fatalf("new certificate not served: %v", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
