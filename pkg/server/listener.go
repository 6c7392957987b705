package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/valyala/fasthttp"
	"go.uber.org/atomic"

	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/h2"
	"github.com/offloadlb/lb/pkg/l4"
	"github.com/offloadlb/lb/pkg/metrics"
	"github.com/offloadlb/lb/pkg/proxy"
	"github.com/offloadlb/lb/pkg/tlsterm"
)

// listener is one bound address. The socket stays open across reloads
// that keep the address, so no connection is refused while a config
// changes; what is behind it (TLS, HTTP server settings, routes) is
// swapped:
//
//	socket (limitListener) → accept loop → [TLS handshake workers] →
//	current HTTP server instance → proxy.Handler (routes, pools)
//
// A change of server settings (timeouts, limits) starts a new fasthttp
// server instance for new connections; connections already open stay on
// the instance they started with, so keep-alive connections survive a
// reload.
type listener struct {
	bind    string
	log     hclog.Logger
	sock    *limitListener
	handler *proxy.Handler // http mode
	tcp     *l4.Handler    // tcp mode
	hs      *tlsterm.Handshaker
	prelude func(net.Conn) (net.Conn, error) // reads a PROXY header
	// tickets are the session ticket keys, kept as long as the socket so
	// that clients resume across reloads.
	tickets *tlsterm.TicketKeys

	name        atomic.String
	tcpMode     atomic.Bool
	acceptProxy atomic.Bool
	preludeWait atomic.Int64                       // nanoseconds a PROXY header may take
	term        atomic.Pointer[tlsterm.Terminator] // nil: plaintext
	current     atomic.Pointer[instance]           // http mode

	mu      sync.Mutex
	cfg     config.Listener
	retired []*instance
	done    chan struct{} // closed when the accept loop ends
}

// instance is one fasthttp server fed connections by a listener, and the
// HTTP/2 server for clients that negotiated h2, with the same settings.
type instance struct {
	srv   *fasthttp.Server
	queue *connQueue
	open  atomic.Int64 // connections it serves
	done  chan struct{}

	h2      *h2.Server
	h2mu    sync.Mutex
	h2wg    sync.WaitGroup
	closing bool // under h2mu: no new h2 connections
}

func bindListener(cfg config.Listener, log hclog.Logger) (*listener, error) {
	// No TCP keep-alive probes on client connections (four setsockopt
	// calls per accepted connection): idle_timeout closes idle ones.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", cfg.Name, err)
	}
	l := &listener{
		bind:    cfg.Bind,
		log:     log.Named("listener"),
		sock:    newLimitListener(ln, cfg.MaxConnections),
		tickets: tlsterm.NewTicketKeys(),
		done:    make(chan struct{}),
	}
	l.name.Store(cfg.Name)
	var lastRefusal atomic.Int64
	l.sock.onRefuse = func(client netip.Addr, limit int64) {
		// At most a line a second: a client hammering at its limit
		// must not flood the log.
		now := time.Now().UnixNano()
		if last := lastRefusal.Load(); now-last >= int64(time.Second) && lastRefusal.CompareAndSwap(last, now) {
			l.log.Warn("connection refused: the client already holds max_connections_per_client connections",
				"listener", l.name.Load(), "client", client.String(), "limit", limit, "refused_so_far", l.sock.Refused())
		}
	}
	l.prelude = func(c net.Conn) (net.Conn, error) {
		return l4.AcceptProxy(c, time.Duration(l.preludeWait.Load()))
	}
	return l, nil
}

// key identifies the listener among the server's: the address it was
// configured with, or for port 0 the one it got.
func (l *listener) key() string {
	if isEphemeral(l.bind) {
		return l.sock.Addr().String()
	}
	return l.bind
}

