// Package acme gets and renews lb's automatic certificates from an ACME CA
// (RFC 8555), with certmagic doing the protocol, the storage and its
// locks, retries and renewal information (ARI, RFC 9773).
//
// One Manager serves the whole process and outlives reloads: a name whose
// settings stay the same keeps its certificate, its state and any order
// under way across a reload, so that a reload never orders a certificate
// lb already has. Each listener sees its names through a Set, which the
// listener's TLS side (pkg/tlsterm) asks for certificates and TLS-ALPN-01
// answers; plaintext http listeners ask the Plan for HTTP-01 answers.
package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/go-hclog"
	"github.com/mholt/acmez/v3/acme"

	"github.com/offloadlb/lb/pkg/config"
)

// States of a name, as /status.json and lb_acme_certificates{state} give
// them.
const (
	StateValid     = "valid"     // a certificate is served and not yet due for renewal
	StateObtaining = "obtaining" // no certificate yet: ordering one, or waiting for the lock
	StateRenewing  = "renewing"  // a certificate is served and a new one is being ordered
	StateFailing   = "failing"   // the last order failed; it is retried with backoff
)

// States lists every state, in the order metrics give them.
var States = []string{StateValid, StateObtaining, StateRenewing, StateFailing}

// CheckIntervalEnv names the environment variable that sets how often
// certificates are checked for renewal (a Go duration; default 1m). Tests
// with certificates that live for minutes shorten it; certmagic renews at
// once a certificate that expires within five checks.
const CheckIntervalEnv = "LB_ACME_CHECK_INTERVAL"

// DefaultCheckInterval is how often certificates are checked for renewal.
const DefaultCheckInterval = time.Minute

// Options adjust a Manager.
type Options struct {
	// Orders, if set, is told of every finished order: "success" or
	// "failure".
	Orders func(result string)
	// CheckInterval is how often certificates are checked for renewal;
	// 0 for $LB_ACME_CHECK_INTERVAL or DefaultCheckInterval.
	CheckInterval time.Duration
}

// Manager gets, renews and serves the ACME certificates of every listener
// of a process. Build it with New; Stop it at shutdown, which releases
// the locks it holds in storage. Its methods are safe for concurrent use.
type Manager struct {
	log   hclog.Logger
	opts  Options
	cache *certmagic.Cache

	mu       sync.Mutex
	names    map[string]*Name                  // the committed names, by domain
	storages map[string]*certmagic.FileStorage // by folder: one per folder, as certmagic expects
	roots    map[string]*x509.CertPool         // directory_ca pools, by file
	stop     chan struct{}
	done     chan struct{}
	wg       sync.WaitGroup // the names' goroutines (Name.start)
	stopped  bool
	current  atomic.Pointer[Plan]
}

// New returns a Manager; it starts certmagic's renewal checks, which do
// nothing until names are committed.
func New(log hclog.Logger, opts Options) *Manager {
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = DefaultCheckInterval
		if v := os.Getenv(CheckIntervalEnv); v != "" {
			if d, err := time.ParseDuration(v); err == nil && d > 0 {
				opts.CheckInterval = d
			} else {
				log.Warn("ignoring "+CheckIntervalEnv+": not a positive duration", "value", v)
			}
		}
	}
	m := &Manager{
		log:      log,
		opts:     opts,
		names:    map[string]*Name{},
		storages: map[string]*certmagic.FileStorage{},
		roots:    map[string]*x509.CertPool{},
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   m.configForCert,
		RenewCheckInterval: opts.CheckInterval,
		Logger:             zapLogger(log, nil),
	})
	go m.refreshLoop()
	return m
}

// Spec is one listener's [listener.tls.acme] as a plan needs it: the
// table, and where lb answers challenges.
type Spec struct {
	Listener string
	ACME     *config.ACME
	// TLSALPN is the listener's bound address: TLS-ALPN-01 is answered
	// by its handshakes.
	TLSALPN string
	// HTTP is the bound address of a plaintext http listener, "" when
	// there is none (http-01 is then not used).
	HTTP string
}

// Plan is the names a config asks for, built by Prepare and put in force
// by Commit. Names whose settings did not change are the running ones.
type Plan struct {
	m     *Manager
	sets  map[string]*Set  // by listener
	names map[string]*Name // by domain
	fresh []*Name          // names to start at commit
}

