package server

import (
	"context"
	"fmt"
	"github.com/offloadlb/lb/pkg/cache"
	"time"

	"github.com/offloadlb/lb/pkg/admin"
	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/health"
	"github.com/offloadlb/lb/pkg/l4"
	"github.com/offloadlb/lb/pkg/metrics"
	"github.com/offloadlb/lb/pkg/proxy"
	"github.com/offloadlb/lb/pkg/tlsterm"
	"github.com/offloadlb/lb/pkg/upstream"
)

// snapshot is one config's pools, built and immutable.
type snapshot struct {
	cfg   *config.Config
	pools map[string]*pool
	order []string // pool names in config order
}

type pool struct {
	cfg   config.Pool
	up    *upstream.Group
	mon   *health.Monitor
	added []*balancer.Backend // backends that were not in the previous config
}

// plan is a config built and ready to swap in. Nothing in it serves yet.
type plan struct {
	cfg       *config.Config
	rt        *snapshot
	listeners []listenerPlan
	bound     []*listener // sockets bound for this plan
	admin     *admin.Server
	newAdmin  bool
	access    *accessLog
	newAccess bool
	keep      map[metrics.Key]bool
}

type listenerPlan struct {
	cfg      config.Listener
	l        *listener
	fresh    bool
	state    *proxy.Listener // http mode
	tcpState *l4.Listener    // tcp mode
	term     *tlsterm.Terminator
}

// prepare builds everything cfg describes, reusing what the running
// config has (sockets, backend states, pooled connections). On error it
// releases what it built; the running config is untouched either way.
func (s *Server) prepare(cfg *config.Config) (p *plan, err error) {
	p = &plan{cfg: cfg, keep: map[metrics.Key]bool{}}
	defer func() {
		if err != nil {
			p.abandon(s)
		}
	}()

	p.access = s.access
	if s.access == nil || !s.access.same(cfg.Global) {
		if p.access, err = openAccessLog(cfg.Global); err != nil {
			return p, err
		}
		p.newAccess = true
	}

	p.rt = &snapshot{cfg: cfg, pools: map[string]*pool{}}
	for i := range cfg.Pools {
		pl, err := s.buildPool(&cfg.Pools[i])
		if err != nil {
			return p, err
		}
		p.rt.pools[pl.cfg.Name] = pl
		p.rt.order = append(p.rt.order, pl.cfg.Name)
	}

	claimed := map[string]bool{}
	for _, lc := range cfg.Listeners {
		lp := listenerPlan{cfg: lc}
		if old := s.listeners[lc.Bind]; old != nil && !claimed[lc.Bind] && lc.Bind != "" && !isEphemeral(lc.Bind) {
			lp.l = old
		} else {
			l, err := bindListener(lc, s.log)
			if err != nil {
				return p, err
			}
			p.bound = append(p.bound, l)
			lp.l, lp.fresh = l, true
		}
		claimed[lc.Bind] = true
		if lp.term, err = terminatorFor(lc, lp.l.tickets); err != nil {
			return p, err
		}
		if lc.Mode == "tcp" {
			lp.tcpState = s.tcpListenerState(lc, p, lp.term != nil)
		} else {
			lp.state = s.listenerState(lc, p, lp.term != nil)
		}
		p.listeners = append(p.listeners, lp)
	}

	p.admin = s.admin
	if cfg.Global.Admin != adminAddr(s.rt) {
		p.admin = nil
		if cfg.Global.Admin != "" {
			opts := admin.Options{Pprof: cfg.Global.Pprof, Gatherer: s.metrics.Gatherer(),
				Token: string(cfg.Global.AdminTokenValue), Hosts: cfg.Global.AdminHosts}
			if p.admin, err = admin.New(cfg.Global.Admin, s, opts, s.log.Named("admin")); err != nil {
				return p, fmt.Errorf("admin server: %w", err)
			}
		}
		p.newAdmin = true
	} else if s.admin != nil {
		s.admin.SetPprof(cfg.Global.Pprof)
	}
	return p, nil
}

func adminAddr(rt *snapshot) string {
	if rt == nil {
		return ""
	}
	return rt.cfg.Global.Admin
}

// isEphemeral reports a bind to port 0, which never names the same
// socket twice.
func isEphemeral(bind string) bool {
	return len(bind) >= 2 && bind[len(bind)-2:] == ":0"
}

// abandon releases what a failed prepare built.
func (p *plan) abandon(s *Server) {
	for _, l := range p.bound {
		l.sock.Close()
	}
	if p.newAccess && p.access != nil {
		p.access.Close()
	}
	if p.newAdmin && p.admin != nil {
		p.admin.Close()
	}
	if p.rt != nil {
		for _, pl := range p.rt.pools {
			for i, b := range pl.up.Pool.Backends {
				if s.rt == nil || s.rt.pools[pl.cfg.Name] == nil || s.rt.pools[pl.cfg.Name].up.Pool.Backend(b.Address) == nil {
					pl.up.Transports[i].Close()
				}
			}
		}
	}
}