// configure applies a listener config and state (state for an http
// listener, tcpState for a tcp one). It is called once before start, and
// again on every reload.
func (l *listener) configure(cfg config.Listener, state *proxy.Listener, tcpState *l4.Listener, term *tlsterm.Terminator, m *metrics.Registry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.cfg
	l.cfg = cfg
	l.name.Store(cfg.Name)
	l.sock.SetMax(cfg.MaxConnections)
	l.sock.SetPerClient(cfg.MaxConnectionsPerClient)
	if l.hs == nil {
		l.hs = tlsterm.NewHandshaker(handshakeTimeout(cfg))
		l.hs.Done = func(r tlsterm.HandshakeResult) { countHandshake(m, l.name.Load(), r) }
		l.hs.Failed = func(c net.Conn, err error) {
			l.log.Debug("connection refused: no valid PROXY protocol header", "listener", l.name.Load(), "client", c.RemoteAddr().String(), "error", err)
		}
	}
	l.hs.SetTimeout(handshakeTimeout(cfg))
	l.preludeWait.Store(int64(cfg.ReadTimeout.Duration))
	l.acceptProxy.Store(cfg.AcceptProxyProtocol)
	if old := l.term.Swap(term); old != term {
		if old != nil {
			old.Close()
		}
		if term != nil {
			term.Watch(cfg.Name, l.log)
		}
	}

	if cfg.Mode == "tcp" {
		if l.tcp == nil {
			l.tcp = l4.NewHandler(tcpState, l.log)
		} else {
			l.tcp.Update(tcpState)
		}
		l.tcpMode.Store(true)
		if cur := l.current.Load(); cur != nil {
			// Was http: its connections finish on their server.
			cur.queue.Close()
			l.retired = append(l.retired, cur)
			l.current.Store(nil)
		}
		return
	}
	if l.handler == nil {
		l.handler = proxy.NewHandler(state, l.log)
	} else {
		l.handler.Update(state)
	}

	cur := l.current.Load()
	if cur == nil || serverSettingsChanged(old, cfg) {
		next := l.newInstance(cfg)
		l.current.Store(next)
		l.tcpMode.Store(false)
		go func() {
			defer close(next.done)
			if err := next.srv.Serve(next.queue); err != nil && !errors.Is(err, net.ErrClosed) {
				l.log.Error("HTTP server stopped", "listener", cfg.Name, "error", err)
			}
		}()
		if cur != nil {
			// The old instance takes no new connections; those it has
			// finish on it.
			cur.queue.Close()
			l.retired = append(l.retired, cur)
		}
	}
	// Forget retired instances whose connections have all closed.
	kept := l.retired[:0]
	for _, r := range l.retired {
		if r.open.Load() > 0 {
			kept = append(kept, r)
		}
	}
	l.retired = kept
}

// config returns the listener's current config.
func (l *listener) config() config.Listener {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cfg
}

func handshakeTimeout(cfg config.Listener) time.Duration {
	return cfg.ReadTimeout.Duration
}

func countHandshake(m *metrics.Registry, listener string, r tlsterm.HandshakeResult) {
	if m == nil {
		return
	}
	switch {
	case r.Err != nil:
		m.Handshake(listener, "", "failure")
	case r.State.DidResume:
		m.Handshake(listener, tlsterm.VersionName(r.State.Version), "resumed")
	default:
		m.Handshake(listener, tlsterm.VersionName(r.State.Version), "success")
	}
}

// serverSettingsChanged reports whether the fasthttp server must be
// rebuilt: its settings are read without synchronisation while it runs.
func serverSettingsChanged(a, b config.Listener) bool {
	return a.ReadTimeout != b.ReadTimeout || a.WriteTimeout != b.WriteTimeout ||
		a.IdleTimeout != b.IdleTimeout || a.MaxRequestBody != b.MaxRequestBody ||
		a.MaxHeaderBytes != b.MaxHeaderBytes || a.MaxConnections != b.MaxConnections
}

func (l *listener) newInstance(cfg config.Listener) *instance {
	in := &instance{queue: newConnQueue(l.sock.Addr()), done: make(chan struct{})}
	in.srv = &fasthttp.Server{
		Handler:                      l.handler.Serve,
		ErrorHandler:                 l.handler.ServeError,
		HeaderReceived:               l.handler.HeaderReceived,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		NoDefaultDate:                true, // backends' Date is passed on, a cache hit keeps the stored one (RFC 9110 section 6.6.1)
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
		Logger:                       fasthttpLogger{l.log.With("listener", cfg.Name)},
		ConnState: func(_ net.Conn, s fasthttp.ConnState) {
			switch s {
			case fasthttp.StateNew:
				in.open.Inc()
			case fasthttp.StateClosed, fasthttp.StateHijacked:
				in.open.Dec()
			}
		},
	}
	in.h2 = h2.NewServer(l.handler, h2.Options{
		MaxBody:      int(cfg.MaxRequestBody.Bytes),
		MaxHead:      int(cfg.MaxHeaderBytes.Bytes),
		IdleTimeout:  cfg.IdleTimeout.Duration,
		ReadTimeout:  cfg.ReadTimeout.Duration,
		WriteTimeout: cfg.WriteTimeout.Duration,
		Logger:       fasthttpLogger{l.log.With("listener", cfg.Name)},
	})
	return in
}

