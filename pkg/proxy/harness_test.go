package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/cache"
	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/health"
	"github.com/offloadlb/lb/pkg/metrics"
	"github.com/offloadlb/lb/pkg/upstream"
)

// clientAddr is the address test clients appear to come from.
var clientAddr = &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}

// harness is a proxy handler served by a real fasthttp server on an
// in-memory listener, in front of real backends on 127.0.0.1.
type harness struct {
	t      *testing.T
	ln     *fasthttputil.InmemoryListener
	srv    *fasthttp.Server
	h      *Handler
	site   *Site // what h serves
	up     *upstream.Group
	client *http.Client
}

type harnessOpts struct {
	backends        []string
	algorithm       string
	retries         int
	responseTimeout time.Duration
	maxBody         int
	tls             bool
	rules           []Rule // Dest nil means the harness's pool
	health          *config.Health
	site            func(*Site)
	cache           *cache.Cache // the harness's pool's
	finishAborted   bool         // on_client_abort = "finish"
}

func newUpstream(t testing.TB, name string, addrs []string, o harnessOpts) *upstream.Group {
	t.Helper()
	bs := make([]*balancer.Backend, len(addrs))
	ts := make([]*upstream.Transport, len(addrs))
	for i, a := range addrs {
		bs[i] = &balancer.Backend{Address: a, Weight: 1}
		ts[i] = upstream.NewTransport(a, time.Second)
	}
	algo := o.algorithm
	if algo == "" {
		algo = balancer.RoundRobin
	}
	pool, err := balancer.NewPool(name, algo, bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	hc := config.Health{Check: "none", Interval: config.Duration{Duration: time.Second}}
	if o.health != nil {
		hc = *o.health
	}
	timeout := o.responseTimeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	mon := health.NewMonitor(pool, hc, hclog.NewNullLogger())
	up := &upstream.Group{
		Pool:            pool,
		Transports:      ts,
		Health:          mon,
		Retries:         o.retries,
		QueueTimeout:    time.Second,
		ResponseTimeout: timeout,
		FinishAborted:   o.finishAborted,
		TimeBackends:    algo == balancer.LeastTime,
	}
	t.Cleanup(func() { mon.Stop(); up.Close() })
	return up
}

// destFor wraps an upstream with fresh counters.
func destFor(up *upstream.Group) *Dest {
	t := &Dest{Up: up, NoBackend: &metrics.Codes{}}
	for range up.Pool.Backends {
		t.Codes = append(t.Codes, &metrics.Codes{})
	}
	return t
}

func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	up := newUpstream(t, "web", o.backends, o)
	l := &Site{Name: "test", TLS: o.tls, Default: destFor(up), Rejected: &metrics.Codes{}}
	l.Default.Cache = o.cache
	for _, r := range o.rules {
		if r.Dest == nil {
			r.Dest = l.Default
		}
		l.Rules = append(l.Rules, r)
	}
	maxBody := o.maxBody
	if maxBody == 0 {
		maxBody = 10 << 20
	}
	l.MaxBody, l.BodyBuffer, l.ReadTimeout = int64(maxBody), defaultBodyBuffer, 10*time.Second
	if o.site != nil {
		o.site(l)
	}
	h := NewHandler(l, hclog.NewNullLogger())
	// As pkg/server runs it: bodies stream from the handler on.
	srv := &fasthttp.Server{
		Handler:                      h.Serve,
		ErrorHandler:                 h.ServeError,
		HeaderReceived:               h.HeaderReceived,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		NoDefaultDate:                true,
		StreamRequestBody:            true,
		ReduceMemoryUsage:            true,
		MaxRequestBodySize:           l.BodyBuffer,
		ReadBufferSize:               16 << 10,
		DisablePreParseMultipartForm: true,
		SecureErrorLogMessage:        true,
		Logger:                       quietLogger{},
	}
	ln := fasthttputil.NewInmemoryListener()
	go srv.Serve(watchedListener{ln}) // ends when Shutdown closes ln
	hs := &harness{t: t, ln: ln, srv: srv, h: h, site: l, up: up}
	hs.client = &http.Client{
		Transport: &http.Transport{
			DialContext: func(context.Context, string, string) (net.Conn, error) {
				return ln.DialWithLocalAddr(clientAddr)
			},
			MaxIdleConnsPerHost: 100,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	t.Cleanup(func() {
		hs.client.CloseIdleConnections()
		srv.Shutdown() // the test is over
	})
	return hs
}

// watchedListener hands the server its connections as pkg/server does:
// wrapped by WatchHead.
type watchedListener struct{ net.Listener }

func (l watchedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return WatchHead(c), nil
}

type quietLogger struct{}

func (quietLogger) Printf(string, ...any) {}

// do sends a request through the proxy and returns status, body and the
// response.
func (hs *harness) do(method, url string, body io.Reader, hdr ...string) (*http.Response, string) {
	hs.t.Helper()
	req, err := http.NewRequest(method, "http://lb.test"+url, body)
	if err != nil {
		hs.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			req.Host = hdr[i+1]
		} else {
			req.Header.Add(hdr[i], hdr[i+1])
		}
	}
	resp, err := hs.client.Do(req)
	if err != nil {
		hs.t.Fatalf("%s %s: %v", method, url, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		hs.t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, string(b)
}

// raw writes bytes on a new client connection and returns what comes back
// until the proxy closes it or a second passes.
func (hs *harness) raw(req string) string {
	hs.t.Helper()
	c, err := hs.ln.DialWithLocalAddr(clientAddr)
	if err != nil {
		hs.t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		hs.t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

// seen is what an echo backend received.
type seen struct {
	Backend string
	Method  string
	URI     string
	Proto   string
	Host    string
	Header  http.Header
	Body    string
	Chunked bool
	Trailer http.Header // trailer fields after a chunked body
}

// echoBackend is a net/http server that answers with a JSON account of
// each request. hits counts requests.
type echoBackend struct {
	addr  string
	hits  atomic.Int64
	conns atomic.Int64
	srv   *http.Server
	mu    sync.Mutex
	last  *seen
}

func startEcho(t testing.TB, handler ...func(w http.ResponseWriter, r *http.Request) bool) *echoBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoBackend{addr: ln.Addr().String()}
	e.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.hits.Add(1)
		for _, h := range handler {
			if h(w, r) {
				return
			}
		}
		body, _ := io.ReadAll(r.Body)
		s := &seen{
			Backend: e.addr, Method: r.Method, URI: r.RequestURI, Proto: r.Proto, Host: r.Host,
			Header: r.Header, Body: string(body), Chunked: len(r.TransferEncoding) > 0, Trailer: r.Trailer,
		}
		e.mu.Lock()
		e.last = s
		e.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s) // a failed write shows as a failed request on the test's side
	})}
	e.srv.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			e.conns.Add(1)
		}
	}
	go e.srv.Serve(ln) // ends when Close closes ln
	t.Cleanup(func() { e.srv.Close() })
	return e
}

// lastSeen is the last request the backend answered.
func (e *echoBackend) lastSeen() *seen {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.last
}

func decodeSeen(t *testing.T, body string) *seen {
	t.Helper()
	var s seen
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("backend answer %q: %v", body, err)
	}
	return &s
}

// rawBackend serves each connection with fn on 127.0.0.1 and counts
// connections.
type rawBackend struct {
	addr  string
	conns atomic.Int64
	ln    net.Listener
}

func startRaw(t testing.TB, fn func(c net.Conn, br *bufio.Reader)) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rb := &rawBackend{addr: ln.Addr().String(), ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rb.conns.Add(1)
			go func() {
				defer c.Close()
				fn(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return rb
}

// readRequest reads one request head and body off a raw backend
// connection.
func readRequest(br *bufio.Reader) (*http.Request, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, req.Body)
	return req, err
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
