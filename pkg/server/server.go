// Package server runs one lb configuration: it builds pools, health
// monitors and listeners from a config.Config, serves them, and shuts them
// down gracefully.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/pkg/admin"
	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/health"
	"github.com/offloadlb/lb/pkg/proxy"
	"github.com/offloadlb/lb/pkg/tlsterm"
)

// Server is a running lb. Build it with New, then Start it; Shutdown stops
// it.
type Server struct {
	log        hclog.Logger
	cfg        *config.Config
	access     hclog.Logger
	accessFile io.Closer

	upstreams map[string]*proxy.Upstream
	order     []string // pool names in config order
	monitors  []*health.Monitor
	listeners []*listener
	admin     *admin.Server

	started time.Time
	stop    chan struct{}
	wg      sync.WaitGroup
}

// New builds everything a config describes and binds every listening
// address, so that a port in use is reported before anything runs. Nothing
// serves until Start.
func New(cfg *config.Config, log hclog.Logger) (_ *Server, err error) {
	s := &Server{
		log:       log,
		cfg:       cfg,
		upstreams: map[string]*proxy.Upstream{},
		stop:      make(chan struct{}),
	}
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	if s.access, s.accessFile, err = accessLogger(cfg.Global); err != nil {
		return nil, err
	}
	for i := range cfg.Pools {
		up, err := s.buildUpstream(&cfg.Pools[i])
		if err != nil {
			return nil, err
		}
		s.upstreams[cfg.Pools[i].Name] = up
		s.order = append(s.order, cfg.Pools[i].Name)
	}
	for i := range cfg.Listeners {
		if err := s.buildListener(cfg.Listeners[i]); err != nil {
			return nil, err
		}
	}
	if cfg.Global.Admin != "" {
		if s.admin, err = admin.New(cfg.Global.Admin, s, admin.Options{Pprof: cfg.Global.Pprof}, log.Named("admin")); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) buildUpstream(pc *config.Pool) (*proxy.Upstream, error) {
	backends := make([]*balancer.Backend, len(pc.Backends))
	transports := make([]*proxy.Transport, len(pc.Backends))
	for i, b := range pc.Backends {
		backends[i] = &balancer.Backend{Address: b.Address, Weight: b.Weight}
		transports[i] = proxy.NewTransport(b.Address, pc.ConnectTimeout.Duration)
	}
	pool, err := balancer.NewPool(pc.Name, pc.Algorithm, backends, pc.MaxConnsPerBackend)
	if err != nil {
		return nil, err
	}
	mon := health.NewMonitor(pool, pc.Health, s.log)
	s.monitors = append(s.monitors, mon)
	return &proxy.Upstream{
		Pool:            pool,
		Transports:      transports,
		Health:          mon,
		Retries:         pc.Retries,
		QueueTimeout:    pc.ConnectTimeout.Duration,
		ResponseTimeout: pc.ResponseTimeout.Duration,
	}, nil
}

func (s *Server) buildListener(lc config.Listener) error {
	state := &proxy.Listener{Name: lc.Name, TLS: lc.TLS != nil}
	if lc.Pool != "" {
		state.Default = s.upstreams[lc.Pool]
	}
	for _, r := range lc.Routes {
		state.Routes = append(state.Routes, proxy.Route{
			Host:       toLower(r.Host),
			PathPrefix: r.PathPrefix,
			Upstream:   s.upstreams[r.Pool],
		})
	}
	if lc.RedirectHTTPS != "" {
		r, err := config.ParseRedirect(lc.RedirectHTTPS)
		if err != nil {
			return err
		}
		state.Redirect = &r
	}
	var term *tlsterm.Terminator
	if lc.TLS != nil {
		var err error
		if term, err = tlsterm.New(lc.TLS); err != nil {
			return fmt.Errorf("listener %q: %w", lc.Name, err)
		}
		if lc.TLS.HSTS != "" {
			state.HSTS = []byte(lc.TLS.HSTS)
		}
	}
	l, err := newListener(lc, state, term, s.log, s.access)
	if err != nil {
		return err
	}
	s.listeners = append(s.listeners, l)
	return nil
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

// Start runs health checks, listeners and the admin server.
func (s *Server) Start() {
	s.started = time.Now()
	for _, m := range s.monitors {
		m.Start()
	}
	for _, l := range s.listeners {
		scheme := "http"
		if l.term != nil {
			scheme = "https"
		}
		s.log.Info("listening", "listener", l.cfg.Name, "address", l.ln.Addr().String(), "scheme", scheme, "pool", l.cfg.Pool)
		go l.serve()
	}
	if s.admin != nil {
		s.log.Info("admin server listening", "address", s.admin.Addr())
		s.admin.Start()
	}
	s.wg.Add(1)
	go s.janitor()
}

// janitor closes backend connections idle too long to be reused.
func (s *Server) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			for _, up := range s.upstreams {
				up.CloseIdle(now)
			}
		}
	}
}

// Shutdown stops accepting connections, lets requests in flight finish
// until ctx expires, then stops health checks and the admin server. It
// returns ctx's error if requests were still running when it expired.
func (s *Server) Shutdown(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(s.listeners))
	for i, l := range s.listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.shutdown(ctx)
		}()
	}
	wg.Wait()
	close(s.stop)
	s.wg.Wait()
	s.closeAll()
	return errors.Join(errs...)
}

// closeAll releases what New built.
func (s *Server) closeAll() {
	for _, m := range s.monitors {
		m.Stop()
	}
	for _, up := range s.upstreams {
		up.Close()
	}
	for _, l := range s.listeners {
		l.ln.Close()
	}
	if s.admin != nil {
		s.admin.Close()
	}
	if s.accessFile != nil {
		s.accessFile.Close()
	}
}

// Addrs returns the bound address of each listener, by name (useful when
// a config binds port 0).
func (s *Server) Addrs() map[string]string {
	m := map[string]string{}
	for _, l := range s.listeners {
		m[l.cfg.Name] = l.ln.Addr().String()
	}
	return m
}

// AdminAddr is the admin server's bound address, "" when disabled.
func (s *Server) AdminAddr() string {
	if s.admin == nil {
		return ""
	}
	return s.admin.Addr()
}

// accessLogger opens the access log the config names: nil when off.
func accessLogger(g config.Global) (hclog.Logger, io.Closer, error) {
	var out io.Writer
	var closer io.Closer
	switch g.AccessLog {
	case "":
		return nil, nil, nil
	case "stdout":
		out = os.Stdout
	case "stderr":
		out = os.Stderr
	default:
		f, err := os.OpenFile(g.AccessLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("access log: %w", err)
		}
		out, closer = f, f
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "access",
		Level:      hclog.Info,
		Output:     out,
		JSONFormat: g.LogFormat == "json",
	}), closer, nil
}
