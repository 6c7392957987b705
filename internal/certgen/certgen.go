// Package certgen makes certificates in memory: the demo's self-signed
// certificate, and the CAs and leaf certificates the tests use.
package certgen

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// KeyType selects the key algorithm of a generated certificate; the zero
// value is ECDSA.
type KeyType int

// Key types.
const (
	ECDSA KeyType = iota // P-256
	RSA                  // 2048 bits
)

// Pair is a certificate (with its chain) and private key, PEM-encoded.
// It is not changed once made, so goroutines may share it.
type Pair struct {
	CertPEM []byte
	KeyPEM  []byte
	Cert    *x509.Certificate
	key     crypto.Signer
}

// Options describe a certificate to make. The zero value makes an ECDSA
// leaf certificate with no names, valid for a year.
type Options struct {
	Names    []string // DNS names and IP addresses (SANs); the first is the CN
	Key      KeyType
	IsCA     bool
	NotAfter time.Time // zero: one year from now
}

// New makes a certificate signed by parent, or self-signed when parent is
// nil. The chain in CertPEM is the leaf followed by parent's chain.
func New(o Options, parent *Pair) (*Pair, error) {
	var key crypto.Signer
	var err error
	switch o.Key {
	case RSA:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	notAfter := o.NotAfter
	if notAfter.IsZero() {
		notAfter = time.Now().Add(365 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  o.IsCA,
	}
	if len(o.Names) > 0 {
		tmpl.Subject = pkix.Name{CommonName: o.Names[0]}
	}
	if o.IsCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
		if tmpl.Subject.CommonName == "" {
			tmpl.Subject.CommonName = "lb test CA"
		}
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		if o.Key == RSA {
			tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		for _, n := range o.Names {
			if ip := net.ParseIP(n); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, n)
			}
		}
	}
	signer, issuer := key, tmpl
	if parent != nil {
		signer, issuer = parent.key, parent.Cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	p := &Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		Cert:    cert,
		key:     key,
	}
	if parent != nil && !parent.Cert.IsCA {
		p.CertPEM = append(p.CertPEM, parent.CertPEM...)
	}
	return p, nil
}

// SelfSigned makes a self-signed ECDSA P-256 server certificate for names.
func SelfSigned(names ...string) (*Pair, error) {
	return New(Options{Names: names}, nil)
}

// Write saves the pair as dir/name.pem and dir/name.key and returns the
// two paths.
func (p *Pair) Write(dir, name string) (certFile, keyFile string, err error) {
	certFile = filepath.Join(dir, name+".pem")
	keyFile = filepath.Join(dir, name+".key")
	if err = os.WriteFile(certFile, p.CertPEM, 0o644); err != nil {
		return "", "", err
	}
	if err = os.WriteFile(keyFile, p.KeyPEM, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}
