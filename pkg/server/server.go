// Package server runs lb: it builds pools, health monitors and listeners
// from a config.Config, serves them, swaps in new configs without losing
// requests, and shuts down gracefully.
package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/offloadlb/lb/pkg/policy"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/pkg/acme"
	"github.com/offloadlb/lb/pkg/admin"
	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/metrics"
	"github.com/offloadlb/lb/pkg/tlsterm"
)

// Server is a running lb. Build it with New (the zero value is not
// usable), Start it; Reload swaps in a new config; Shutdown stops it. Its
// methods are safe for concurrent use.
type Server struct {
	log     hclog.Logger
	metrics *metrics.Registry

	// mu serialises New's setup, Reload, Shutdown and the status reads
	// of the fields below.
	mu        sync.Mutex
	snap      *snapshot
	listeners map[string]*boundListener // by bind address
	admin     *admin.Server
	access    *accessLog
	// acme gets and renews ACME certificates; nil until a config has
	// [listener.tls.acme]. It outlives reloads.
	acme      *acme.Manager
	acmePlan  *acme.Plan // the committed one; nil before the first
	started   time.Time
	reloadAt  time.Time
	reloadErr string
	stopped   bool

	// Reloader, if set, is what POST /reload calls: it reads the config
	// file again and applies it.
	Reloader func() error

	stop chan struct{}
	wg   sync.WaitGroup

	// shutdownOnce runs Shutdown's work once; later calls wait for it and
	// return its result.
	shutdownOnce sync.Once
	shutdownErr  error
	// stickySecret signs the sticky cookies of pools without a
	// secret_file: made at start, kept across reloads.
	stickySecret []byte
	// limiters are the running config's rate limiters (see plan), and
	// auths its basic_auth checkers.
	limiters map[string]*policy.Limiter
	auths    []*policy.BasicAuth
}

// New builds everything a config describes and binds every listening
// address, so that a port in use is reported before anything runs. Nothing
// serves until Start.
func New(cfg *config.Config, log hclog.Logger) (*Server, error) {
	s := &Server{
		log:          log,
		listeners:    map[string]*boundListener{},
		stop:         make(chan struct{}),
		stickySecret: make([]byte, 32),
	}
	rand.Read(s.stickySecret)
	s.metrics = metrics.New(s)
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.prepare(cfg)
	if err != nil {
		return nil, err
	}
	s.commit(p, true)
	return s, nil
}

// Start runs health checks, listeners and the admin server.
func (s *Server) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started = time.Now()
	for _, pl := range s.snap.pools {
		pl.monitor.Start()
	}
	for _, l := range s.listeners {
		s.startListener(l)
	}
	if s.admin != nil {
		s.admin.Start()
		s.log.Info("admin server listening", "address", s.admin.Addr())
	}
	s.wg.Add(1)
	go s.janitor()
}

func (s *Server) startListener(l *boundListener) {
	scheme := "http"
	if l.term.Load() != nil {
		scheme = "https"
	}
	l.mu.Lock()
	pool := l.cfg.Pool
	l.mu.Unlock()
	s.log.Info("listening", "listener", l.name.Load(), "address", l.sock.Addr().String(), "scheme", scheme, "pool", pool)
	go l.serve()
}

// Reload applies a new config: it builds everything first, and only if
// all of it could be built swaps it in; otherwise the running config keeps
// serving and the error says why. Requests in flight finish on the config
// they started with; keep-alive connections stay open; backends that stay
// keep their health state, counters and pooled connections; removed
// backends finish their requests.
func (s *Server) Reload(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("server: shutting down")
	}
	p, err := s.prepare(cfg)
	if err == nil {
		s.commit(p, false)
	}
	s.noteReload(err)
	return err
}

// NoteReloadFailure records a reload that failed before it reached the
// server (a config that did not parse).
func (s *Server) NoteReloadFailure(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noteReload(err)
}

func (s *Server) noteReload(err error) {
	s.reloadAt = time.Now()
	s.metrics.Reload(err == nil)
	if err != nil {
		s.reloadErr = err.Error()
	} else {
		s.reloadErr = ""
	}
}

// ReloadFromSource asks the Server's Reloader to reload, for POST /reload.
func (s *Server) ReloadFromSource() error {
	if s.Reloader == nil {
		return errors.New("reloading is not set up")
	}
	return s.Reloader()
}

