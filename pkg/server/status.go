package server

import (
	"crypto/x509"
	"sort"
	"strings"
	"time"

	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/config"

	"github.com/offloadlb/lb/internal/version"
	"github.com/offloadlb/lb/pkg/acme"
	"github.com/offloadlb/lb/pkg/admin"
	"github.com/offloadlb/lb/pkg/metrics"
	"github.com/offloadlb/lb/pkg/tlsterm"
)

// Status reports the live state of every listener, pool and backend.
func (s *Server) Status() admin.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	st := admin.Status{Version: version.String(), Started: s.started, Now: now}
	st.Config.File = s.snap.cfg.File
	if !s.reloadAt.IsZero() {
		t := s.reloadAt
		st.Config.LastReload = &t
		st.Config.LastReloadError = s.reloadErr
	}
	totals := s.metrics.ListenerTotals()
	for _, l := range s.sortedListeners() {
		lc := l.config()
		ls := admin.ListenerStatus{
			Name:               lc.Name,
			Address:            l.sock.Addr().String(),
			Mode:               lc.Mode,
			TLS:                lc.TLS != nil,
			Pool:               lc.Pool,
			ActiveConnections:  l.sock.Active(),
			Requests:           totals[lc.Name],
			Allow:              lc.Allow,
			Deny:               lc.Deny,
			Denied:             l.denied.Load(),
			LimitedConnections: l.limited.Load(),
			Limits:             s.limitsStatus(lc.Name, "", lc.Limits),
		}
		for _, r := range lc.Routes {
			ls.Routes = append(ls.Routes, admin.RouteStatus{
				Host: r.Host, PathPrefix: r.PathPrefix, SNI: r.SNI, Pool: r.Pool,
				StripPrefix: r.StripPrefix, Redirect: r.Redirect, Allow: r.Allow, Deny: r.Deny, HeaderRules: r.Headers != nil,
				Limits: s.limitsStatus(lc.Name, routeName(r), r.Limits.Limits()),
			})
		}
		if cp := lc.Compress; cp != nil {
			ls.Compress = &admin.CompressStatus{Algorithms: cp.Algorithms, Types: cp.Types, MinSize: cp.MinSize.Bytes}
		}
		if term := l.term.Load(); term != nil {
			for _, c := range term.Store().Certificates() {
				ls.Certificates = append(ls.Certificates, certStatus(c.Leaf, now))
			}
		}
		if set := s.acmeSet(lc.Name); set != nil {
			for _, a := range set.Status() {
				as := admin.ACMEStatus{Domain: a.Domain, State: a.State, LastError: a.LastError}
				if a.Cert != nil {
					cs := certStatus(a.Cert.Leaf, now)
					as.Certificate = &cs
				}
				if !a.NextAttempt.IsZero() {
					t := a.NextAttempt
					as.NextAttempt = &t
				}
				ls.ACME = append(ls.ACME, as)
			}
		}
		st.Listeners = append(st.Listeners, ls)
	}
	for _, name := range s.snap.order {
		up := s.snap.pools[name].upstream
		p := up.Pool
		ps := admin.PoolStatus{
			Name: p.Name, Algorithm: p.Algorithm, Usable: p.Usable(),
			HashKey: up.Key.String(), HashBalance: p.HashBalance, BackupsServing: p.BackupsServing(),
		}
		if up.Sticky != nil {
			ps.StickyCookie = up.Sticky.Cookie
		}
		var total uint64
		for _, b := range p.Backends {
			total += b.Requests()
		}
		if c := s.snap.pools[name].cache; c != nil {
			st := c.Stats()
			ps.Cache = &st
		}
		for _, b := range p.Backends {
			bs := admin.BackendStatus{
				Address:           b.Address,
				Weight:            b.Weight,
				EffectiveWeight:   b.EffectiveWeight(now),
				Up:                b.Up(),
				SlowStart:         b.SlowStarting(),
				ActiveConnections: b.Active(),
				Requests:          b.Requests(),
				Failures:          b.Failures(),
				LatencySeconds:    b.LatencySum().Seconds(),
				LatencyEWMA:       b.LatencyEWMA(now).Seconds(),
				Backup:            b.Backup,
				LastError:         b.LastError(),
				Since:             b.Changed(),
			}
			switch {
			case b.Drained() && b.Active() > 0:
				bs.State = "draining" // requests still in flight
			case b.Drained():
				bs.State = "drained"
			case b.Up():
				bs.State = "up"
			default:
				bs.State = "down"
			}
			if t := b.LastCheck(); !t.IsZero() {
				bs.LastCheck = &t
			}
			if total > 0 {
				bs.Share = float64(b.Requests()) / float64(total)
			}
			ps.Backends = append(ps.Backends, bs)
		}
		st.Pools = append(st.Pools, ps)
	}
	return st
}