// Set is what one listener serves of a plan: its names' certificates and
// TLS-ALPN-01 answers. It is immutable; its names' state is live.
type Set struct {
	plan     *Plan
	Listener string
	names    map[string]*Name
	order    []*Name
}

// Prepare builds the names specs ask for, reusing the running ones whose
// settings are unchanged; nothing starts until Commit, and a plan that is
// not committed is simply dropped.
func (m *Manager) Prepare(specs []Spec) (*Plan, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := &Plan{m: m, sets: map[string]*Set{}, names: map[string]*Name{}}
	for _, sp := range specs {
		set := &Set{plan: p, Listener: sp.Listener, names: map[string]*Name{}}
		key := settingsKey(sp)
		for _, d := range sp.ACME.Domains {
			n := p.names[d]
			if n == nil {
				if old := m.names[d]; old != nil && old.key == key {
					n = old
				} else {
					var err error
					if n, err = m.newName(d, key, sp); err != nil {
						return nil, fmt.Errorf("acme: listener %q: %w", sp.Listener, err)
					}
					p.fresh = append(p.fresh, n)
				}
				p.names[d] = n
			}
			set.names[d] = n
			set.order = append(set.order, n)
		}
		p.sets[sp.Listener] = set
	}
	return p, nil
}

// EmptyPlan is the plan of a config without [listener.tls.acme].
func EmptyPlan() *Plan { return &Plan{sets: map[string]*Set{}, names: map[string]*Name{}} }

// Set returns what listener serves of the plan, nil when it has no
// [listener.tls.acme].
func (p *Plan) Set(listener string) *Set {
	if s := p.sets[listener]; s != nil {
		return s
	}
	return nil
}

// Empty reports whether the plan manages no name.
func (p *Plan) Empty() bool { return len(p.names) == 0 }

// Commit puts a plan in force: certificates already in storage are loaded
// before it returns, so that they serve at once; names without one are
// ordered in the background; names the plan no longer has stop being
// renewed (their files stay in storage).
func (m *Manager) Commit(p *Plan) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	var gone []certmagic.SubjectIssuer
	for d, old := range m.names {
		if p.names[d] == old {
			continue
		}
		old.cancel()
		if p.names[d] == nil {
			for _, iss := range old.cfg.Issuers {
				gone = append(gone, certmagic.SubjectIssuer{Subject: d, IssuerKey: iss.IssuerKey()})
			}
			m.log.Info("ACME name no longer configured: it is not renewed, its files stay in storage", "domain", d)
		}
	}
	if len(gone) > 0 {
		m.cache.RemoveManaged(gone)
	}
	m.names = p.names
	m.current.Store(p)
	for _, n := range p.fresh {
		n.start()
	}
}

// Stop ends renewals and orders under way and releases the locks this
// process holds in storage, so that another instance can take over at
// once. It waits for certmagic's maintenance to end.
func (m *Manager) Stop() {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	m.stopped = true
	for _, n := range m.names {
		n.cancel()
	}
	m.mu.Unlock()
	close(m.stop)
	<-m.done
	m.wg.Wait() // no order writes to storage after Stop
	m.cache.Stop()
	certmagic.CleanUpOwnLocks(context.Background(), zapLogger(m.log, nil))
}

// configForCert tells certmagic's maintenance which config renews a
// certificate: that of the name it is for.
func (m *Manager) configForCert(c certmagic.Certificate) (*certmagic.Config, error) {
	m.mu.Lock()
	var n *Name
	for _, name := range c.Names {
		if n = m.names[strings.ToLower(name)]; n != nil {
			break
		}
	}
	m.mu.Unlock()
	if n == nil {
		return nil, fmt.Errorf("acme: no configured name for certificate %v", c.Names)
	}
	return n.configFor(c.Leaf), nil
}

// refreshLoop picks up, every second, the certificates certmagic holds
// for each name: after an order, a renewal, or a renewal by another
// instance sharing storage. Handshakes then read one atomic pointer.
func (m *Manager) refreshLoop() {
	defer close(m.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.mu.Lock()
			names := make([]*Name, 0, len(m.names))
			for _, n := range m.names {
				names = append(names, n)
			}
			m.mu.Unlock()
			for _, n := range names {
				n.refresh()
			}
		}
	}
}

// storage returns the one FileStorage of a folder.
func (m *Manager) storage(dir string) *certmagic.FileStorage {
	fs := m.storages[dir]
	if fs == nil {
		fs = &certmagic.FileStorage{Path: dir}
		m.storages[dir] = fs
	}
	return fs
}