// janitor closes backend connections idle too long to be reused, and
// gives memory back once lb goes quiet (memoryTrimmer).
func (s *Server) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	mem := newMemoryTrimmer()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.mu.Lock()
			snap := s.snap
			s.mu.Unlock()
			for _, pl := range snap.pools {
				pl.upstream.CloseIdle(now)
			}
			mem.tick()
		}
	}
}

// Shutdown stops accepting connections, lets requests in flight finish
// until ctx expires, then stops health checks and the admin server. It
// returns ctx's error if requests were still running when it expired.
// Only the first call does this: later or concurrent ones (a second
// signal, say) wait for it to finish and return its result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() { s.shutdownErr = s.shutdown(ctx) })
	return s.shutdownErr
}

func (s *Server) shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.stopped = true
	listeners := make([]*boundListener, 0, len(s.listeners))
	for _, l := range s.listeners {
		listeners = append(listeners, l)
	}
	s.mu.Unlock()

	var wg sync.WaitGroup
	errs := make([]error, len(listeners))
	for i, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.shutdown(ctx)
		}()
	}
	wg.Wait()
	close(s.stop)
	s.wg.Wait()

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pl := range s.snap.pools {
		pl.monitor.Stop()
		pl.upstream.Close()
	}
	if s.acme != nil {
		// Releases the locks held in storage, so that an instance
		// sharing it takes over at once.
		s.acme.Stop()
	}
	if s.admin != nil {
		s.admin.Close()
	}
	if s.access != nil {
		s.access.Close()
	}
	return errors.Join(errs...)
}

// Addrs returns the bound address of each listener, by name (useful when
// a config binds port 0).
func (s *Server) Addrs() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]string{}
	for _, l := range s.listeners {
		m[l.name.Load()] = l.sock.Addr().String()
	}
	return m
}

// AdminAddr is the admin server's bound address, "" when disabled.
func (s *Server) AdminAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.admin == nil {
		return ""
	}
	return s.admin.Addr()
}

// SetBackendDrained drains or enables one backend, as POST
// /pools/{pool}/backends/{address}/drain and /enable do.
func (s *Server) SetBackendDrained(pool, addr string, drained bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	pl := s.snap.pools[pool]
	if pl == nil {
		return fmt.Errorf("%w: no pool %q", admin.ErrNotFound, pool)
	}
	b := pl.upstream.Pool.Backend(addr)
	if b == nil {
		return fmt.Errorf("%w: pool %q has no backend %q", admin.ErrNotFound, pool, addr)
	}
	if b.SetDrained(drained) {
		pl.upstream.Pool.Refresh()
		if drained {
			s.log.Info("backend drained: no new requests, requests in flight finish", "pool", pool, "backend", addr)
		} else {
			b.StartSlowStart(pl.cfg.Health.SlowStart.Duration)
			s.log.Info("backend enabled", "pool", pool, "backend", addr)
		}
	}
	return nil
}

// PurgeCache removes url, or everything, from a pool's cache.
func (s *Server) PurgeCache(pool, url string) (int, error) {
	s.mu.Lock()
	pl := s.snap.pools[pool]
	s.mu.Unlock()
	if pl == nil {
		return 0, fmt.Errorf("%w: no pool %q", admin.ErrNotFound, pool)
	}
	c := pl.cache
	if c == nil {
		return 0, fmt.Errorf("%w: pool %q has no [pool.cache]", admin.ErrNotFound, pool)
	}
	if url == "" {
		n := c.PurgeAll()
		s.log.Info("cache purged", "pool", pool, "urls", n)
		return n, nil
	}
	n, err := c.PurgeURL(url)
	if err != nil || n == 0 {
		return 0, err
	}
	s.log.Info("cache purged", "pool", pool, "url", url, "keys", n)
	return n, nil
}

// terminatorFor builds a listener's TLS side, nil for plaintext; auto
// serves its ACME certificates (nil: none).
func terminatorFor(lc config.Listener, tickets *tlsterm.TicketKeys, auto tlsterm.Automatic) (*tlsterm.Terminator, error) {
	if lc.TLS == nil {
		return nil, nil
	}
	t, err := tlsterm.New(lc.TLS, lc.Mode, tickets, auto)
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", lc.Name, err)
	}
	return t, nil
}
