package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/offloadlb/lb/pkg/policy"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/atomic"

	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/l4"
	"github.com/offloadlb/lb/pkg/metrics"
	"github.com/offloadlb/lb/pkg/proxy"
	"github.com/offloadlb/lb/pkg/tlsterm"
)

// boundListener is one bound address. The socket stays open across reloads
// that keep the address, so no connection is refused while a config
// changes; what is behind it (TLS, HTTP server settings, routes) is
// swapped:
//
//	socket (limitListener) → accept loop → [TLS handshake workers] →
//	current httpServer → proxy.Handler (rules, pools)
//
// A change of server settings (timeouts, limits) starts a new fasthttp
// server (an httpServer) for new connections; connections already open
// stay on the one they started with, so keep-alive connections survive a
// reload.
type boundListener struct {
	bind       string
	log        hclog.Logger
	sock       *limitListener
	handler    *proxy.Handler // http mode
	tcp        *l4.Handler    // tcp mode
	handshaker *tlsterm.Handshaker
	prelude    func(net.Conn) (net.Conn, error) // reads a PROXY header
	// tickets are the session ticket keys, kept as long as the socket so
	// that clients resume across reloads.
	tickets *tlsterm.TicketKeys

	name        atomic.String
	tcpMode     atomic.Bool
	acceptProxy atomic.Bool
	preludeWait atomic.Int64                       // nanoseconds a PROXY header may take
	term        atomic.Pointer[tlsterm.Terminator] // nil: plaintext
	current     atomic.Pointer[httpServer]         // http mode
	// access is the listener's allow and deny lists (nil: everyone),
	// checked before any TLS byte; denied counts the connections it
	// refused.
	access atomic.Pointer[policy.Filter]
	denied atomic.Uint64
	// connLimit is the listener's rate limiter of new connections (TLS
	// handshakes, tcp connections) per client address; nil for none.
	// limited counts the connections it refused.
	connLimit atomic.Pointer[policy.Limiter]
	limited   atomic.Uint64

	mu      sync.Mutex
	cfg     config.Listener
	retired []*httpServer
	done    chan struct{} // closed when the accept loop ends
}

func bindListener(cfg config.Listener, log hclog.Logger) (*boundListener, error) {
	// No TCP keep-alive probes on client connections (four setsockopt
	// calls per accepted connection): idle_timeout closes idle ones.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", cfg.Name, err)
	}
	l := &boundListener{
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
		pc, err := l4.AcceptProxy(c, time.Duration(l.preludeWait.Load()))
		if err == nil && !l.admits(pc) {
			// Behind a balancer the client's address is the PROXY
			// header's: refused there, still before any TLS byte.
			pc.Close()
			return nil, errDenied
		}
		return pc, err
	}
	return l, nil
}

// errDenied is the prelude's error for a connection whose PROXY address
// the listener's access lists refuse.
var errDenied = errors.New("the client's address is denied")

// admits reports whether the listener's access lists, and its rate
// limit of new connections, let c's client in, counting it when they do
// not.
func (l *boundListener) admits(c net.Conn) bool {
	f, lim := l.access.Load(), l.connLimit.Load()
	if f == nil && lim == nil {
		return true
	}
	a := policy.AddrOf(c.RemoteAddr())
	if !f.Allows(a) {
		l.denied.Add(1)
		if l.log.IsDebug() {
			l.log.Debug("connection refused: the client's address is denied", "listener", l.name.Load(), "client", c.RemoteAddr().String())
		}
		return false
	}
	if ok, _ := lim.Allow(a, time.Now()); !ok {
		l.limited.Add(1)
		if l.log.IsDebug() {
			l.log.Debug("connection refused: the client is over the listener's limits", "listener", l.name.Load(), "client", c.RemoteAddr().String())
		}
		return false
	}
	return true
}

// key identifies the listener among the server's: the address it was
// configured with, or for port 0 the one it got.
func (l *boundListener) key() string {
	if isEphemeral(l.bind) {
		return l.sock.Addr().String()
	}
	return l.bind
}

