package tlsterm

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// HandshakeResult describes one finished server handshake, for metrics.
type HandshakeResult struct {
	State *tls.ConnectionState // nil when the handshake failed
	Err   error
}

// Listener completes TLS handshakes before handing connections to the
// server: they run on a pool of handshake workers, each under a deadline,
// and only finished connections come out of Accept. A slow or hostile
// client therefore never holds a server goroutine, and the goroutine that
// later serves the connection never grew its stack for the handshake's
// crypto, which keeps idle keep-alive connections small.
type Listener struct {
	inner   net.Listener
	cfg     *tls.Config
	timeout time.Duration
	// OnHandshake, if set before Serve, is called after every handshake.
	OnHandshake func(HandshakeResult)

	ready     chan net.Conn
	work      chan net.Conn // raw connections for idle handshake workers
	closed    chan struct{}
	closeOnce sync.Once
	acceptErr error
	wg        sync.WaitGroup
}

// NewListener wraps inner; handshakes taking longer than timeout fail.
func NewListener(inner net.Listener, cfg *tls.Config, timeout time.Duration) *Listener {
	l := &Listener{
		inner:   inner,
		cfg:     cfg,
		timeout: timeout,
		ready:   make(chan net.Conn),
		work:    make(chan net.Conn),
		closed:  make(chan struct{}),
	}
	return l
}

// Serve accepts and handshakes until Close; run it on its own goroutine.
func (l *Listener) Serve() {
	var delay time.Duration
	for {
		c, err := l.inner.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of file descriptors and the like: back off, as
				// net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(delay):
					continue
				case <-l.closed:
				}
			}
			l.acceptErr = err
			l.Close()
			return
		}
		delay = 0
		select {
		case l.work <- c: // an idle worker took it
		default:
			l.wg.Add(1)
			go l.worker(c)
		}
	}
}

// workerIdle is how long a handshake worker waits for another connection
// before it exits.
const workerIdle = 10 * time.Second

// worker handshakes connections until it has been idle for workerIdle.
// Workers are reused because a handshake grows a goroutine's stack to a
// few tens of KiB: a fresh goroutine per handshake would copy its stack
// several times over, every time.
func (l *Listener) worker(c net.Conn) {
	defer l.wg.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		l.handshake(c)
		idle.Reset(workerIdle)
		select {
		case c = <-l.work:
		case <-idle.C:
			return
		case <-l.closed:
			return
		}
	}
}

func (l *Listener) handshake(c net.Conn) {
	tc := tls.Server(c, l.cfg)
	// A deadline rather than HandshakeContext, which starts a goroutine
	// per handshake to watch its context.
	err := c.SetDeadline(time.Now().Add(l.timeout))
	if err == nil {
		err = tc.Handshake()
	}
	if err == nil {
		err = c.SetDeadline(time.Time{})
	}
	if l.OnHandshake != nil {
		r := HandshakeResult{Err: err}
		if err == nil {
			st := tc.ConnectionState()
			r.State = &st
		}
		l.OnHandshake(r)
	}
	if err != nil {
		c.Close()
		return
	}
	select {
	case l.ready <- tc:
	case <-l.closed:
		tc.Close()
	}
}

// Accept returns the next connection whose handshake has completed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; handshakes under way are abandoned.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.closed)
		err = l.inner.Close()
	})
	return err
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }
