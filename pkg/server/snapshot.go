package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/offloadlb/lb/pkg/policy"

	"github.com/offloadlb/lb/pkg/affinity"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/offloadlb/lb/pkg/accesslog"
	"github.com/offloadlb/lb/pkg/acme"
	"github.com/offloadlb/lb/pkg/admin"
	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/cache"
	"github.com/offloadlb/lb/pkg/compress"
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

// pool is one configured pool as a snapshot runs it: the upstream the
// proxy sends to (balancer pool, transports), its response cache and the
// health monitor that judges its backends.
type pool struct {
	cfg      config.Pool
	upstream *upstream.Group
	cache    *cache.Cache // nil: no [pool.cache]
	monitor  *health.Monitor
	added    []*balancer.Backend // backends that were not in the previous config
}

// plan is a config built and ready to swap in. Nothing in it serves yet.
type plan struct {
	cfg       *config.Config
	snap      *snapshot
	listeners []listenerPlan
	bound     []*boundListener // sockets bound for this plan
	admin     *admin.Server
	newAdmin  bool
	access    *accessLog
	newAccess bool
	keep      map[metrics.Key]bool
	acme      *acme.Plan // never nil; empty without [listener.tls.acme]
	// limiters are the rate limiters of this plan's listeners and routes,
	// by limiterKey: those the running config has with the same key and
	// settings are kept, so that a reload forgets no client's bucket.
	limiters map[string]*policy.Limiter
	// auths are the basic_auth checkers of this plan's routes.
	auths []*policy.BasicAuth
}

