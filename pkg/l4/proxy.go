package l4

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/offloadlb/lb/pkg/affinity"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/offloadlb/lb/internal/neterr"
	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/metrics"
	"github.com/offloadlb/lb/pkg/tlsterm"
	"github.com/offloadlb/lb/pkg/tunnel"
)

// Service is what a tcp listener serves: how its connections are routed
// to pools, and the bounds and counters they run with. A Handler reads it
// from any number of goroutines once it is published, so nothing may
// change it then; Handler.Update swaps in a new one. The zero Service is
// not usable: Unrouted must be set.
type Service struct {
	// Name is the listener's, for the access log.
	Name string
	// TLS is whether connections arrive already decrypted.
	TLS bool
	// Rules pick a pool by the client's server name (SNI): from the
	// handshake when TLS is terminated, else peeked from the ClientHello,
	// which is then forwarded untouched. The first that matches wins;
	// none (nil) means no ClientHello is peeked.
	Rules []SNIRule
	// Default takes connections no rule matches; nil refuses them.
	Default *Upstream
	// ProxyProtocol is "", "v1" or "v2": the header sent to backends
	// ("": none).
	ProxyProtocol string
	// IdleTimeout closes a connection when no byte has moved either way
	// for this long (0: never).
	IdleTimeout time.Duration
	// WriteTimeout closes a connection when the client or the backend
	// has taken none of the bytes lb holds for it for this long (0:
	// never).
	WriteTimeout time.Duration
	// PeekTimeout bounds the wait for a ClientHello to route by (0: no
	// bound).
	PeekTimeout time.Duration
	// Unrouted counts connections that reached no backend. Never nil.
	Unrouted *metrics.TCP
	// Access receives one line per connection; nil turns it off.
	Access hclog.Logger
}

// SNIRule sends connections for a server name to a pool. Like the Service
// that holds it, it is read-only once published. A zero SNIRule matches
// nothing.
type SNIRule struct {
	// Pattern is an exact lower-case name, or "*.example.com" for any
	// name below example.com (see MatchSNI).
	Pattern string
	// Upstream takes the connections that match.
	Upstream *Upstream
}

// Upstream is a pool as one tcp listener uses it: where its connections
// go and what counts them. Any number of connections share it, reading
// it only, once a Service that holds it is published; a nil *Upstream
// stands for no pool.
type Upstream struct {
	// Pool picks the backend of each connection. Never nil.
	Pool *balancer.Pool
	// Health is told how each connection went (the pool's health
	// monitor); nil for no passive reports.
	Health balancer.Reporter
	// Retries is how many other backends a connection tries after a
	// connect failure (0: none).
	Retries int
	// ConnectTimeout bounds a connect, and the wait for a free slot
	// when every backend is at its limit (0: a connect has only the
	// system's bound, and no connection waits for a slot).
	ConnectTimeout time.Duration
	// HashClient gives each connection its client's address as its key,
	// for a pool whose algorithm is "hash" (by client_ip, the one key a
	// tcp listener has).
	HashClient bool
	// Stats count connections and bytes, by backend index: one for
	// each of Pool's backends, none nil.
	Stats []*metrics.TCP
	// Duration observes connection durations; nil for none.
	Duration prometheus.Observer
}

