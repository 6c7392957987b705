package tlsterm

import (
	"crypto/tls"
	"fmt"
	"os"

	"go.uber.org/atomic"

	"github.com/offloadlb/lb/pkg/config"
)

// cipherSuites are the TLS 1.2 suites offered: forward-secret (ECDHE) and
// AEAD only. TLS 1.3 suites are all AEAD and not configurable in Go.
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// supportedALPN are the application protocols lb can serve; others
// configured are not offered.
var supportedALPN = map[string]bool{"http/1.1": true}

// Terminator is the TLS side of one listener: its certificate store,
// behind an atomic pointer so that certificates can be replaced while
// handshakes run, and the tls.Config that reads it.
type Terminator struct {
	cfg   config.TLS
	store atomic.Pointer[Store]
	tls   *tls.Config
}

// New loads the certificates of a listener's [listener.tls] and builds its
// tls.Config. An http listener offers the ALPN protocols lb serves; a tcp
// listener offers those configured as they are, for its backends to
// speak.
func New(c *config.TLS, mode string) (*Terminator, error) {
	t := &Terminator{cfg: *c}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	var protos []string
	if mode == "tcp" {
		protos = c.ALPN
	} else {
		for _, p := range c.ALPN {
			if supportedALPN[p] {
				protos = append(protos, p)
			}
		}
		if len(protos) == 0 {
			protos = []string{"http/1.1"}
		}
	}
	minVersion := uint16(tls.VersionTLS12)
	if c.MinVersion == "1.3" {
		minVersion = tls.VersionTLS13
	}
	t.tls = &tls.Config{
		MinVersion:     minVersion,
		CipherSuites:   cipherSuites,
		NextProtos:     protos,
		GetCertificate: t.getCertificate,
	}
	return t, nil
}

// Config returns the tls.Config to serve with. Wrap listeners with
// tls.NewListener(ln, t.Config()) rather than letting a server clone it,
// so that certificate reloads reach new handshakes.
func (t *Terminator) Config() *tls.Config { return t.tls }

// Store returns the certificates currently served.
func (t *Terminator) Store() *Store { return t.store.Load() }

func (t *Terminator) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return t.store.Load().Get(hello)
}

// Reload reads every certificate and key again and, if all load, swaps
// them in; on error the certificates in use stay.
func (t *Terminator) Reload() error {
	var certs []*tls.Certificate
	first, err := load(t.cfg.Cert, t.cfg.Key, t.cfg.CertPEM, t.cfg.KeyPEM)
	if err != nil {
		return err
	}
	certs = append(certs, first)
	for _, s := range t.cfg.SNI {
		c, err := load(s.Cert, s.Key, nil, nil)
		if err != nil {
			return err
		}
		certs = append(certs, c)
	}
	st, err := NewStore(certs)
	if err != nil {
		return err
	}
	t.store.Store(st)
	return nil
}

func load(certFile, keyFile string, certPEM, keyPEM []byte) (*tls.Certificate, error) {
	var err error
	if certPEM == nil {
		if certPEM, err = os.ReadFile(certFile); err != nil {
			return nil, fmt.Errorf("tlsterm: %w", err)
		}
		if keyPEM, err = os.ReadFile(keyFile); err != nil {
			return nil, fmt.Errorf("tlsterm: %w", err)
		}
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsterm: load %s with %s: %w", certFile, keyFile, err)
	}
	return &c, nil
}