// serveH2 serves an HTTP/2 connection on its own goroutine; false once
// the instance is shutting down.
func (in *instance) serveH2(c *tlsterm.Conn) bool {
	in.h2mu.Lock()
	if in.closing {
		in.h2mu.Unlock()
		return false
	}
	in.h2wg.Add(1)
	in.open.Inc()
	in.h2mu.Unlock()
	go func() {
		defer func() {
			in.open.Dec()
			in.h2wg.Done()
		}()
		in.h2.ServeConn(c)
	}()
	return true
}

// shutdownH2 sends GOAWAY on every HTTP/2 connection, lets their streams
// finish, and closes what is left when ctx ends.
func (in *instance) shutdownH2(ctx context.Context) {
	in.h2mu.Lock()
	in.closing = true
	in.h2mu.Unlock()
	in.h2.GoAway()
	done := make(chan struct{})
	go func() {
		in.h2wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		in.h2.Close()
		<-done
	}
}

// serve accepts connections until the socket closes.
func (l *listener) serve() {
	defer close(l.done)
	var delay time.Duration
	for {
		c, err := l.sock.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of file descriptors and the like: back off, as
				// net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				l.log.Warn("accept failed; retrying", "listener", l.name.Load(), "error", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			if !errors.Is(err, net.ErrClosed) {
				l.log.Error("accept failed; listener stopped", "listener", l.name.Load(), "error", err)
			}
			return
		}
		delay = 0
		term, proxied := l.term.Load(), l.acceptProxy.Load()
		switch {
		case term == nil && !proxied:
			l.deliver(c)
		case term == nil:
			l.hs.Handshake(c, l.prelude, nil, l.deliver)
		case proxied:
			l.hs.Handshake(c, l.prelude, term, l.deliver)
		default:
			l.hs.Handshake(c, nil, term, l.deliver)
		}
	}
}

// deliver hands a connection to the tcp handler, or to the current HTTP
// server instance.
func (l *listener) deliver(c net.Conn) {
	if l.tcpMode.Load() {
		go l.tcp.Serve(c)
		return
	}
	var http1 net.Conn
	for {
		in := l.current.Load()
		if in == nil { // turned tcp meanwhile
			l.deliver(c)
			return
		}
		if tc, ok := c.(*tlsterm.Conn); ok && tc.HTTP2() {
			if in.serveH2(tc) {
				return
			}
		} else {
			if http1 == nil {
				// Refuses a head ended by a bare LF at once, where
				// fasthttp would wait for read_timeout.
				http1 = proxy.WatchHead(c)
			}
			if in.queue.push(http1) {
				return
			}
		}
		if l.current.Load() == in {
			c.Close() // shutting down
			return
		}
	}
}

// shutdown stops accepting, lets requests in flight finish and closes idle
// connections, until ctx expires.
func (l *listener) shutdown(ctx context.Context) error {
	l.sock.Close()
	l.hs.Close()
	if term := l.term.Load(); term != nil {
		term.Close()
	}
	l.mu.Lock()
	all := append([]*instance(nil), l.retired...)
	if cur := l.current.Load(); cur != nil {
		all = append(all, cur)
	}
	tcp := l.tcp
	l.mu.Unlock()
	var wg sync.WaitGroup
	if tcp != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tcp.Wait(ctx.Done())
		}()
	}
	errs := make([]error, len(all))
	for i, in := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h2done := make(chan struct{})
			go func() {
				defer close(h2done)
				in.shutdownH2(ctx)
			}()
			err := in.srv.ShutdownWithContext(ctx)
			if errors.Is(err, net.ErrClosed) {
				err = nil
			}
			<-h2done
			in.queue.Close() // a server whose Serve never ran ignores Shutdown
			errs[i] = err
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// fasthttpLogger sends fasthttp's own messages to hclog.
type fasthttpLogger struct{ log hclog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.log.Debug(fmt.Sprintf(format, args...))
}

