package server

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/valyala/fasthttp"
	"go.uber.org/atomic"

	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/h2"
	"github.com/offloadlb/lb/pkg/tlsterm"
)

// httpServer is what serves an http listener's connections with one set
// of server settings: a fasthttp server for HTTP/1, fed connections by
// the listener's accept loop through queue, and the HTTP/2 server for
// clients that negotiated h2.
type httpServer struct {
	http1 *fasthttp.Server
	queue *connQueue
	open  atomic.Int64 // connections it serves
	done  chan struct{}

	h2      *h2.Server
	h2mu    sync.Mutex
	h2wg    sync.WaitGroup
	closing bool // under h2mu: no new h2 connections
}

// serverSettingsChanged reports whether the fasthttp server must be
// rebuilt: its settings are read without synchronisation while it runs.
func serverSettingsChanged(a, b config.Listener) bool {
	return a.ReadTimeout != b.ReadTimeout || a.WriteTimeout != b.WriteTimeout ||
		a.IdleTimeout != b.IdleTimeout || a.MaxRequestBody != b.MaxRequestBody || a.BodyBuffer != b.BodyBuffer ||
		a.MaxHeaderBytes != b.MaxHeaderBytes || a.MaxConnections != b.MaxConnections
}

func (l *boundListener) newHTTPServer(cfg config.Listener) *httpServer {
	srv := &httpServer{queue: newConnQueue(l.sock.Addr()), done: make(chan struct{})}
	srv.http1 = &fasthttp.Server{
		Handler:               l.handler.Serve,
		ErrorHandler:          l.handler.ServeError,
		HeaderReceived:        l.handler.HeaderReceived,
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		NoDefaultDate:         true, // backends' Date is passed on, a cache hit keeps the stored one (RFC 9110 section 6.6.1)
		ReadTimeout:           cfg.ReadTimeout.Duration,
		WriteTimeout:          cfg.WriteTimeout.Duration,
		IdleTimeout:           cfg.IdleTimeout.Duration,
		// Request bodies stream: the handler runs once the head is in,
		// reads what body_buffer allows, and streams the rest (see
		// pkg/proxy's takeBody, which enforces max_request_body). The
		// server reads at most this much ahead of the handler.
		StreamRequestBody:            true,
		MaxRequestBodySize:           int(cfg.BodyBuffer.Bytes),
		ReadBufferSize:               int(cfg.MaxHeaderBytes.Bytes),
		DisablePreParseMultipartForm: true,
		CloseOnShutdown:              true,
		SecureErrorLogMessage:        true,
		Concurrency:                  cfg.MaxConnections,
		ReduceMemoryUsage:            true,
		Logger:                       fasthttpLogger{l.log.With("listener", cfg.Name)},
		ConnState: func(_ net.Conn, s fasthttp.ConnState) {
			switch s {
			case fasthttp.StateNew:
				srv.open.Inc()
			case fasthttp.StateClosed, fasthttp.StateHijacked:
				srv.open.Dec()
			}
		},
	}
	srv.h2 = h2.NewServer(l.handler, h2.Options{
		MaxBody: int(cfg.MaxRequestBody.Bytes),
		// How much of a request body is read before the request is
		// served, a larger one streaming to the handler.
		BodyBuffer:   int(cfg.BodyBuffer.Bytes),
		MaxHead:      int(cfg.MaxHeaderBytes.Bytes),
		IdleTimeout:  cfg.IdleTimeout.Duration,
		ReadTimeout:  cfg.ReadTimeout.Duration,
		WriteTimeout: cfg.WriteTimeout.Duration,
		Logger:       fasthttpLogger{l.log.With("listener", cfg.Name)},
	})
	return srv
}

// serveH2 serves an HTTP/2 connection on its own goroutine; false once
// the server is shutting down.
func (srv *httpServer) serveH2(c *tlsterm.Conn) bool {
	srv.h2mu.Lock()
	if srv.closing {
		srv.h2mu.Unlock()
		return false
	}
	srv.h2wg.Add(1)
	srv.open.Inc()
	srv.h2mu.Unlock()
	go func() {
		defer func() {
			srv.open.Dec()
			srv.h2wg.Done()
		}()
		srv.h2.ServeConn(c)
	}()
	return true
}

// shutdownH2 sends GOAWAY on every HTTP/2 connection, lets their streams
// finish, and closes what is left when ctx ends.
func (srv *httpServer) shutdownH2(ctx context.Context) {
	srv.h2mu.Lock()
	srv.closing = true
	srv.h2mu.Unlock()
	srv.h2.GoAway()
	done := make(chan struct{})
	go func() {
		srv.h2wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		srv.h2.Close()
		<-done
	}
}

// fasthttpLogger sends fasthttp's own messages to hclog.
type fasthttpLogger struct{ log hclog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.log.Debug(fmt.Sprintf(format, args...))
}

// connQueue is the net.Listener an httpServer's fasthttp server serves:
// the listener's accept loop pushes connections into it.
type connQueue struct {
	addr      net.Addr
	ch        chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, ch: make(chan net.Conn), closed: make(chan struct{})}
}

// push hands c to the server, waiting until it takes it; false once the
// queue is closed.
func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.closed:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.closed:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.closeOnce.Do(func() { close(q.closed) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }
