package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/pkg/config"
)

// Name is one domain lb gets a certificate for, with its live state. Its
// methods are safe for concurrent use.
type Name struct {
	Domain     string
	key        string // settingsKey it was built from
	storageDir string
	spec       Spec
	m          *Manager
	log        hclog.Logger

	ctx    context.Context
	cancel context.CancelFunc

	// cfg is the certmagic config the name was built with; cfgs holds
	// configs for certificates of other lifetimes when renew_before is
	// set (certmagic's renewal window is a ratio of the lifetime).
	cfg  *certmagic.Config
	cfgs sync.Map // time.Duration -> *certmagic.Config

	cert atomic.Pointer[tls.Certificate] // nil: none yet

	mu      sync.Mutex
	state   string
	lastErr string
	next    time.Time
}

// newName builds a name's certmagic config; nothing starts until start.
func (m *Manager) newName(domain, key string, sp Spec) (*Name, error) {
	n := &Name{Domain: domain, key: key, storageDir: sp.ACME.Storage, spec: sp, m: m,
		log: m.log.With("domain", domain), state: StateObtaining}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	cfg, err := n.build(0)
	if err != nil {
		return nil, err
	}
	n.cfg = cfg
	return n, nil
}

// build makes a certmagic config for the name; lifetime, when known and
// renew_before is set, turns renew_before into certmagic's ratio.
func (n *Name) build(lifetime time.Duration) (*certmagic.Config, error) {
	a := n.spec.ACME
	roots, err := n.m.directoryRoots(a.DirectoryCA)
	if err != nil {
		return nil, err
	}
	keyType := certmagic.P256
	if a.KeyType == "rsa-2048" {
		keyType = certmagic.RSA2048
	}
	cfg := certmagic.New(n.m.cache, certmagic.Config{
		RenewalWindowRatio: renewalRatio(a.RenewBeforeDur, lifetime),
		Storage:            n.m.storage(a.Storage),
		KeySource:          certmagic.StandardKeyGenerator{KeyType: keyType},
		OnEvent:            n.event,
		Logger:             zapLogger(n.m.log.Named("acme"), n),
	})
	tmpl := certmagic.ACMEIssuer{
		CA:                      a.Directory,
		Email:                   a.Email,
		Agreed:                  true,
		ExternalAccount:         eab(a),
		Profile:                 a.Profile,
		TrustedRoots:            roots,
		DisableTLSALPNChallenge: !slices.Contains(a.Challenges, config.ChallengeTLSALPN),
		DisableHTTPChallenge:    !slices.Contains(a.Challenges, config.ChallengeHTTP) || n.spec.HTTP == "",
		Logger:                  cfg.Logger,
	}
	// certmagic's solvers listen on the challenge ports unless something
	// already does: pointing them at lb's own listeners (on every
	// interface, so that a listener on one address also counts) makes
	// them find the port taken and leave the answering to lb, which reads
	// the pending challenge from memory or storage.
	if tmpl.AltTLSALPNPort, err = hostPort(n.spec.TLSALPN); err != nil {
		return nil, err
	}
	if n.spec.HTTP != "" {
		if tmpl.AltHTTPPort, err = hostPort(n.spec.HTTP); err != nil {
			return nil, err
		}
	}
	cfg.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(cfg, tmpl)}
	return cfg, nil
}

// renewalRatio is certmagic's renewal window (remaining:total life) for
// renew_before: 0 (certmagic's default, a third) when it is not set or
// the lifetime is not known yet; at most a half, so that a renew_before
// longer than the certificate's life renews it halfway, not at once and
// again after every order.
func renewalRatio(before, lifetime time.Duration) float64 {
	if before <= 0 || lifetime <= 0 {
		return 0
	}
	return min(float64(before)/float64(lifetime), 0.5)
}

// config returns the config the name was built with.
func (n *Name) config() *certmagic.Config { return n.cfg }

func (n *Name) issuer() *certmagic.ACMEIssuer {
	return n.cfg.Issuers[0].(*certmagic.ACMEIssuer)
}