// connQueue is the net.Listener a fasthttp server instance serves: the
// listener's accept loop pushes connections into it.
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

// limitListener holds at most max connections open: past that, Accept
// waits and new connections queue in the kernel's backlog, as HAProxy's
// maxconn does, instead of being accepted and refused. The limit can be
// changed while it runs.
type limitListener struct {
	net.Listener
	mu     sync.Mutex
	cond   *sync.Cond
	max    int64
	active int64
	closed bool
	count  atomic.Int64 // active, readable without the lock

	// Connections per client address, kept whether or not there is a
	// limit, so that one set by a reload counts connections already open.
	perClient atomic.Int64 // 0: no limit
	cmu       sync.Mutex
	clients   map[netip.Addr]int32
	refused   atomic.Uint64
	// onRefuse, if set, hears of each connection closed for its client's
	// limit.
	onRefuse func(client netip.Addr, limit int64)
}

func newLimitListener(ln net.Listener, max int) *limitListener {
	l := &limitListener{Listener: ln, max: int64(max), clients: map[netip.Addr]int32{}}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// SetPerClient changes the limit of connections per client address (0
// for none). Connections already open stay.
func (l *limitListener) SetPerClient(n int) { l.perClient.Store(int64(n)) }

// Refused is the number of connections closed at once for their client's
// limit.
func (l *limitListener) Refused() uint64 { return l.refused.Load() }

// admit counts a new connection from client, unless the client is at its
// limit.
func (l *limitListener) admit(client netip.Addr) bool {
	limit := l.perClient.Load()
	l.cmu.Lock()
	defer l.cmu.Unlock()
	n := l.clients[client]
	if limit > 0 && int64(n) >= limit {
		return false
	}
	l.clients[client] = n + 1
	return true
}

func (l *limitListener) leave(client netip.Addr) {
	l.cmu.Lock()
	if n := l.clients[client] - 1; n > 0 {
		l.clients[client] = n
	} else {
		delete(l.clients, client)
	}
	l.cmu.Unlock()
}

func clientAddr(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// SetMax changes the limit; waiting accepts see it at once.
func (l *limitListener) SetMax(max int) {
	l.mu.Lock()
	l.max = int64(max)
	l.mu.Unlock()
	l.cond.Broadcast()
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		for l.active >= l.max && !l.closed {
			l.cond.Wait()
		}
		if l.closed {
			l.mu.Unlock()
			return nil, net.ErrClosed
		}
		l.active++
		l.mu.Unlock()
		c, err := l.Listener.Accept()
		if err != nil {
			l.release()
			return nil, err
		}
		client := clientAddr(c)
		if !l.admit(client) {
			// Closed before any byte is read: a client at its limit
			// costs no handshake.
			c.Close()
			l.release()
			l.refused.Add(1)
			if l.onRefuse != nil {
				l.onRefuse(client, l.perClient.Load())
			}
			continue
		}
		l.count.Inc()
		return &limitConn{Conn: c, l: l, client: client}, nil
	}
}

func (l *limitListener) release() {
	l.mu.Lock()
	l.active--
	l.mu.Unlock()
	l.cond.Signal()
}

// Close stops accepting, also waking an Accept that waits for a slot.
func (l *limitListener) Close() error {
	l.mu.Lock()
	already := l.closed
	l.closed = true
	l.mu.Unlock()
	l.cond.Broadcast()
	if already {
		return nil
	}
	return l.Listener.Close()
}

// Active is the number of open client connections.
func (l *limitListener) Active() int64 { return l.count.Load() }

type limitConn struct {
	net.Conn
	l      *limitListener
	client netip.Addr
	closed atomic.Bool
}

// RawConn is the socket underneath, for splice.
func (c *limitConn) RawConn() net.Conn { return c.Conn }

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.l.count.Dec()
		c.l.leave(c.client)
		c.l.release()
	}
	return err
}