// buildPool builds one pool, carrying over the state and connections of
// backends the running config already has under the same pool name.
func (s *Server) buildPool(pc *config.Pool) (*pool, error) {
	var old *pool
	if s.rt != nil {
		old = s.rt.pools[pc.Name]
	}
	backends := make([]*balancer.Backend, len(pc.Backends))
	transports := make([]*upstream.Transport, len(pc.Backends))
	var added []*balancer.Backend
	for i, bc := range pc.Backends {
		b := &balancer.Backend{Address: bc.Address, Weight: bc.Weight}
		if old != nil {
			if ob := old.up.Pool.Backend(bc.Address); ob != nil {
				b.State = ob.State
				transports[i] = old.up.Transports[ob.Index]
				transports[i].SetConnectTimeout(pc.ConnectTimeout.Duration)
			}
		}
		if transports[i] == nil {
			transports[i] = upstream.NewTransport(bc.Address, pc.ConnectTimeout.Duration)
			if s.rt != nil {
				added = append(added, b)
			}
		}
		backends[i] = b
	}
	bp, err := balancer.NewPool(pc.Name, pc.Algorithm, backends, pc.MaxConnsPerBackend)
	if err != nil {
		return nil, err
	}
	if old != nil {
		// Requests of the old config still hold slots of the backends
		// that stay: their releases must wake requests queued here.
		bp.ShareQueue(old.up.Pool)
	}
	mon := health.NewMonitor(bp, pc.Health, s.log)
	var c *cache.Cache
	if cc := pc.Cache; cc != nil {
		// A reload that leaves [pool.cache] as it was keeps what the
		// cache holds.
		if old != nil && old.up.Cache != nil && old.cfg.Cache != nil && *old.cfg.Cache == *cc {
			c = old.up.Cache
		} else {
			c = cache.New(cc.MaxSize.Bytes, cc.MaxObject.Bytes, cache.Options{
				Heuristic: cc.Heuristic, StoreSetCookie: cc.StoreSetCookie,
				IgnoreClientNoCache: cc.IgnoreClientNoCache, XCache: cc.XCache,
			})
		}
	}
	return &pool{
		cfg:   *pc,
		added: added,
		mon:   mon,
		up: &upstream.Group{
			Pool:            bp,
			Transports:      transports,
			Health:          mon,
			Retries:         pc.Retries,
			QueueTimeout:    pc.ConnectTimeout.Duration,
			ResponseTimeout: pc.ResponseTimeout.Duration,
			Cache:           c,
		},
	}, nil
}

// listenerState builds what a listener's handler needs, with its request
// counters resolved.
func (s *Server) listenerState(lc config.Listener, p *plan, tlsOn bool) *proxy.Listener {
	st := &proxy.Listener{Name: lc.Name, TLS: tlsOn, TunnelIdle: lc.IdleTimeout.Duration, WriteTimeout: lc.WriteTimeout.Duration}
	rejected := metrics.Key{Listener: lc.Name}
	st.Rejected = s.metrics.Codes(rejected)
	p.keep[rejected] = true
	if p.access != nil {
		st.Access = p.access.log
	}
	targets := map[string]*proxy.Target{}
	target := func(name string) *proxy.Target {
		if t := targets[name]; t != nil {
			return t
		}
		pl := p.rt.pools[name]
		t := &proxy.Target{Up: pl.up, Duration: s.metrics.Duration(lc.Name, name)}
		k := metrics.Key{Listener: lc.Name, Pool: name}
		t.NoBackend = s.metrics.Codes(k)
		p.keep[k] = true
		for _, b := range pl.up.Pool.Backends {
			k := metrics.Key{Listener: lc.Name, Pool: name, Backend: b.Address}
			t.Codes = append(t.Codes, s.metrics.Codes(k))
			p.keep[k] = true
		}
		targets[name] = t
		return t
	}
	if lc.Pool != "" {
		st.Default = target(lc.Pool)
	}
	for _, r := range lc.Routes {
		st.Routes = append(st.Routes, proxy.Route{Host: toLower(r.Host), PathPrefix: r.PathPrefix, Target: target(r.Pool)})
	}
	if lc.RedirectHTTPS != "" {
		if r, err := config.ParseRedirect(lc.RedirectHTTPS); err == nil {
			st.Redirect = &r
		}
	}
	if lc.TLS != nil && lc.TLS.HSTS != "" {
		st.HSTS = []byte(lc.TLS.HSTS)
	}
	return st
}