// listenerPlan is one listener of a plan: the socket it serves on
// (fresh when the plan bound it, else taken over from the running
// config) and what commit configures it with.
type listenerPlan struct {
	cfg      config.Listener
	listener *boundListener
	fresh    bool
	http     *proxy.Site         // http mode, else nil
	tcp      *l4.Service         // tcp mode, else nil
	term     *tlsterm.Terminator // nil: plaintext
	// connLimit limits new connections per client address at accept; nil
	// for none.
	connLimit *policy.Limiter
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

	p.snap = &snapshot{cfg: cfg, pools: map[string]*pool{}}
	for i := range cfg.Pools {
		pl, err := s.buildPool(&cfg.Pools[i])
		if err != nil {
			return p, err
		}
		p.snap.pools[pl.cfg.Name] = pl
		p.snap.order = append(p.snap.order, pl.cfg.Name)
	}

	claimed := map[string]bool{}
	for _, lc := range cfg.Listeners {
		lp := listenerPlan{cfg: lc}
		if old := s.listeners[lc.Bind]; old != nil && !claimed[lc.Bind] && lc.Bind != "" && !isEphemeral(lc.Bind) {
			lp.listener = old
		} else {
			l, err := bindListener(lc, s.log)
			if err != nil {
				return p, err
			}
			p.bound = append(p.bound, l)
			lp.listener, lp.fresh = l, true
		}
		claimed[lc.Bind] = true
		p.listeners = append(p.listeners, lp)
	}
	// ACME names are planned once every listener is bound: challenges
	// are answered on the listeners' own ports.
	if p.acme, err = s.planACME(p); err != nil {
		return p, err
	}
	for i := range p.listeners {
		lp := &p.listeners[i]
		var auto tlsterm.Automatic
		if set := p.acme.Set(lp.cfg.Name); set != nil {
			auto = set
		}
		if lp.term, err = terminatorFor(lp.cfg, lp.listener.tickets, auto); err != nil {
			return p, err
		}
		lp.http, lp.tcp = s.handlerState(lp.cfg, p, lp.term != nil)
		if lp.term != nil || lp.cfg.Mode == "tcp" {
			// New TLS handshakes, and tcp connections, take a token of
			// the client's own bucket of them at accept.
			if lim := lp.cfg.Limits; lim != nil {
				lp.connLimit = s.limiter(p, lp.cfg.Name, handshakeRoute, &config.Limits{Rate: lim.HandshakeRate, Burst: lim.HandshakeBurst})
			}
		}
	}

	p.admin = s.admin
	if cfg.Global.Admin != adminAddr(s.snap) {
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

func adminAddr(snap *snapshot) string {
	if snap == nil {
		return ""
	}
	return snap.cfg.Global.Admin
}

// isEphemeral reports a bind to port 0, which never names the same
// socket twice.
func isEphemeral(bind string) bool { return strings.HasSuffix(bind, ":0") }

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
	if p.snap != nil {
		for _, pl := range p.snap.pools {
			for i, b := range pl.upstream.Pool.Backends {
				if s.snap == nil || s.snap.pools[pl.cfg.Name] == nil || s.snap.pools[pl.cfg.Name].upstream.Pool.Backend(b.Address) == nil {
					pl.upstream.Transports[i].Close()
				}
			}
		}
	}
}

// buildPool builds one pool, carrying over the state and connections of
// backends the running config already has under the same pool name.
func (s *Server) buildPool(pc *config.Pool) (*pool, error) {
	var old *pool
	if s.snap != nil {
		old = s.snap.pools[pc.Name]
	}
	backends := make([]*balancer.Backend, len(pc.Backends))
	transports := make([]*upstream.Transport, len(pc.Backends))
	var added []*balancer.Backend
	for i, bc := range pc.Backends {
		b := &balancer.Backend{Address: bc.Address, Weight: bc.Weight, Backup: bc.Backup}
		if old != nil {
			if ob := old.upstream.Pool.Backend(bc.Address); ob != nil {
				b.State = ob.State
				transports[i] = old.upstream.Transports[ob.Index]
				transports[i].SetConnectTimeout(pc.ConnectTimeout.Duration)
			}
		}
		if transports[i] == nil {
			transports[i] = upstream.NewTransport(bc.Address, pc.ConnectTimeout.Duration)
			if s.snap != nil {
				added = append(added, b)
			}
		}
		backends[i] = b
	}
	bp, err := balancer.NewPool(pc.Name, pc.Algorithm, backends, pc.MaxConnsPerBackend)
	if err != nil {
		return nil, err
	}
	bp.HashBalance = pc.HashBalance
	if old != nil {
		// Requests of the old config still hold slots of the backends
		// that stay: their releases must wake requests queued here.
		bp.ShareQueue(old.upstream.Pool)
	}
	var sticky *affinity.Sticky
	if sc := pc.Sticky; sc != nil {
		secret := sc.Secret
		if secret == nil {
			secret = s.stickySecret
		}
		var stats *affinity.StickyStats
		if old != nil && old.upstream.Sticky != nil {
			stats = old.upstream.Sticky.Stats
		}
		sticky = affinity.NewSticky(affinity.StickyConfig{
			Cookie: sc.Cookie, MaxAge: sc.MaxAge.Duration, Secure: sc.Secure, HTTPOnly: *sc.HTTPOnly,
			SameSite: sc.SameSite, Domain: sc.Domain, Path: sc.Path,
		}, pc.Name, backends, secret, stats)
	}
	mon := health.NewMonitor(bp, pc.Health, s.log)
	var c *cache.Cache
	if cc := pc.Cache; cc != nil {
		// A reload that leaves [pool.cache] as it was keeps what the
		// cache holds.
		if old != nil && old.cache != nil && old.cfg.Cache != nil && *old.cfg.Cache == *cc {
			c = old.cache
		} else {
			c = cache.New(cc.MaxSize.Bytes, cc.MaxObject.Bytes, cache.Options{
				Heuristic: cc.Heuristic, StoreSetCookie: cc.StoreSetCookie,
				IgnoreClientNoCache: cc.IgnoreClientNoCache, XCache: cc.XCache,
			})
		}
	}
	return &pool{
		cfg:     *pc,
		added:   added,
		monitor: mon,
		cache:   c,
		upstream: &upstream.Group{
			Pool:            bp,
			Transports:      transports,
			Health:          mon,
			Retries:         pc.Retries,
			QueueTimeout:    pc.ConnectTimeout.Duration,
			FinishAborted:   pc.OnClientAbort == "finish",
			ResponseTimeout: pc.ResponseTimeout.Duration,
			Key:             affinity.NewKey(pc.Key.Kind, pc.Key.Name),
			Sticky:          sticky,
			TimeBackends:    pc.Algorithm == balancer.LeastTime,
		},
	}, nil
}

// handlerState builds what a listener's handler serves with under plan
// p: an http listener's *proxy.Site, or a tcp listener's
// *l4.Service (the other is nil). What both modes share is built the same
// way for each: the listener's name, TLS and access log, its pools
// resolved once by name however many routes name them (routes to one pool
// share its counters), and its counters, each recorded in p.keep so that
// the commit keeps its count.
func (s *Server) handlerState(lc config.Listener, p *plan, tlsOn bool) (*proxy.Site, *l4.Service) {
	if lc.Mode == "tcp" {
		var access hclog.Logger // nil: access logging is off
		if p.access != nil && p.access.conns != nil {
			access = p.access.conns
		}
		return nil, s.tcpState(lc, p, tlsOn, access)
	}
	var access *accesslog.Log
	if p.access != nil {
		access = p.access.requests
	}
	return s.httpState(lc, p, tlsOn, access), nil
}

// httpState is handlerState's part for an http listener: routes by host
// and path, request counters by status code, redirect and HSTS.
func (s *Server) httpState(lc config.Listener, p *plan, tlsOn bool, access *accesslog.Log) *proxy.Site {
	st := &proxy.Site{
		Name:         lc.Name,
		TLS:          tlsOn,
		Access:       access,
		TunnelIdle:   lc.IdleTimeout.Duration,
		WriteTimeout: lc.WriteTimeout.Duration,
		ReadTimeout:  lc.ReadTimeout.Duration,
		MaxBody:      lc.MaxRequestBody.Bytes,
		BodyBuffer:   int(lc.BodyBuffer.Bytes),
		Pages:        lc.Pages,
		Rejected:     kept(p, metrics.Key{Listener: lc.Name}, s.metrics.Codes),
	}
	def, routes := resolvePools(lc, func(pool string) *proxy.Dest {
		return &proxy.Dest{
			Up:        p.snap.pools[pool].upstream,
			Cache:     p.snap.pools[pool].cache,
			Codes:     backendCounters(p, lc.Name, pool, s.metrics.Codes),
			NoBackend: kept(p, metrics.Key{Listener: lc.Name, Pool: pool}, s.metrics.Codes),
			Duration:  s.metrics.Duration(lc.Name, pool),
		}
	})
	st.Default = def
	for i, r := range lc.Routes {
		st.Rules = append(st.Rules, proxy.Rule{Host: strings.ToLower(r.Host), PathPrefix: r.PathPrefix, Dest: routes[i], Policy: routePolicy(r)})
	}
	if h := lc.Headers; h != nil {
		st.Headers = policy.NewHeaderRules(headerConfig(h))
	}
	st.Limit = s.limiter(p, lc.Name, "", lc.Limits)
	for i, r := range lc.Routes {
		if r.Limits != nil {
			st.Rules[i].Policy.Limit = s.limiter(p, lc.Name, routeName(r), r.Limits.Limits())
		}
		if a := st.Rules[i].Policy; a != nil && a.Auth != nil {
			a.Auth.Listener, a.Auth.Route = lc.Name, routeName(r)
			p.auths = append(p.auths, a.Auth)
		}
	}
	if lc.RedirectHTTPS != "" {
		if r, err := config.ParseRedirect(lc.RedirectHTTPS); err == nil {
			st.Redirect = &r
		}
	}
	if lc.TLS != nil && lc.TLS.HSTS != "" {
		st.HSTS = []byte(lc.TLS.HSTS)
	}
	if cp := lc.Compress; cp != nil {
		st.Compress = compress.New(compress.Config{Algorithms: cp.Algorithms, Types: cp.Types, MinSize: cp.MinSize.Bytes},
			func(e compress.Encoding) *metrics.Compression { return s.metrics.Compression(lc.Name, e.String()) })
	}
	if !tlsOn && !p.acme.Empty() {
		// Every plaintext http listener answers http-01: the CA
		// connects to port 80, whichever listener has it.
		st.ACME = p.acme
	}
	return st
}

// tcpState is handlerState's part for a tcp listener: routes by server
// name, connection counters, and the PROXY protocol header sent to
// backends.
func (s *Server) tcpState(lc config.Listener, p *plan, tlsOn bool, access hclog.Logger) *l4.Service {
	st := &l4.Service{
		Name:          lc.Name,
		TLS:           tlsOn,
		Access:        access,
		IdleTimeout:   lc.IdleTimeout.Duration,
		WriteTimeout:  lc.WriteTimeout.Duration,
		PeekTimeout:   lc.ReadTimeout.Duration,
		ProxyProtocol: lc.ProxyProtocol,
		Unrouted:      kept(p, metrics.Key{Listener: lc.Name}, s.metrics.TCP),
	}
	def, routes := resolvePools(lc, func(pool string) *l4.Upstream {
		pl := p.snap.pools[pool]
		return &l4.Upstream{
			Pool:           pl.upstream.Pool,
			Health:         pl.monitor,
			Retries:        pl.cfg.Retries,
			ConnectTimeout: pl.cfg.ConnectTimeout.Duration,
			HashClient:     pl.cfg.Algorithm == balancer.Hash,
			Stats:          backendCounters(p, lc.Name, pool, s.metrics.TCP),
			Duration:       s.metrics.TCPDuration(lc.Name, pool),
		}
	})
	st.Default = def
	for i, r := range lc.Routes {
		st.Rules = append(st.Rules, l4.SNIRule{Pattern: strings.ToLower(r.SNI), Upstream: routes[i]})
	}
	return st
}

// routePolicy is what a route does beside choosing a pool: nil for a
// route that only routes.
func routePolicy(r config.Route) *proxy.RoutePolicy {
	if !r.StripPrefix && r.Redirect == "" && len(r.Allow)+len(r.Deny) == 0 && r.Headers == nil && r.Limits == nil && r.BasicAuth == "" {
		return nil
	}
	rp := &proxy.RoutePolicy{Redirect: strings.TrimSuffix(r.Redirect, "/")}
	if r.StripPrefix {
		rp.StripPrefix = r.PathPrefix
	}
	if len(r.Allow)+len(r.Deny) > 0 {
		rp.Access, _ = policy.NewFilter(r.Allow, r.Deny) // validated
	}
	if r.Headers != nil {
		rp.Headers = policy.NewHeaderRules(headerConfig(r.Headers))
	}
	if r.BasicAuth != "" {
		rp.Auth = policy.NewBasicAuth(r.Users, r.BasicAuthRealm)
		rp.Auth.Forward = r.BasicAuthForward
	}
	return rp
}

// limiter returns the rate limiter of a listener's limits (route "") or
// a route's, nil for none: the running config's when it has one with the
// same settings, else a new one.
func (s *Server) limiter(p *plan, listener, route string, lim *config.Limits) *policy.Limiter {
	if lim == nil {
		return nil
	}
	if p.limiters == nil {
		p.limiters = map[string]*policy.Limiter{}
	}
	key := limiterKey(listener, route, lim)
	l := s.limiters[key]
	if l == nil {
		l = policy.NewLimiter(lim.Rate, lim.Burst)
		l.Listener, l.Route = listener, route
	}
	p.limiters[key] = l
	return l
}

// handshakeRoute is the route name of a listener's limiter of new
// connections, which no route can have (route names are hosts and
// paths).
const handshakeRoute = "\x00handshakes"

// limiterKey names a limiter by what it limits and its settings.
func limiterKey(listener, route string, lim *config.Limits) string {
	return fmt.Sprintf("%s\x00%s\x00%g\x00%d", listener, route, lim.Rate, lim.Burst)
}

// routeName is how metrics and logs name a route: its host and path
// prefix ("api.example.com/v1/"), or its server name.
func routeName(r config.Route) string {
	if r.SNI != "" {
		return r.SNI
	}
	return r.Host + r.PathPrefix
}

func headerConfig(h *config.Headers) policy.HeaderConfig {
	return policy.HeaderConfig{RequestSet: h.RequestSet, RequestRemove: h.RequestRemove, ResponseSet: h.ResponseSet, ResponseRemove: h.ResponseRemove}
}

// resolvePools resolves the pools a listener sends to, building what each
// pool is to this listener (a proxy.Dest, an l4.Upstream) once with build,
// however many routes name it: def for the listener's own pool (nil when
// it has none), and one per route in lc.Routes order.
func resolvePools[T any](lc config.Listener, build func(pool string) *T) (def *T, routes []*T) {
	built := map[string]*T{}
	resolve := func(pool string) *T {
		t := built[pool]
		if t == nil {
			t = build(pool)
			built[pool] = t
		}
		return t
	}
	if lc.Pool != "" {
		def = resolve(lc.Pool)
	}
	routes = make([]*T, len(lc.Routes))
	for i, r := range lc.Routes {
		if r.Pool != "" { // a redirecting route has none
			routes[i] = resolve(r.Pool)
		}
	}
	return def, routes
}

// kept returns the counter k names, made by counter on first use, and
// records k in p.keep so that the commit keeps its count.
func kept[C any](p *plan, k metrics.Key, counter func(metrics.Key) C) C {
	p.keep[k] = true
	return counter(k)
}

// backendCounters returns, in backend order, the counter of each backend
// of pool as listener counts it (see kept).
func backendCounters[C any](p *plan, listener, pool string, counter func(metrics.Key) C) []C {
	backends := p.snap.pools[pool].upstream.Pool.Backends
	cs := make([]C, len(backends))
	for i, b := range backends {
		cs[i] = kept(p, metrics.Key{Listener: listener, Pool: pool, Backend: b.Address}, counter)
	}
	return cs
}

// commit swaps a prepared plan in. It cannot fail.
func (s *Server) commit(p *plan, initial bool) {
	old := s.snap
	s.snap = p.snap
	s.limiters = p.limiters
	s.auths = p.auths
	if s.acme != nil {
		// Before the listeners take the new terminators: certificates
		// in storage are loaded here, so that they serve at once.
		s.acme.Commit(p.acme)
	}
	s.acmePlan = p.acme
	if n := p.cfg.Global.MaxBodyMemory.Bytes; n > 0 {
		bodymem.SetLimit(n)
	} else { // a config not from the loader
		bodymem.SetLimit(bodymem.DefaultLimit)
	}
	oldListeners := s.listeners
	s.listeners = map[string]*boundListener{}
	for _, lp := range p.listeners {
		lp.listener.configure(lp.cfg, lp.http, lp.tcp, lp.term, s.metrics)
		lp.listener.connLimit.Store(lp.connLimit)
		s.listeners[lp.listener.key()] = lp.listener
		if lp.fresh && !initial {
			s.startListener(lp.listener)
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
			_ = l.shutdown(ctx) // what is still open at the grace's end is closed, and nothing waits for it
		}()
	}

	if !initial {
		for _, pl := range p.snap.pools {
			pl.monitor.Start()
			for _, b := range pl.added {
				b.StartSlowStart(pl.cfg.Health.SlowStart.Duration)
			}
			if len(pl.added) > 0 && pl.cfg.Health.SlowStart.Duration > 0 {
				pl.upstream.Pool.Refresh()
			}
		}
	}
	if old != nil {
		for name, pl := range old.pools {
			pl.monitor.Stop()
			np := p.snap.pools[name]
			for i, b := range pl.upstream.Pool.Backends {
				if np == nil || np.upstream.Pool.Backend(b.Address) == nil {
					// Removed: requests in flight finish, then its
					// connections close.
					pl.upstream.Transports[i].Close()
					s.log.Info("backend removed: requests in flight finish", "pool", name, "backend", b.Address)
				}
			}
		}
	}
	// The old monitors may have raised or lowered backends after the new
	// pools built their tables; now that they have stopped, catch up.
	for _, pl := range p.snap.pools {
		pl.upstream.Pool.Refresh()
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
		for _, pl := range p.snap.pools {
			nb += len(pl.upstream.Pool.Backends)
		}
		s.log.Info("config reloaded", "listeners", len(p.listeners), "pools", len(p.snap.pools), "backends", nb)
	}
}

// planACME plans the ACME names of p's config. The process's manager is
// made with the first config that has any, and stays to the end; with
// none, the plan is empty.
func (s *Server) planACME(p *plan) (*acme.Plan, error) {
	var specs []acme.Spec
	httpAddr := ""
	for _, lp := range p.listeners {
		if lp.cfg.TLS == nil && lp.cfg.Mode == "http" && httpAddr == "" {
			httpAddr = lp.listener.sock.Addr().String()
		}
	}
	for _, lp := range p.listeners {
		if lp.cfg.TLS == nil || lp.cfg.TLS.ACME == nil {
			continue
		}
		specs = append(specs, acme.Spec{Listener: lp.cfg.Name, ACME: lp.cfg.TLS.ACME,
			TLSALPN: lp.listener.sock.Addr().String(), HTTP: httpAddr})
	}
	if len(specs) > 0 && s.acme == nil {
		s.acme = acme.New(s.log.Named("acme"), acme.Options{Orders: s.metrics.ACMEOrder})
	}
	if s.acme == nil {
		return acme.EmptyPlan(), nil
	}
	return s.acme.Prepare(specs)
}
