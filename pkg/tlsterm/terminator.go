package tlsterm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/internal/watch"
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

// supportedALPN are the application protocols an http listener serves;
// others configured are not offered.
var supportedALPN = map[string]bool{"h2": true, "http/1.1": true}

// Terminator is the TLS side of one listener: its certificates, client
// CAs and the tls.Config built from them, behind an atomic pointer so
// that files can be read again while handshakes run. Build it with New;
// the zero value is not usable. Its methods are safe for concurrent use.
type Terminator struct {
	cfg     config.TLS
	auto    Automatic // nil: no [listener.tls.acme]
	http    bool
	protos  []string
	tickets *TicketKeys
	cur     atomic.Pointer[state]

	mu        sync.Mutex
	stopWatch context.CancelFunc
}

// state is one loading of a listener's certificate files.
type state struct {
	tls       *tls.Config
	store     *Store
	roots     *x509.CertPool // client CAs; nil without client auth
	ticketGen atomic.Uint64
	// sharedKeys: the ticket keys came from the ticket_keys file, and lb
	// does not rotate them.
	sharedKeys bool
}

// New loads the certificates of a listener's [listener.tls] and builds its
// tls.Config. An http listener offers the ALPN protocols lb serves; a tcp
// listener offers those configured as they are, for its backends to
// speak. tickets are the listener's session ticket keys (nil: a set of
// its own). auto, if not nil, serves the listener's ACME certificates and
// answers TLS-ALPN-01 validation.
func New(c *config.TLS, mode string, tickets *TicketKeys, auto Automatic) (*Terminator, error) {
	if tickets == nil {
		tickets = NewTicketKeys()
	}
	t := &Terminator{cfg: *c, http: mode != "tcp", tickets: tickets, auto: auto}
	if mode == "tcp" {
		t.protos = c.ALPN
	} else {
		for _, p := range c.ALPN {
			if supportedALPN[p] {
				t.protos = append(t.protos, p)
			}
		}
		if len(t.protos) == 0 {
			t.protos = []string{"http/1.1"}
		}
	}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// current returns the state new handshakes use, its session ticket keys
// brought up to date.
func (t *Terminator) current() *state {
	st := t.cur.Load()
	if !st.sharedKeys {
		t.tickets.apply(st.tls, &st.ticketGen)
	}
	return st
}

// Store returns the certificates currently served.
func (t *Terminator) Store() *Store { return t.cur.Load().store }

// Reload reads every certificate, key and client CA again and, if all
// load, makes new handshakes use them; on error the ones in use stay.
func (t *Terminator) Reload() error {
	var certs []*tls.Certificate
	// With ACME, the static certificate is optional.
	if t.auto == nil || t.cfg.Cert != "" || t.cfg.CertPEM != nil {
		first, err := load(t.cfg.Cert, t.cfg.Key, t.cfg.CertPEM, t.cfg.KeyPEM)
		if err != nil {
			return err
		}
		certs = append(certs, first)
	}
	for _, s := range t.cfg.SNI {
		c, err := load(s.Cert, s.Key, nil, nil)
		if err != nil {
			return err
		}
		certs = append(certs, c)
	}
	store, err := NewStore(certs, t.auto)
	if err != nil {
		return err
	}
	st := &state{store: store}
	clientAuth := tls.NoClientCert
	switch t.cfg.ClientAuth {
	case ClientAuthRequest:
		// Asked for, checked after the handshake: a bad certificate is
		// reported to the backend (X-Client-Verify), not refused.
		clientAuth = tls.RequestClientCert
	case ClientAuthRequire:
		clientAuth = tls.RequireAndVerifyClientCert
	}
	if clientAuth != tls.NoClientCert {
		if st.roots, err = LoadCAs(t.cfg.ClientCA); err != nil {
			return err
		}
	}
	minVersion := uint16(tls.VersionTLS12)
	if t.cfg.MinVersion == "1.3" {
		minVersion = tls.VersionTLS13
	}
	st.tls = &tls.Config{
		MinVersion:     minVersion,
		CipherSuites:   cipherSuites,
		NextProtos:     t.protos,
		GetCertificate: store.Get,
		ClientAuth:     clientAuth,
		ClientCAs:      st.roots,
	}
	st.tls.GetConfigForClient = store.challengeConfig()
	if t.cfg.TicketKeys != "" {
		keys, err := config.ReadTicketKeys(t.cfg.TicketKeys)
		if err != nil {
			return fmt.Errorf("tlsterm: ticket keys: %w", err)
		}
		st.tls.SetSessionTicketKeys(keys)
		st.sharedKeys = true
	}
	t.cur.Store(st)
	return nil
}

// LoadCAs reads a PEM bundle of CA certificates.
func LoadCAs(path string) (*x509.CertPool, error) {
	b, err := config.ReadPEM(path)
	if err != nil {
		return nil, fmt.Errorf("tlsterm: client CAs: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tlsterm: client CAs: no PEM certificate in %s", path)
	}
	return pool, nil
}

// Files lists the files the certificates (and shared ticket keys) are
// read from.
func (t *Terminator) Files() []string {
	var files []string
	if t.cfg.CertPEM == nil && t.cfg.Cert != "" {
		files = append(files, t.cfg.Cert, t.cfg.Key)
	}
	for _, s := range t.cfg.SNI {
		files = append(files, s.Cert, s.Key)
	}
	if t.cfg.ClientAuth == ClientAuthRequest || t.cfg.ClientAuth == ClientAuthRequire {
		files = append(files, t.cfg.ClientCA)
	}
	if t.cfg.TicketKeys != "" {
		files = append(files, t.cfg.TicketKeys)
	}
	return files
}

// Watch reads the certificate files again whenever they change (a
// renewal by certbot, an operator copying new ones in), until Close. New
// handshakes use new certificates within about a second; connections
// already open keep theirs. A pair that does not load is logged and the
// certificates in use stay.
func (t *Terminator) Watch(listener string, log hclog.Logger) {
	files := t.Files()
	if len(files) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopWatch != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.stopWatch = cancel
	opts := watch.Options{Debounce: 500 * time.Millisecond, Poll: 10 * time.Second, What: "certificate files"}
	err := watch.Files(ctx, files, opts, log, func() {
		if err := t.Reload(); err != nil {
			log.Error("certificate files changed but do not load; still serving the previous certificates", "listener", listener, "error", err)
			return
		}
		for _, c := range t.Store().Certificates() {
			log.Info("certificate reloaded", "listener", listener, "subject", c.Leaf.Subject.String(),
				"serial", strings.ToUpper(c.Leaf.SerialNumber.Text(16)), "not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		if t.cfg.TicketKeys != "" {
			log.Info("session ticket keys reloaded", "listener", listener, "file", t.cfg.TicketKeys)
		}
	})
	if err != nil {
		log.Warn("cannot watch the certificate files; a reload (SIGHUP) reads them again", "listener", listener, "error", err)
	}
}

// Close stops watching the certificate files.
func (t *Terminator) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopWatch != nil {
		t.stopWatch()
	}
}

// conn describes a client connection whose handshake with this state's
// config finished.
func (st *state) conn(t *Terminator, tc *tls.Conn, cs *tls.ConnectionState) *Conn {
	c := &Conn{Conn: tc, Version: cs.Version, Proto: cs.NegotiatedProtocol}
	c.ClientVerify, c.ClientSubject = verifyClient(t.cfg.ClientAuth, st.roots, cs, time.Now())
	return c
}

func load(certFile, keyFile string, certPEM, keyPEM []byte) (*tls.Certificate, error) {
	var err error
	if certPEM == nil {
		if certPEM, err = config.ReadPEM(certFile); err != nil {
			return nil, fmt.Errorf("tlsterm: %w", err)
		}
		if keyPEM, err = config.ReadPEM(keyFile); err != nil {
			return nil, fmt.Errorf("tlsterm: %w", err)
		}
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsterm: load %s with %s: %w", certFile, keyFile, err)
	}
	return &c, nil
}
