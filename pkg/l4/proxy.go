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

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/metrics"
	"github.com/offloadlb/lb/pkg/tlsterm"
	"github.com/offloadlb/lb/pkg/tunnel"
)

// Listener is what the TCP handler needs to know of one tcp listener. It
// is immutable once published; Handler.Update swaps in a new one.
type Listener struct {
	Name string
	// TLS is whether connections arrive already decrypted.
	TLS bool
	// Routes pick a pool by the client's server name (SNI): from the
	// handshake when TLS is terminated, else peeked from the ClientHello,
	// which is then forwarded untouched.
	Routes []Route
	// Default takes connections no route matches; nil refuses them.
	Default *Target
	// ProxyProtocol is "", "v1" or "v2": the header sent to backends.
	ProxyProtocol string
	// IdleTimeout closes a connection when no byte has moved either way
	// for this long (0: never).
	IdleTimeout time.Duration
	// WriteTimeout closes a connection when the client or the backend
	// has taken none of the bytes lb holds for it for this long (0:
	// never).
	WriteTimeout time.Duration
	// PeekTimeout bounds the wait for a ClientHello to route by.
	PeekTimeout time.Duration
	// Unrouted counts connections that reached no backend. Never nil.
	Unrouted *metrics.TCP
	// Access receives one line per connection; nil turns it off.
	Access hclog.Logger
}

// Route sends connections for a server name to a pool.
type Route struct {
	SNI    string // exact lower-case, or "*.example.com"
	Target *Target
}

// Target is a pool as one tcp listener uses it.
type Target struct {
	Pool *balancer.Pool
	// Health is told how each connection went (the pool's health
	// monitor); nil for no passive reports.
	Health         balancer.Reporter
	Retries        int
	ConnectTimeout time.Duration
	// Stats count connections and bytes, by backend index.
	Stats []*metrics.TCP
	// Duration observes connection durations; nil for none.
	Duration prometheus.Observer
}

// Handler proxies the connections of one tcp listener. It is safe for
// concurrent use.
type Handler struct {
	l   atomic.Pointer[Listener]
	log hclog.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewHandler returns a handler for l.
func NewHandler(l *Listener, log hclog.Logger) *Handler {
	h := &Handler{log: log, conns: map[net.Conn]struct{}{}}
	h.l.Store(l)
	return h
}

// Update makes new connections use l; open ones keep theirs.
func (h *Handler) Update(l *Listener) { h.l.Store(l) }

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

	l := h.l.Load()
	s := session{l: l, h: h, client: c, start: time.Now()}
	s.run()
	s.finish()
}

// session is one proxied connection.
type session struct {
	l      *Listener
	h      *Handler
	client net.Conn
	br     *bufio.Reader // holds a peeked ClientHello, if any
	start  time.Time

	sni      string
	target   *Target
	backend  *balancer.Backend // the last one tried
	lease    balancer.Lease    // on backend, once connected
	upstream net.Conn
	in, out  atomic.Int64 // bytes from the client, to the client
	err      error
}

func (s *session) run() {
	l := s.l
	if tc, ok := s.client.(*tls.Conn); ok {
		s.sni = tc.ConnectionState().ServerName
	} else if len(l.Routes) > 0 {
		s.peekSNI()
		if s.err != nil && !errors.Is(s.err, ErrNotTLS) {
			return // nothing arrived to route by
		}
		s.err = nil
	}
	s.target = l.route(s.sni)
	if s.target == nil {
		s.err = errors.New("no route for this connection and no default pool")
		return
	}
	if !s.connect() {
		return
	}
	if l.ProxyProtocol != "" {
		if _, err := s.upstream.Write(s.proxyHeader()); err != nil {
			s.fail(fmt.Errorf("send PROXY header: %w", err))
			return
		}
	}
	s.pipe()
}

func (l *Listener) route(sni string) *Target {
	for _, r := range l.Routes {
		if sni != "" && MatchSNI(r.SNI, sni) {
			return r.Target
		}
	}
	return l.Default
}

