package tlsterm

import (
	"crypto/tls"
	"net"
	"sync"
	"time"

	"go.uber.org/atomic"
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
	timeout   atomic.Duration
	work      chan job
	closed    chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
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
	h := &Handshaker{work: make(chan job), closed: make(chan struct{})}
	h.timeout.Store(timeout)
	return h
}

// SetTimeout changes the bound of handshakes that start from now on; it
// is safe to call while handshakes run.
func (h *Handshaker) SetTimeout(d time.Duration) { h.timeout.Store(d) }

// workerIdle is how long a handshake worker waits for another connection
// before it exits.
const workerIdle = 10 * time.Second

// Handshake runs, on a worker, prelude (if not nil: reading a PROXY
// protocol header, say) and then a server handshake with term's current
// config (if term is not nil), and passes the resulting connection to
// deliver: for an http listener a *Conn, for a tcp one the *tls.Conn. A
// connection whose prelude or handshake fails is closed.
func (h *Handshaker) Handshake(c net.Conn, prelude func(net.Conn) (net.Conn, error), term *Terminator, deliver func(net.Conn)) {
	j := job{c, prelude, term, deliver}
	select {
	case h.work <- j: // an idle worker took it
	case <-h.closed:
		c.Close()
	default:
		h.wg.Add(1)
		go h.worker(j)
	}
}

func (h *Handshaker) worker(j job) {
	defer h.wg.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		h.run(j)
		idle.Reset(workerIdle)
		select {
		case j = <-h.work:
		case <-idle.C:
			return
		case <-h.closed:
			return
		}
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
	if err != nil {
		j.c.Close()
		return
	}
	if j.term.http {
		j.deliver(st.conn(j.term, tc, &cs))
		return
	}
	j.deliver(tc)
}

// Close stops idle workers; handshakes under way finish.
func (h *Handshaker) Close() {
	h.closeOnce.Do(func() { close(h.closed) })
}

// Wait waits for every worker to exit, after Close.
func (h *Handshaker) Wait() { h.wg.Wait() }

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
