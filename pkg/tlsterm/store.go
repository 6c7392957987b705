// Package tlsterm terminates TLS for listeners: it loads certificate
// chains and keys, picks one per handshake by SNI, and builds the
// tls.Config a listener serves with.
package tlsterm

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
)

// Store holds a listener's certificates, indexed by the names they are
// valid for. It is immutable once built; a Terminator swaps whole stores.
// The automatic certificates it serves change as they are obtained and
// renewed, behind Automatic's own atomic pointers.
type Store struct {
	def    *tls.Certificate              // nil: no static certificate
	byName map[string][]*tls.Certificate // lower-case DNS name or "*.suffix"
	all    []*tls.Certificate
	auto   Automatic // nil: none
}

// Automatic is where a listener's ACME certificates come from (see
// pkg/acme). Its methods are called during handshakes, concurrently.
type Automatic interface {
	// Certificate returns the certificate for name (lower-case, without
	// a final dot), nil when name is not one of its names or has no
	// certificate yet.
	Certificate(name string) *tls.Certificate
	// Challenge answers a TLS-ALPN-01 validation handshake (RFC 8737):
	// one whose only ALPN protocol is "acme-tls/1".
	Challenge(hello *tls.ClientHelloInfo) (*tls.Certificate, error)
	// HasChallenge reports whether a TLS-ALPN-01 handshake for name
	// (lower-case, without a final dot) is one to answer.
	HasChallenge(name string) bool
}

// ACMETLS1 is the ALPN protocol of TLS-ALPN-01 validation handshakes (RFC
// 8737 section 6).
const ACMETLS1 = "acme-tls/1"

// NewStore indexes certs by their SAN DNS names (or the subject common
// name when a certificate has none). The first certificate is the default,
// served to clients that send no SNI or a name no certificate covers.
// auto, if not nil, serves its names before the static certificates; with
// it, certs may be empty, and a name neither covers fails the handshake.
func NewStore(certs []*tls.Certificate, auto Automatic) (*Store, error) {
	if len(certs) == 0 && auto == nil {
		return nil, fmt.Errorf("tlsterm: no certificate")
	}
	s := &Store{byName: map[string][]*tls.Certificate{}, all: certs, auto: auto}
	if len(certs) > 0 {
		s.def = certs[0]
	}
	for _, c := range certs {
		if c.Leaf == nil {
			leaf, err := x509.ParseCertificate(c.Certificate[0])
			if err != nil {
				return nil, fmt.Errorf("tlsterm: parse certificate: %w", err)
			}
			c.Leaf = leaf
		}
		for _, n := range Names(c.Leaf) {
			s.byName[n] = append(s.byName[n], c)
		}
	}
	return s, nil
}

// Names returns the lower-case names a certificate is served for: its DNS
// SANs, its IP SANs, or its common name when it has no SANs.
func Names(leaf *x509.Certificate) []string {
	var names []string
	for _, n := range leaf.DNSNames {
		names = append(names, strings.ToLower(n))
	}
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && leaf.Subject.CommonName != "" {
		names = append(names, strings.ToLower(leaf.Subject.CommonName))
	}
	return names
}

// Certificates returns every static certificate in the store, default
// first; the automatic ones are Automatic's to tell.
func (s *Store) Certificates() []*tls.Certificate { return s.all }

// errNoCertificate fails a handshake for a name no certificate covers on
// a listener without a static one (its ACME certificate may not be there
// yet).
var errNoCertificate = errors.New("tlsterm: no certificate for this server name")

// Get picks the certificate for a ClientHello: the automatic certificate
// of that name, then an exact name match, then a wildcard one level up
// ("*.example.com" for "www.example.com"), then the default. Where several
// certificates cover the name (an RSA and an ECDSA one, say), the first
// the client supports wins.
func (s *Store) Get(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := hello.ServerName
	if name == "" {
		// No SNI (an IP address was dialled): match the local address.
		if hello.Conn != nil {
			if a, ok := hello.Conn.LocalAddr().(*net.TCPAddr); ok {
				name = a.IP.String()
			}
		}
	} else {
		name = strings.ToLower(strings.TrimSuffix(name, "."))
		if s.auto != nil {
			if c := s.auto.Certificate(name); c != nil {
				return c, nil
			}
		}
	}
	if cs := s.byName[name]; len(cs) > 0 {
		return pick(hello, cs), nil
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if cs := s.byName["*"+name[i:]]; len(cs) > 0 {
			return pick(hello, cs), nil
		}
	}
	if s.def == nil {
		return nil, errNoCertificate
	}
	return s.def, nil
}

// challengeConfig is the tls.Config's GetConfigForClient: it answers
// TLS-ALPN-01 validation handshakes, which offer "acme-tls/1" only, for
// a name that uses that challenge, with a config that offers it too and
// serves the challenge's certificate; other handshakes go on with the
// listener's config (one that offers only "acme-tls/1" for another name
// fails there, for want of a common protocol, without a look in storage
// or a log line). It is nil without automatic certificates.
func (s *Store) challengeConfig() func(*tls.ClientHelloInfo) (*tls.Config, error) {
	if s.auto == nil {
		return nil
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{ACMETLS1},
		GetCertificate: s.auto.Challenge,
	}
	return func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == ACMETLS1 &&
			s.auto.HasChallenge(strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))) {
			return cfg, nil
		}
		return nil, nil // base, as it is
	}
}

func pick(hello *tls.ClientHelloInfo, cs []*tls.Certificate) *tls.Certificate {
	if len(cs) == 1 {
		return cs[0]
	}
	for _, c := range cs {
		if hello.SupportsCertificate(c) == nil {
			return c
		}
	}
	return cs[0]
}
