// Package tlsterm terminates TLS for listeners: it loads certificate
// chains and keys, picks one per handshake by SNI, and builds the
// tls.Config a listener serves with.
package tlsterm

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"
)

// Store holds a listener's certificates, indexed by the names they are
// valid for. It is immutable once built; a Terminator swaps whole stores.
type Store struct {
	def    *tls.Certificate
	byName map[string][]*tls.Certificate // lower-case DNS name or "*.suffix"
	all    []*tls.Certificate
}

// NewStore indexes certs by their SAN DNS names (or the subject common
// name when a certificate has none). The first certificate is the default,
// served to clients that send no SNI or a name no certificate covers.
func NewStore(certs []*tls.Certificate) (*Store, error) {
	if len(certs) == 0 {
		return nil, fmt.Errorf("tlsterm: no certificate")
	}
	s := &Store{def: certs[0], byName: map[string][]*tls.Certificate{}, all: certs}
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

// Certificates returns every certificate in the store, default first.
func (s *Store) Certificates() []*tls.Certificate { return s.all }

// Get picks the certificate for a ClientHello: an exact name match, then a
// wildcard one level up ("*.example.com" for "www.example.com"), then the
// default. Where several certificates cover the name (an RSA and an ECDSA
// one, say), the first the client supports wins.
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
	}
	if cs := s.byName[name]; len(cs) > 0 {
		return pick(hello, cs), nil
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if cs := s.byName["*"+name[i:]]; len(cs) > 0 {
			return pick(hello, cs), nil
		}
	}
	return s.def, nil
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
