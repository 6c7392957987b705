package tlsterm

import (
	"crypto/tls"
	"net"
	"time"

	"go.uber.org/atomic"

	"github.com/offloadlb/lb/internal/workers"
)

// Handshaker completes TLS handshakes for a listener before the HTTP
// server sees the connection, on a pool of worker goroutines: a slow or
// hostile client never holds a server goroutine, and the goroutine that
// later serves the connection never grew its stack for the handshake's
// crypto, which keeps idle keep-alive connections small. Workers are
// reused because a handshake grows a goroutine's stack to a few tens of
// KiB: a fresh goroutine per handshake would copy its stack several times
// over, every time. It is safe for concurrent use.
type Handshaker struct {
	// Done is called with every finished handshake's result (for
	// metrics), before a successful connection is delivered.
	Done func(HandshakeResult)
	// Failed, if set, is told of connections whose prelude failed.
	Failed func(c net.Conn, err error)

	// timeout bounds each handshake. A reload changes it while workers
	// read it.
	timeout atomic.Duration
	workers *workers.Pool[job]
}

// HandshakeResult describes one finished server handshake.
type HandshakeResult struct {
	State *tls.ConnectionState // nil when the handshake failed
	Err   error
}

type job struct {
	c       net.Conn
	prelude func(net.Conn) (net.Conn, error)
	term    *Terminator
	deliver func(net.Conn)
}

// NewHandshaker returns a handshaker; handshakes taking longer than
// timeout fail.
func NewHandshaker(timeout time.Duration) *Handshaker {
	h := &Handshaker{}
	h.workers = workers.New(workers.DefaultIdle, h.run)
	h.timeout.Store(timeout)
	return h
}

// SetTimeout changes the bound of handshakes that start from now on; it
// is safe to call while handshakes run.
func (h *Handshaker) SetTimeout(d time.Duration) { h.timeout.Store(d) }

// Handshake runs, on a worker, prelude (if not nil: reading a PROXY
// protocol header, say) and then a server handshake with term's current
// config (if term is not nil), and passes the resulting connection to
// deliver: for an http listener a *Conn, for a tcp one the *tls.Conn. A
// connection whose prelude or handshake fails is closed, and so is one
// handed over after Close.
func (h *Handshaker) Handshake(c net.Conn, prelude func(net.Conn) (net.Conn, error), term *Terminator, deliver func(net.Conn)) {
	if !h.workers.Go(job{c, prelude, term, deliver}) {
		c.Close()
	}
}

func (h *Handshaker) run(j job) {
	if j.prelude != nil {
		c, err := j.prelude(j.c)
		if err != nil {
			if h.Failed != nil {
				h.Failed(j.c, err)
			}
			j.c.Close()
			return
		}
		j.c = c
	}
	if j.term == nil {
		j.deliver(j.c)
		return
	}
	st := j.term.current()
	tc := tls.Server(j.c, st.tls)
	// A deadline rather than HandshakeContext, which starts a goroutine
	// per handshake to watch its context.
	err := j.c.SetDeadline(time.Now().Add(h.timeout.Load()))
	if err == nil {
		err = tc.Handshake()
	}
	if err == nil {
		err = j.c.SetDeadline(time.Time{})
	}
	var cs tls.ConnectionState
	if err == nil {
		cs = tc.ConnectionState()
	}
	if h.Done != nil {
		r := HandshakeResult{Err: err}
		if err == nil {
			r.State = &cs
		}
		h.Done(r)
	}
	if err != nil || cs.NegotiatedProtocol == ACMETLS1 {
		// A TLS-ALPN-01 validation ends with its handshake (RFC 8737
		// section 3): nothing is served on it.
		j.c.Close()
		return
	}
	if j.term.http {
		j.deliver(st.conn(j.term, tc, &cs))
		return
	}
	j.deliver(tc)
}

// Close stops idle workers; handshakes under way finish, and their
// workers end then. Connections handed to Handshake after it are closed.
func (h *Handshaker) Close() { h.workers.Close() }

// VersionName is "1.2" or "1.3" for a TLS version, "" for others.
func VersionName(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "1.3"
	case tls.VersionTLS12:
		return "1.2"
	case tls.VersionTLS11:
		return "1.1"
	case tls.VersionTLS10:
		return "1.0"
	}
	return ""
}