// configure applies a listener config and its handler state (httpState
// for an http listener, tcpState for a tcp one; the other is nil). It is
// called once before start, and again on every reload.
func (l *boundListener) configure(cfg config.Listener, httpState *proxy.Site, tcpState *l4.Service, term *tlsterm.Terminator, m *metrics.Registry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.cfg
	l.cfg = cfg
	l.name.Store(cfg.Name)
	l.sock.SetMax(cfg.MaxConnections)
	l.sock.SetPerClient(cfg.MaxConnectionsPerClient)
	if l.handshaker == nil {
		l.handshaker = tlsterm.NewHandshaker(handshakeTimeout(cfg))
		l.handshaker.Done = func(r tlsterm.HandshakeResult) { countHandshake(m, l.name.Load(), r) }
		l.handshaker.Failed = func(c net.Conn, err error) {
			if errors.Is(err, errDenied) {
				return // counted and logged by admits
			}
			l.log.Debug("connection refused: no valid PROXY protocol header", "listener", l.name.Load(), "client", c.RemoteAddr().String(), "error", err)
		}
	}
	l.handshaker.SetTimeout(handshakeTimeout(cfg))
	l.preludeWait.Store(int64(cfg.ReadTimeout.Duration))
	l.acceptProxy.Store(cfg.AcceptProxyProtocol)
	if len(cfg.Allow)+len(cfg.Deny) > 0 {
		f, _ := policy.NewFilter(cfg.Allow, cfg.Deny) // validated
		l.access.Store(f)
	} else {
		l.access.Store(nil)
	}
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
		l.handler = proxy.NewHandler(httpState, l.log)
	} else {
		l.handler.Update(httpState)
	}

	cur := l.current.Load()
	if cur == nil || serverSettingsChanged(old, cfg) {
		next := l.newHTTPServer(cfg)
		l.current.Store(next)
		l.tcpMode.Store(false)
		go func() {
			defer close(next.done)
			if err := next.http1.Serve(next.queue); err != nil && !errors.Is(err, net.ErrClosed) {
				l.log.Error("HTTP server stopped", "listener", cfg.Name, "error", err)
			}
		}()
		if cur != nil {
			// The old server takes no new connections; those it has
			// finish on it.
			cur.queue.Close()
			l.retired = append(l.retired, cur)
		}
	}
	// Forget retired servers whose connections have all closed.
	kept := l.retired[:0]
	for _, r := range l.retired {
		if r.open.Load() > 0 {
			kept = append(kept, r)
		}
	}
	l.retired = kept
}

// config returns the listener's current config.
func (l *boundListener) config() config.Listener {
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

// serve accepts connections until the socket closes.
func (l *boundListener) serve() {
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
		if !proxied && !l.admits(c) {
			c.Close() // before any byte is read: a refused client costs no handshake
			continue
		}
		switch {
		case term == nil && !proxied:
			l.deliver(c)
		case term == nil:
			l.handshaker.Handshake(c, l.prelude, nil, l.deliver)
		case proxied:
			l.handshaker.Handshake(c, l.prelude, term, l.deliver)
		default:
			l.handshaker.Handshake(c, nil, term, l.deliver)
		}
	}
}

// deliver hands a connection to the tcp handler, or to the current
// httpServer.
func (l *boundListener) deliver(c net.Conn) {
	if l.tcpMode.Load() {
		go l.tcp.Serve(c)
		return
	}
	var http1 net.Conn
	for {
		srv := l.current.Load()
		if srv == nil { // turned tcp meanwhile
			l.deliver(c)
			return
		}
		if tc, ok := c.(*tlsterm.Conn); ok && tc.HTTP2() {
			if srv.serveH2(tc) {
				return
			}
		} else {
			if http1 == nil {
				// Refuses a head ended by a bare LF at once, where
				// fasthttp would wait for read_timeout.
				http1 = proxy.WatchHead(c)
			}
			if srv.queue.push(http1) {
				return
			}
		}
		if l.current.Load() == srv {
			c.Close() // shutting down
			return
		}
	}
}

// shutdown stops accepting, lets requests in flight finish and closes idle
// connections, until ctx expires.
func (l *boundListener) shutdown(ctx context.Context) error {
	l.sock.Close()
	l.handshaker.Close()
	if term := l.term.Load(); term != nil {
		term.Close()
	}
	l.mu.Lock()
	all := append([]*httpServer(nil), l.retired...)
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
	for i, srv := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h2done := make(chan struct{})
			go func() {
				defer close(h2done)
				srv.shutdownH2(ctx)
			}()
			err := srv.http1.ShutdownWithContext(ctx)
			if errors.Is(err, net.ErrClosed) {
				err = nil
			}
			<-h2done
			srv.queue.Close() // a server whose Serve never ran ignores Shutdown
			errs[i] = err
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
