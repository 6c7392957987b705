// Package admin serves lb's admin HTTP endpoints: /healthz for liveness
// probes, /metrics for Prometheus, /status.json and the /status page,
// POST /reload, per-backend drain and enable, and optionally Go's
// profiler under /debug/pprof/.
package admin

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ErrNotFound is returned by a Source for a pool or backend that does not
// exist; the admin server answers 404.
var ErrNotFound = errors.New("not found")

// Source is the running lb the admin server reports on and acts upon.
// The admin server calls it from its request goroutines, so its methods
// must be safe for concurrent use.
type Source interface {
	Status() Status
	// ReloadFromSource reloads the config from where it came from.
	ReloadFromSource() error
	// SetBackendDrained takes a backend out of rotation or puts it back.
	SetBackendDrained(pool, addr string, drained bool) error
	// PurgeCache removes one URL ("https://host/path?query" or
	// "host/path"), as stored for both http and https clients, from a
	// pool's cache, or everything when url is "", and returns how many
	// entries (one per scheme and URL) it removed.
	PurgeCache(pool, url string) (int, error)
}

// Options adjust the admin server. The zero value serves no profiler, no
// metrics and no token, and accepts only the built-in Host names.
type Options struct {
	// Pprof serves Go's profiler under /debug/pprof/.
	Pprof bool
	// Gatherer supplies /metrics; nil serves no metrics.
	Gatherer prometheus.Gatherer
	// Token, when not "", is the bearer token that state-changing
	// endpoints and the profiler require.
	Token string
	// Hosts are names accepted in Host besides IP addresses, localhost
	// and the bind address's own name; "*.example.com" accepts every
	// name under example.com.
	Hosts []string
}

//go:embed status.html
var statusPage []byte

// Server is the admin HTTP server. Build it with New; the zero value is
// not usable. Its methods are safe for concurrent use.
type Server struct {
	ln       net.Listener
	srv      *http.Server
	log      hclog.Logger
	src      Source
	pprof    atomic.Bool
	access   atomic.Pointer[access]
	bindHost string // the host of the bound address when it is a name
	// crossOrigin trusts no origin besides the request's own Host.
	crossOrigin http.CrossOriginProtection
}

// New binds addr; Start serves.
func New(addr string, src Source, opts Options, log hclog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, log: log, src: src}
	if host, _, err := net.SplitHostPort(addr); err == nil && net.ParseIP(host) == nil {
		s.bindHost = normalHost(host)
	}
	s.pprof.Store(opts.Pprof)
	s.SetAccess(opts.Token, opts.Hosts)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, "ok\n")
	})
	mux.HandleFunc("GET /status.json", s.statusJSON)
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		_, _ = w.Write(statusPage) // fails only when the client has gone
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/status", http.StatusFound)
	})
	if opts.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{ErrorLog: log.StandardLogger(nil)}))
	}
	mux.HandleFunc("POST /reload", s.reload)
	mux.HandleFunc("POST /pools/{pool}/backends/{address}/drain", s.drain(true))
	mux.HandleFunc("POST /pools/{pool}/backends/{address}/enable", s.drain(false))
	mux.HandleFunc("POST /pools/{pool}/cache/purge", s.purge)
	mux.HandleFunc("/debug/pprof/", s.gatePprof(pprof.Index))
	mux.HandleFunc("/debug/pprof/cmdline", s.gatePprof(pprof.Cmdline))
	mux.HandleFunc("/debug/pprof/profile", s.gatePprof(pprof.Profile))
	mux.HandleFunc("/debug/pprof/symbol", s.gatePprof(pprof.Symbol))
	mux.HandleFunc("/debug/pprof/trace", s.gatePprof(pprof.Trace))
	s.srv = &http.Server{
		Handler:           s.guard(mux),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	return s, nil
}

// SetPprof turns the profiler endpoints on or off.
func (s *Server) SetPprof(on bool) { s.pprof.Store(on) }

func (s *Server) gatePprof(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.pprof.Load() {
			http.Error(w, "profiling is off (set global.pprof = true)", http.StatusNotFound)
			return
		}
		h(w, r)
	}
}

func (s *Server) statusJSON(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(s.src.Status()) // Status always encodes: this fails only when the client has gone
}

func (s *Server) reload(w http.ResponseWriter, _ *http.Request) {
	if err := s.src.ReloadFromSource(); err != nil {
		http.Error(w, "reload failed; the running config is unchanged:\n"+err.Error(), http.StatusUnprocessableEntity)
		return
	}
	writeText(w, "reloaded\n")
}

func (s *Server) drain(drained bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		pool, addr := r.PathValue("pool"), r.PathValue("address")
		if err := s.src.SetBackendDrained(pool, addr, drained); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ErrNotFound) {
				code = http.StatusNotFound
			}
			http.Error(w, err.Error(), code)
			return
		}
		state := "enabled"
		if drained {
			state = "drained"
		}
		writeText(w, pool+" "+addr+" "+state+"\n")
	}
}

// purge empties a pool's cache, or removes the URL in ?url=.
func (s *Server) purge(w http.ResponseWriter, r *http.Request) {
	pool, url := r.PathValue("pool"), r.URL.Query().Get("url")
	n, err := s.src.PurgeCache(pool, url)
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, ErrNotFound) {
			code = http.StatusNotFound
		}
		http.Error(w, err.Error(), code)
		return
	}
	writeText(w, fmt.Sprintf("purged %d URL(s) from the cache of pool %s\n", n, pool))
}

// writeText answers with text/plain. A write fails only when the client
// has gone, and then there is no one to tell.
func writeText(w http.ResponseWriter, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, text)
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Start serves in the background.
func (s *Server) Start() {
	go func() {
		if err := s.srv.Serve(s.ln); err != nil && err != http.ErrServerClosed {
			s.log.Error("admin server stopped", "error", err)
		}
	}()
}

// Close stops the server.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	s.ln.Close()
}