func (m *Manager) directoryRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	if p := m.roots[file]; p != nil {
		return p, nil
	}
	b, err := config.ReadPEM(file)
	if err != nil {
		return nil, fmt.Errorf("directory_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("directory_ca: no PEM certificate in %s", file)
	}
	m.roots[file] = pool
	return pool, nil
}

// settingsKey is what a name's certmagic config is built from: a name
// whose key is unchanged across a reload is kept as it runs.
func settingsKey(sp Spec) string {
	a := sp.ACME
	return strings.Join([]string{a.Email, a.Directory, a.DirectoryCA, a.Storage, strings.Join(a.Challenges, ","),
		a.KeyType, a.RenewBefore, a.EABKID, a.EABHMAC, a.Profile, sp.TLSALPN, sp.HTTP}, "\x00")
}

// HTTPChallenge answers an ACME http-01 validation request (a GET of
// /.well-known/acme-challenge/TOKEN) for host, from this process's
// pending challenges or, for an order another instance sharing the
// storage placed, from storage. ok is false when no pending challenge
// matches: the request is then served as any other. Only the names of
// the config are answered for: instances that share storage share their
// names, and a request for any other host costs no look in storage.
func (p *Plan) HTTPChallenge(host, path string) (keyAuth []byte, ok bool) {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	n := p.names[strings.TrimSuffix(strings.ToLower(h), ".")]
	if n == nil {
		return nil, false
	}
	iss := n.issuer()
	if iss.DisableHTTPChallenge {
		return nil, false
	}
	req := &http.Request{Method: http.MethodGet, Host: h, URL: &url.URL{Path: path}, Header: http.Header{}}
	rec := &recorder{header: http.Header{}}
	if iss.HandleHTTPChallenge(rec, req.WithContext(context.Background())) {
		return rec.body, true
	}
	return nil, false
}

// recorder is the http.ResponseWriter certmagic writes an http-01 answer
// to; the proxy sends what it holds.
type recorder struct {
	header http.Header
	body   []byte
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(int)             {}
func (r *recorder) Write(b []byte) (int, error) { r.body = append(r.body, b...); return len(b), nil }

// Certificate returns the certificate served for name (lower-case, no
// final dot), nil when name is not one of the set's or has none yet.
func (s *Set) Certificate(name string) *tls.Certificate {
	if n := s.names[name]; n != nil {
		return n.cert.Load()
	}
	return nil
}

// Challenge answers a TLS-ALPN-01 validation handshake (RFC 8737): the
// certificate that proves control of hello.ServerName, from this
// process's pending challenges or, for an order another instance sharing
// the storage placed, from storage. Only the set's own names that use
// tls-alpn-01 are answered for (HasChallenge tells which): another name
// fails the handshake before anything looks in storage or logs.
func (s *Set) Challenge(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	n := s.names[strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))]
	if n == nil || n.issuer().DisableTLSALPNChallenge {
		return nil, errNoChallenge
	}
	return n.config().GetCertificate(hello)
}

// HasChallenge reports whether a TLS-ALPN-01 handshake for name
// (lower-case, no final dot) may be answered: name is one of the set's
// and uses tls-alpn-01.
func (s *Set) HasChallenge(name string) bool {
	n := s.names[name]
	return n != nil && !n.issuer().DisableTLSALPNChallenge
}

// errNoChallenge fails a TLS-ALPN-01 handshake for a name lb does not
// answer for.
var errNoChallenge = errors.New("acme: no tls-alpn-01 challenge for this name")

// Status describes one name as /status.json gives it.
type Status struct {
	Domain      string
	State       string
	Cert        *tls.Certificate // nil: none yet
	LastError   string
	NextAttempt time.Time // zero: none planned
}

// Status describes the set's names, in config order.
func (s *Set) Status() []Status {
	out := make([]Status, 0, len(s.order))
	for _, n := range s.order {
		out = append(out, n.status())
	}
	return out
}

// hostPort returns the port of a bound address.
func hostPort(addr string) (int, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(port)
}

// eab builds the External Account Binding, nil without one.
func eab(a *config.ACME) *acme.EAB {
	if a.EABKID == "" {
		return nil
	}
	return &acme.EAB{KeyID: a.EABKID, MACKey: a.EABHMAC}
}
