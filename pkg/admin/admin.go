// Package admin serves lb's admin HTTP endpoints: /healthz for liveness
// probes, /status.json with the state of every listener, pool and
// backend, and optionally Go's profiler under /debug/pprof/.
package admin

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Source supplies the state the admin server reports.
type Source interface {
	Status() Status
}

// Status is the document served at /status.json.
type Status struct {
	Version   string           `json:"version"`
	Started   time.Time        `json:"started"`
	Listeners []ListenerStatus `json:"listeners"`
	Pools     []PoolStatus     `json:"pools"`
}

// ListenerStatus describes one listener.
type ListenerStatus struct {
	Name              string `json:"name"`
	Address           string `json:"address"`
	Mode              string `json:"mode"`
	TLS               bool   `json:"tls"`
	Pool              string `json:"pool"`
	ActiveConnections int64  `json:"active_connections"`
}

// PoolStatus describes one pool and its backends.
type PoolStatus struct {
	Name      string          `json:"name"`
	Algorithm string          `json:"algorithm"`
	Usable    int             `json:"usable"`
	Backends  []BackendStatus `json:"backends"`
}

// BackendStatus describes one backend.
type BackendStatus struct {
	Address           string     `json:"address"`
	Weight            int        `json:"weight"`
	State             string     `json:"state"` // up | down | drained
	Up                bool       `json:"up"`
	ActiveConnections int64      `json:"active_connections"`
	Requests          uint64     `json:"requests"`
	Failures          uint64     `json:"failures"`
	LastError         string     `json:"last_error"`
	LastCheck         *time.Time `json:"last_check,omitempty"`
	Since             time.Time  `json:"since"`
}

// Server is the admin HTTP server.
type Server struct {
	ln  net.Listener
	srv *http.Server
	log hclog.Logger
}

// Options adjust the admin server.
type Options struct {
	// Pprof serves Go's profiler under /debug/pprof/.
	Pprof bool
}

// New binds addr; Start serves.
func New(addr string, src Source, opts Options, log hclog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(src.Status())
	})
	if opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	s := &Server{
		ln:  ln,
		log: log,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			IdleTimeout:       60 * time.Second,
			ErrorLog:          log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
		},
	}
	return s, nil
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