func certStatus(leaf *x509.Certificate, now time.Time) admin.CertificateStatus {
	return admin.CertificateStatus{
		Subject:   leaf.Subject.String(),
		Names:     tlsterm.Names(leaf),
		Issuer:    leaf.Issuer.String(),
		Serial:    strings.ToUpper(leaf.SerialNumber.Text(16)),
		NotAfter:  leaf.NotAfter,
		ExpiresIn: leaf.NotAfter.Sub(now).Seconds(),
	}
}

// acmeSet returns the ACME names a listener serves, nil for none. s.mu
// is held.
func (s *Server) acmeSet(listener string) *acme.Set {
	if s.acmePlan == nil {
		return nil
	}
	return s.acmePlan.Set(listener)
}

// sortedListeners returns the listeners in config order. s.mu is held.
func (s *Server) sortedListeners() []*boundListener {
	ls := make([]*boundListener, 0, len(s.listeners))
	for _, l := range s.listeners {
		ls = append(ls, l)
	}
	order := map[string]int{}
	for i, lc := range s.snap.cfg.Listeners {
		order[lc.Name] = i
	}
	sort.Slice(ls, func(i, j int) bool { return order[ls[i].name.Load()] < order[ls[j].name.Load()] })
	return ls
}

// Gauges reports the scrape-time metrics.
func (s *Server) Gauges(g *metrics.Gauges) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, name := range s.snap.order {
		up := s.snap.pools[name].upstream
		now := time.Now()
		for _, b := range up.Pool.Backends {
			g.BackendUp(name, b.Address, b.Up())
			g.BackendActive(name, b.Address, b.Active())
			if up.Pool.Algorithm == balancer.LeastTime {
				g.BackendLatencyEWMA(name, b.Address, b.LatencyEWMA(now).Seconds())
			}
		}
		if up.Pool.HasBackups() {
			g.PoolBackupsServing(name, up.Pool.BackupsServing())
		}
		if st := up.Sticky; st != nil {
			g.StickyCookies(name, "new", st.Stats.New.Load())
			g.StickyCookies(name, "moved", st.Stats.Moved.Load())
		}
		if c := s.snap.pools[name].cache; c != nil {
			st := c.Stats()
			for r, n := range st.Results {
				g.CacheRequests(name, strings.ToLower(r), n)
			}
			g.CacheSize(name, st.Bytes, st.Objects)
		}
	}
	for _, a := range s.auths {
		g.AuthFailures(a.Listener, a.Route, "unauthorized", a.Failures.Load())
		g.AuthFailures(a.Listener, a.Route, "limited", a.Limited.Load())
	}
	for _, lim := range s.limiters {
		if lim.Route == handshakeRoute {
			continue // counted as connections refused
		}
		g.RequestsLimited(lim.Listener, lim.Route, lim.Limited.Load())
	}
	for _, l := range s.sortedListeners() {
		lc := l.config()
		g.ConnectionsActive(lc.Name, l.sock.Active())
		g.ConnectionsRefused(lc.Name, "per_client", l.sock.Refused())
		g.ConnectionsRefused(lc.Name, "denied", l.denied.Load())
		g.ConnectionsRefused(lc.Name, "rate_limited", l.limited.Load())
		if term := l.term.Load(); term != nil {
			for _, c := range term.Store().Certificates() {
				g.CertificateExpiry(lc.Name, c.Leaf.Subject.String(), c.Leaf.NotAfter)
			}
		}
		if set := s.acmeSet(lc.Name); set != nil {
			for _, a := range set.Status() {
				for _, state := range acme.States {
					g.ACMECertificate(lc.Name, a.Domain, state, state == a.State)
				}
				// The served certificate, which follows every renewal.
				if a.Cert != nil {
					// ACME certificates often have no subject: the
					// name stands for it then.
					subject := a.Cert.Leaf.Subject.String()
					if subject == "" {
						subject = a.Domain
					}
					g.CertificateExpiry(lc.Name, subject, a.Cert.Leaf.NotAfter)
				}
			}
		}
	}
	g.AccessLogDropped(s.access.Dropped())
}

// limitsStatus describes a listener's or route's limits, nil for none.
// s.mu is held.
func (s *Server) limitsStatus(listener, route string, lim *config.Limits) *admin.LimitsStatus {
	if lim == nil {
		return nil
	}
	st := &admin.LimitsStatus{Rate: lim.Rate, Burst: lim.Burst}
	if l := s.limiters[limiterKey(listener, route, lim)]; l != nil {
		st.LimitedRequests = l.Limited.Load()
	}
	return st
}
