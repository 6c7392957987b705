package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/valyala/fasthttp"
	"go.uber.org/atomic"

	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/proxy"
	"github.com/offloadlb/lb/pkg/tlsterm"
)

// listener is one bound address and the fasthttp server behind it.
type listener struct {
	cfg     config.Listener
	log     hclog.Logger
	ln      *limitListener
	srv     *fasthttp.Server
	handler *proxy.Handler
	term    *tlsterm.Terminator // nil for plaintext
	done    chan struct{}
}

func newListener(cfg config.Listener, state *proxy.Listener, term *tlsterm.Terminator, log, access hclog.Logger) (*listener, error) {
	// No TCP keep-alive probes on client connections (four setsockopt
	// calls per accepted connection): idle_timeout closes idle ones.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", cfg.Name, err)
	}
	l := &listener{
		cfg:  cfg,
		log:  log.Named("listener").With("listener", cfg.Name),
		ln:   newLimitListener(ln, cfg.MaxConnections),
		term: term,
		done: make(chan struct{}),
	}
	l.handler = proxy.NewHandler(state, l.log, access)
	l.srv = &fasthttp.Server{
		Handler:                      l.handler.Serve,
		ErrorHandler:                 l.handler.ServeError,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		ReadTimeout:                  cfg.ReadTimeout.Duration,
		WriteTimeout:                 cfg.WriteTimeout.Duration,
		IdleTimeout:                  cfg.IdleTimeout.Duration,
		MaxRequestBodySize:           int(cfg.MaxRequestBody.Bytes),
		ReadBufferSize:               int(cfg.MaxHeaderBytes.Bytes),
		DisablePreParseMultipartForm: true,
		CloseOnShutdown:              true,
		SecureErrorLogMessage:        true,
		Concurrency:                  cfg.MaxConnections,
		ReduceMemoryUsage:            true,
		Logger:                       fasthttpLogger{l.log},
	}
	return l, nil
}

// serve accepts connections until shutdown.
func (l *listener) serve() {
	defer close(l.done)
	var ln net.Listener = l.ln
	if l.term != nil {
		tl := tlsterm.NewListener(l.ln, l.term.Config(), l.cfg.ReadTimeout.Duration)
		go tl.Serve()
		ln = tl
	}
	if err := l.srv.Serve(ln); err != nil {
		l.log.Error("listener stopped", "error", err)
	}
}

// shutdown stops accepting, lets in-flight requests finish and closes idle
// connections, until ctx expires.
func (l *listener) shutdown(ctx context.Context) error {
	// Close the socket first: fasthttp's Shutdown does nothing to a
	// server whose Serve has not started yet, which would leave it to
	// start afterwards and serve forever.
	l.ln.Close()
	err := l.srv.ShutdownWithContext(ctx)
	if errors.Is(err, net.ErrClosed) {
		err = nil // the socket closed above
	}
	select {
	case <-l.done:
	case <-ctx.Done():
	}
	return err
}

// fasthttpLogger sends fasthttp's own messages to hclog.
type fasthttpLogger struct{ log hclog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.log.Debug(fmt.Sprintf(format, args...))
}

// limitListener holds at most max connections open: past that, Accept
// waits and new connections queue in the kernel's backlog, as HAProxy's
// maxconn does, instead of being accepted and refused.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
	active    atomic.Int64
}

func newLimitListener(ln net.Listener, max int) *limitListener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, max), closed: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	l.active.Inc()
	return &limitConn{Conn: c, l: l}, nil
}

// Close stops accepting, also waking an Accept that waits for a slot.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Active is the number of open client connections.
func (l *limitListener) Active() int64 { return l.active.Load() }

type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.active.Dec()
		<-c.l.sem
	})
	return err
}