// peekSNI reads the server name from the ClientHello without consuming
// it.
func (s *session) peekSNI() {
	s.br = bufio.NewReaderSize(s.client, maxHello+5)
	if s.l.PeekTimeout > 0 {
		s.client.SetReadDeadline(time.Now().Add(s.l.PeekTimeout)) //nolint:errcheck
	}
	s.sni, s.err = PeekServerName(s.br)
	s.client.SetReadDeadline(time.Time{}) //nolint:errcheck
}

// connect picks a backend and opens a connection to it, trying others
// after a connect failure (nothing of the client's has been sent).
func (s *session) connect() bool {
	t := s.target
	var tried balancer.Tried
	var last error
	for attempt := 0; attempt <= t.Retries; attempt++ {
		lease, err := t.Pool.Lease(&tried, t.ConnectTimeout, t.Health)
		if err != nil {
			if last == nil {
				last = err
			}
			break
		}
		b := lease.Backend
		// No TCP keep-alive probes (four setsockopt calls a connection):
		// idle_timeout ends idle connections.
		d := net.Dialer{Timeout: t.ConnectTimeout, KeepAlive: -1}
		bc, err := d.Dial("tcp", b.Address)
		if err == nil {
			s.backend, s.lease, s.upstream = b, lease, bc
			return true
		}
		last = fmt.Errorf("connect %s: %w", b.Address, err)
		lease.End(errors.New("connect: "+describe(err)), true)
		t.Stats[b.Index].Failures.Add(1)
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
	h := HeaderFor(s.client.RemoteAddr(), s.client.LocalAddr())
	if s.l.ProxyProtocol == "v1" {
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
	if s.br != nil && s.br.Buffered() > 0 {
		b, _ := s.br.Peek(s.br.Buffered())
		n, err := s.upstream.Write(b)
		s.in.Add(int64(n))
		s.br.Discard(n) //nolint:errcheck
		if err != nil {
			s.upstream.Close()
			s.fail(fmt.Errorf("client to backend: %w", err))
			return
		}
	}
	if err := tunnel.Pipe(s.client, s.upstream, tunnel.Timeouts{Idle: s.l.IdleTimeout, Write: s.l.WriteTimeout}, &s.in, &s.out); err != nil {
		s.fail(err)
	}
}

// finish counts, logs and releases.
func (s *session) finish() {
	d := time.Since(s.start)
	in, out := s.in.Load(), s.out.Load()
	if s.upstream != nil {
		t, b := s.target, s.backend
		st := t.Stats[b.Index]
		st.Connections.Add(1)
		st.BytesIn.Add(uint64(in))
		st.BytesOut.Add(uint64(out))
		s.lease.End(nil, true)
		if t.Duration != nil {
			t.Duration.Observe(d.Seconds())
		}
	} else {
		s.l.Unrouted.Connections.Add(1)
		s.l.Unrouted.BytesIn.Add(uint64(in))
	}
	if s.l.Access != nil {
		pool, backend, tlsVersion := "", "", ""
		if s.target != nil {
			pool = s.target.Pool.Name
		}
		if s.backend != nil {
			backend = s.backend.Address
		}
		if tc, ok := s.client.(*tls.Conn); ok {
			tlsVersion = tlsterm.VersionName(tc.ConnectionState().Version)
		}
		args := []any{"listener", s.l.Name, "client", s.client.RemoteAddr().String(), "tls", tlsVersion,
			"sni", s.sni, "pool", pool, "backend", backend, "bytes_in", in, "bytes_out", out,
			"duration", d.Round(time.Microsecond).String()}
		if s.err != nil && !isClosedErr(s.err) {
			args = append(args, "error", s.err.Error())
		}
		s.l.Access.Info("connection", args...)
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF)
}

// describe strips net.OpError's address prefixes.
func describe(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
	}
	return err.Error()
}