// Handler proxies the connections of one tcp listener. It is safe for
// concurrent use: Serve runs on a goroutine a connection, alongside
// Update and Wait. Make one with NewHandler; the zero Handler is not
// usable.
type Handler struct {
	svc atomic.Pointer[Service]
	log hclog.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewHandler returns a handler serving svc, which must not be nil.
func NewHandler(svc *Service, log hclog.Logger) *Handler {
	h := &Handler{log: log, conns: map[net.Conn]struct{}{}}
	h.svc.Store(svc)
	return h
}

// Update makes new connections use svc (not nil); open ones keep theirs.
// It may run while connections are served.
func (h *Handler) Update(svc *Service) { h.svc.Store(svc) }

// Wait waits for every connection to end, or until done is closed; then
// it closes those still open and waits for their goroutines.
func (h *Handler) Wait(done <-chan struct{}) {
	finished := make(chan struct{})
	go func() {
		h.wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
		return
	case <-done:
	}
	h.mu.Lock()
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	<-finished
}

func (h *Handler) track(c net.Conn, on bool) {
	h.mu.Lock()
	if on {
		h.conns[c] = struct{}{}
	} else {
		delete(h.conns, c)
	}
	h.mu.Unlock()
}

// Serve proxies one client connection until either side ends it, then
// closes it.
func (h *Handler) Serve(c net.Conn) {
	h.wg.Add(1)
	defer h.wg.Done()
	h.track(c, true)
	defer h.track(c, false)
	defer c.Close()

	s := session{svc: h.svc.Load(), h: h, client: c, start: time.Now()}
	s.run()
	s.finish()
}

// session is one proxied connection.
type session struct {
	svc    *Service
	h      *Handler
	client net.Conn
	hello  *bufio.Reader // holds a peeked ClientHello, if any
	start  time.Time

	sni         string
	upstream    *Upstream
	backend     *balancer.Backend // the last one tried
	lease       balancer.Lease    // on backend, once connected
	backendConn net.Conn
	in, out     atomic.Int64 // bytes from the client, to the client
	err         error
}

func (s *session) run() {
	svc := s.svc
	if tc, ok := s.client.(*tls.Conn); ok {
		s.sni = tc.ConnectionState().ServerName
	} else if len(svc.Rules) > 0 {
		s.peekSNI()
		if s.err != nil && !errors.Is(s.err, ErrNotTLS) {
			return // nothing arrived to route by
		}
		s.err = nil
	}
	s.upstream = svc.upstreamFor(s.sni)
	if s.upstream == nil {
		s.err = errors.New("no route for this connection and no default pool")
		return
	}
	if !s.connect() {
		return
	}
	if svc.ProxyProtocol != "" {
		if _, err := s.backendConn.Write(s.proxyHeader()); err != nil {
			s.fail(fmt.Errorf("send PROXY header: %w", err))
			return
		}
	}
	s.pipe()
}

// upstreamFor picks the pool of a connection for server name sni ("":
// none was given).
func (svc *Service) upstreamFor(sni string) *Upstream {
	for _, r := range svc.Rules {
		if sni != "" && MatchSNI(r.Pattern, sni) {
			return r.Upstream
		}
	}
	return svc.Default
}

// peekSNI reads the server name from the ClientHello without consuming
// it.
func (s *session) peekSNI() {
	s.hello = bufio.NewReaderSize(s.client, maxHello+5)
	if s.svc.PeekTimeout > 0 {
		_ = s.client.SetReadDeadline(time.Now().Add(s.svc.PeekTimeout)) // fails only on a closed connection, which the peek reports
	}
	s.sni, s.err = PeekServerName(s.hello)
	_ = s.client.SetReadDeadline(time.Time{}) // as above: the pipe reports a closed connection
}

// connect picks a backend and opens a connection to it, trying others
// after a connect failure (nothing of the client's has been sent).
func (s *session) connect() bool {
	u := s.upstream
	var tried balancer.Tried
	if u.HashClient {
		if k, ok := affinity.ClientKey(s.client.RemoteAddr()); ok {
			tried.SetKey(k)
		}
	}
	var last error
	for attempt := 0; attempt <= u.Retries; attempt++ {
		lease, err := u.Pool.Lease(&tried, u.ConnectTimeout, u.Health)
		if err != nil {
			if last == nil {
				last = err
			}
			break
		}
		b := lease.Backend
		// No TCP keep-alive probes (four setsockopt calls a connection):
		// idle_timeout ends idle connections.
		d := net.Dialer{Timeout: u.ConnectTimeout, KeepAlive: -1}
		bc, err := d.Dial("tcp", b.Address)
		if err == nil {
			s.backend, s.lease, s.backendConn = b, lease, bc
			return true
		}
		last = fmt.Errorf("connect %s: %w", b.Address, err)
		lease.End(errors.New("connect: "+neterr.Bare(err).Error()), true)
		u.Stats[b.Index].Failures.Add(1)
		s.backend = b
	}
	s.err = last
	return false
}

func (s *session) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}

// proxyHeader builds the PROXY header announcing the client.
func (s *session) proxyHeader() []byte {
	h := ProxyHeaderFor(s.client.RemoteAddr(), s.client.LocalAddr())
	if s.svc.ProxyProtocol == "v1" {
		return h.AppendV1(nil)
	}
	if s.sni != "" {
		h.TLVs = append(h.TLVs, TLV{Type: TLVAuthority, Value: []byte(s.sni)})
	}
	if tc, ok := s.client.(*tls.Conn); ok {
		st := tc.ConnectionState()
		if st.NegotiatedProtocol != "" {
			h.TLVs = append(h.TLVs, TLV{Type: TLVALPN, Value: []byte(st.NegotiatedProtocol)})
		}
		h.TLVs = append(h.TLVs, SSLTLV("TLSv"+tlsterm.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)))
	}
	return h.AppendV2(nil)
}

// pipe copies both ways until both are done: first what a ClientHello
// peek buffered, then everything else.
func (s *session) pipe() {
	if s.hello != nil && s.hello.Buffered() > 0 {
		b, _ := s.hello.Peek(s.hello.Buffered())
		n, err := s.backendConn.Write(b)
		s.in.Add(int64(n))
		_, _ = s.hello.Discard(n) // n bytes are buffered: nothing to read, so no error
		if err != nil {
			s.backendConn.Close()
			s.fail(fmt.Errorf("client to backend: %w", err))
			return
		}
	}
	if err := tunnel.Pipe(s.client, s.backendConn, tunnel.Timeouts{Idle: s.svc.IdleTimeout, Write: s.svc.WriteTimeout}, &s.in, &s.out); err != nil {
		s.fail(err)
	}
}

// finish counts, logs and releases.
func (s *session) finish() {
	d := time.Since(s.start)
	in, out := s.in.Load(), s.out.Load()
	if s.backendConn != nil {
		u := s.upstream
		stats := u.Stats[s.backend.Index]
		stats.Connections.Add(1)
		stats.BytesIn.Add(uint64(in))
		stats.BytesOut.Add(uint64(out))
		s.lease.End(nil, true)
		if u.Duration != nil {
			u.Duration.Observe(d.Seconds())
		}
	} else {
		s.svc.Unrouted.Connections.Add(1)
		s.svc.Unrouted.BytesIn.Add(uint64(in))
	}
	if s.svc.Access != nil {
		pool, backend, tlsVersion := "", "", ""
		if s.upstream != nil {
			pool = s.upstream.Pool.Name
		}
		if s.backend != nil {
			backend = s.backend.Address
		}
		if tc, ok := s.client.(*tls.Conn); ok {
			tlsVersion = tlsterm.VersionName(tc.ConnectionState().Version)
		}
		args := []any{"listener", s.svc.Name, "client", s.client.RemoteAddr().String(), "tls", tlsVersion,
			"sni", s.sni, "pool", pool, "backend", backend, "bytes_in", in, "bytes_out", out,
			"duration", d.Round(time.Microsecond).String()}
		if s.err != nil && !isClosedErr(s.err) {
			args = append(args, "error", s.err.Error())
		}
		s.svc.Access.Info("connection", args...)
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF)
}
