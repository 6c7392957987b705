package server

import (
	"net"
	"net/netip"
	"sync"

	"go.uber.org/atomic"
)

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
	clientsMu sync.Mutex
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
	l.clientsMu.Lock()
	defer l.clientsMu.Unlock()
	n := l.clients[client]
	if limit > 0 && int64(n) >= limit {
		return false
	}
	l.clients[client] = n + 1
	return true
}

func (l *limitListener) leave(client netip.Addr) {
	l.clientsMu.Lock()
	if n := l.clients[client] - 1; n > 0 {
		l.clients[client] = n
	} else {
		delete(l.clients, client)
	}
	l.clientsMu.Unlock()
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