// tcpListenerState builds what a tcp listener's handler needs.
func (s *Server) tcpListenerState(lc config.Listener, p *plan, tlsOn bool) *l4.Listener {
	st := &l4.Listener{
		Name:          lc.Name,
		TLS:           tlsOn,
		ProxyProtocol: lc.ProxyProtocol,
		IdleTimeout:   lc.IdleTimeout.Duration,
		WriteTimeout:  lc.WriteTimeout.Duration,
		PeekTimeout:   lc.ReadTimeout.Duration,
	}
	unrouted := metrics.Key{Listener: lc.Name}
	st.Unrouted = s.metrics.TCP(unrouted)
	p.keep[unrouted] = true
	if p.access != nil {
		st.Access = p.access.log
	}
	targets := map[string]*l4.Target{}
	target := func(name string) *l4.Target {
		if t := targets[name]; t != nil {
			return t
		}
		pl := p.rt.pools[name]
		t := &l4.Target{
			Pool:           pl.up.Pool,
			Health:         pl.mon,
			Retries:        pl.cfg.Retries,
			ConnectTimeout: pl.cfg.ConnectTimeout.Duration,
			Duration:       s.metrics.TCPDuration(lc.Name, name),
		}
		for _, b := range pl.up.Pool.Backends {
			k := metrics.Key{Listener: lc.Name, Pool: name, Backend: b.Address}
			t.Stats = append(t.Stats, s.metrics.TCP(k))
			p.keep[k] = true
		}
		targets[name] = t
		return t
	}
	if lc.Pool != "" {
		st.Default = target(lc.Pool)
	}
	for _, r := range lc.Routes {
		st.Routes = append(st.Routes, l4.Route{SNI: toLower(r.SNI), Target: target(r.Pool)})
	}
	return st
}

func toLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// commit swaps a prepared plan in. It cannot fail.
func (s *Server) commit(p *plan, initial bool) {
	old := s.rt
	s.rt = p.rt
	oldListeners := s.listeners
	s.listeners = map[string]*listener{}
	for _, lp := range p.listeners {
		lp.l.configure(lp.cfg, lp.state, lp.tcpState, lp.term, s.metrics)
		s.listeners[lp.l.key()] = lp.l
		if lp.fresh && !initial {
			s.startListener(lp.l)
		}
	}
	grace := p.cfg.Global.ShutdownGrace.Duration
	for key, l := range oldListeners {
		if s.listeners[key] == l {
			continue
		}
		s.log.Info("listener removed: no new connections, open ones finish", "listener", l.name.Load(), "address", l.sock.Addr().String())
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), grace)
			defer cancel()
			l.shutdown(ctx) //nolint:errcheck
		}()
	}

	if !initial {
		for _, pl := range p.rt.pools {
			pl.mon.Start()
			for _, b := range pl.added {
				b.StartSlowStart(pl.cfg.Health.SlowStart.Duration)
			}
			if len(pl.added) > 0 && pl.cfg.Health.SlowStart.Duration > 0 {
				pl.up.Pool.Refresh()
			}
		}
	}
	if old != nil {
		for name, pl := range old.pools {
			pl.mon.Stop()
			np := p.rt.pools[name]
			for i, b := range pl.up.Pool.Backends {
				if np == nil || np.up.Pool.Backend(b.Address) == nil {
					// Removed: requests in flight finish, then its
					// connections close.
					pl.up.Transports[i].Close()
					s.log.Info("backend removed: requests in flight finish", "pool", name, "backend", b.Address)
				}
			}
		}
	}
	// The old monitors may have raised or lowered backends after the new
	// pools built their tables; now that they have stopped, catch up.
	for _, pl := range p.rt.pools {
		pl.up.Pool.Refresh()
	}

	if p.newAdmin {
		if s.admin != nil {
			s.admin.Close()
		}
		s.admin = p.admin
		if s.admin != nil && !initial {
			s.admin.Start()
			s.log.Info("admin server listening", "address", s.admin.Addr())
		}
	} else if s.admin != nil {
		// A new token or host list applies from this reload on; the
		// server and its connections stay.
		s.admin.SetAccess(string(p.cfg.Global.AdminTokenValue), p.cfg.Global.AdminHosts)
	}
	if p.newAccess {
		prev := s.access
		s.access = p.access
		if prev != nil {
			// Requests that started on the old config may still log.
			time.AfterFunc(grace+time.Second, prev.Close)
		}
	}
	s.metrics.Retain(p.keep)
	if !initial {
		nb := 0
		for _, pl := range p.rt.pools {
			nb += len(pl.up.Pool.Backends)
		}
		s.log.Info("config reloaded", "listeners", len(p.listeners), "pools", len(p.rt.pools), "backends", nb)
	}
}