// configFor returns the config that renews leaf: with renew_before set,
// one whose ratio matches leaf's lifetime.
func (n *Name) configFor(leaf *x509.Certificate) *certmagic.Config {
	if n.spec.ACME.RenewBeforeDur <= 0 || leaf == nil {
		return n.cfg
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if c, ok := n.cfgs.Load(life); ok {
		return c.(*certmagic.Config)
	}
	n.m.mu.Lock()
	c, err := n.build(life)
	n.m.mu.Unlock()
	if err != nil {
		return n.cfg
	}
	actual, _ := n.cfgs.LoadOrStore(life, c)
	return actual.(*certmagic.Config)
}

// Attempts to get a name managed (its certificate loaded from storage
// or ordered) are retried this long after a failure, then every last
// interval, as certmagic spaces the retries of renewals.
var retryIntervals = []time.Duration{time.Minute, 2 * time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 30 * time.Minute}

// start loads the name's certificate from storage, so that it serves at
// once, and has it ordered in the background if there is none; from then
// on certmagic renews it. The name's goroutine (counted in the manager's
// wait group, which Stop waits for) retries what fails, with backoff,
// until the name is managed or its context is cancelled: an order the CA
// refused, a CA that cannot be reached, a storage folder lb cannot write
// (which certmagic's own background orders give up on for good). Between
// attempts it holds no lock in storage, so that another instance that
// can reach the CA may order meanwhile.
func (n *Name) start() {
	n.load()
	n.m.wg.Add(1)
	go func() {
		defer n.m.wg.Done()
		for i := 0; ; i++ {
			err := n.manage()
			if err == nil || n.ctx.Err() != nil {
				return
			}
			n.fail(err)
			d := retryIntervals[min(i, len(retryIntervals)-1)]
			n.retryIn(d)
			n.log.Warn("cannot get the ACME certificate; retrying", "in", d, "error", err)
			select {
			case <-n.ctx.Done():
				return
			case <-time.After(d):
			}
		}
	}()
}

// load serves the name's certificate from storage, if it is there.
func (n *Name) load() {
	c, err := n.cfg.CacheManagedCertificate(n.ctx, n.Domain)
	switch {
	case err == nil:
		n.refresh()
		n.log.Info("ACME certificate loaded from storage", "not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339),
			"serial", serial(c.Leaf))
	case errors.Is(err, fs.ErrNotExist):
		n.log.Info("no ACME certificate in storage yet: ordering one in the background")
	default:
		n.log.Warn("cannot load the ACME certificate from storage; ordering one", "error", err)
	}
}

// manage has certmagic manage the name, which renews it from then on:
// with no certificate yet, one is ordered first, with certmagic's own
// retries, under the name's lock in storage. (Not certmagic's
// synchronous ManageSync: without an email anywhere it asks for one on
// the terminal.)
func (n *Name) manage() error {
	if n.cert.Load() == nil {
		if err := n.cfg.ObtainCertAsync(n.ctx, n.Domain); err != nil {
			return err
		}
		// Loaded as certmagic's own: what keeps it from being read is
		// an error to retry (certmagic's ManageAsync only logs it).
		if _, err := n.cfg.CacheManagedCertificate(n.ctx, n.Domain); err != nil {
			return err
		}
	}
	if err := n.cfg.ManageAsync(n.ctx, []string{n.Domain}); err != nil {
		return err
	}
	n.refresh()
	return nil
}

// refresh picks up the newest certificate certmagic holds for the name.
func (n *Name) refresh() {
	var best *certmagic.Certificate
	for _, c := range n.m.cache.AllMatchingCertificates(n.Domain) {
		if c.Leaf == nil || !slices.Contains(c.Names, n.Domain) {
			continue
		}
		if best == nil || c.Leaf.NotAfter.After(best.Leaf.NotAfter) {
			best = &c
		}
	}
	if best == nil {
		return
	}
	cur := n.cert.Load()
	if cur != nil && cur.Leaf.Equal(best.Leaf) {
		return
	}
	tc := best.Certificate // a copy: certmagic's stays its own
	n.cert.Store(&tc)
	n.mu.Lock()
	if n.state == StateObtaining || n.state == StateRenewing || n.state == StateFailing {
		n.state = StateValid
		n.next = time.Time{}
	}
	n.mu.Unlock()
	if cur != nil {
		n.log.Info("ACME certificate replaced", "serial", serial(tc.Leaf), "not_after", tc.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
}

// event follows certmagic's events for the name: orders starting,
// succeeding and failing. It runs on certmagic's goroutines and returns
// at once.
func (n *Name) event(_ context.Context, event string, data map[string]any) error {
	if id, _ := data["identifier"].(string); id != "" && !strings.EqualFold(id, n.Domain) {
		return nil
	}
	switch event {
	case "cert_obtaining":
		n.mu.Lock()
		if renewal, _ := data["renewal"].(bool); renewal && n.cert.Load() != nil {
			n.state = StateRenewing
		} else if n.state != StateFailing {
			n.state = StateObtaining
		}
		n.next = time.Time{}
		n.mu.Unlock()
	case "cert_obtained":
		n.m.countOrder("success")
		n.mu.Lock()
		n.lastErr = ""
		n.mu.Unlock()
		// certmagic caches it right after this event; the refresh
		// loop serves it within a second.
	case "cert_failed":
		n.m.countOrder("failure")
		err, _ := data["error"].(error)
		n.fail(err)
	}
	return nil
}

// fail records a failed order; a retry, if one is planned, sets the next
// attempt (see retryIn).
func (n *Name) fail(err error) {
	msg := "unknown error"
	if err != nil {
		msg = err.Error()
	}
	n.mu.Lock()
	n.state = StateFailing
	n.lastErr = msg
	n.mu.Unlock()
}

// retryIn notes certmagic's next attempt after a failure.
func (n *Name) retryIn(d time.Duration) {
	n.mu.Lock()
	n.next = time.Now().Add(d)
	n.mu.Unlock()
}

func (m *Manager) countOrder(result string) {
	if m.opts.Orders != nil {
		m.opts.Orders(result)
	}
}

func (n *Name) status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := Status{Domain: n.Domain, State: n.state, Cert: n.cert.Load(), LastError: n.lastErr, NextAttempt: n.next}
	if st.Cert != nil && n.state == StateValid {
		// Valid: the next attempt is the renewal, by the configured
		// window (the CA's renewal information may bring it forward).
		leaf := st.Cert.Leaf
		ratio := n.configFor(leaf).RenewalWindowRatio
		if ratio == 0 {
			ratio = certmagic.DefaultRenewalWindowRatio
		}
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		st.NextAttempt = leaf.NotAfter.Add(-time.Duration(float64(life) * ratio))
	}
	return st
}

func serial(leaf *x509.Certificate) string {
	if leaf == nil {
		return ""
	}
	return strings.ToUpper(leaf.SerialNumber.Text(16))
}

// String names the name for logs.
func (n *Name) String() string { return fmt.Sprintf("acme name %s", n.Domain) }
