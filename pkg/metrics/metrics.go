// Package metrics holds lb's Prometheus metrics.
//
// Counters on the request path are plain atomics (Codes), found through
// pointers the proxy resolves when a config is built, so that counting a
// request costs one atomic add and no label lookup; they are turned into
// Prometheus samples only when /metrics is scraped. Everything else uses
// client_golang's own types.
package metrics

import (
	"maps"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Codes counts requests by HTTP status code. The zero value is ready; all
// methods are safe for concurrent use.
type Codes struct {
	n [600]atomic.Uint64
}

// Inc counts one response with status code (codes outside 0-599 count as
// 0).
func (c *Codes) Inc(code int) {
	if code < 0 || code >= len(c.n) {
		code = 0
	}
	c.n[code].Add(1)
}

// Get returns the count for one code.
func (c *Codes) Get(code int) uint64 {
	if code < 0 || code >= len(c.n) {
		return 0
	}
	return c.n[code].Load()
}

// each calls f for every code counted at least once.
func (c *Codes) each(f func(code int, n uint64)) {
	for i := range c.n {
		if v := c.n[i].Load(); v > 0 {
			f(i, v)
		}
	}
}

// TCP counts the connections a tcp listener proxied to one backend, and
// their bytes. The zero value is ready; safe for concurrent use.
type TCP struct {
	Connections atomic.Uint64
	Failures    atomic.Uint64 // connect attempts that failed
	BytesIn     atomic.Uint64 // from clients
	BytesOut    atomic.Uint64 // to clients
}

// Compression counts the responses one listener compressed with one
// coding, and their body bytes before (BytesIn) and after (BytesOut).
// The zero value is ready; safe for concurrent use.
type Compression struct {
	Responses atomic.Uint64
	BytesIn   atomic.Uint64
	BytesOut  atomic.Uint64
}

// compressionKey names a Compression counter.
type compressionKey struct{ listener, encoding string }

// Key names one request counter: the listener that took the request, and
// the pool and backend that answered it ("" when none did). It is a
// comparable value, used as a map key.
type Key struct{ Listener, Pool, Backend string }

// Source supplies the gauges that are read at scrape time. Gauges is
// called on the scraping goroutine, concurrently with whatever else the
// source is doing.
type Source interface {
	// Gauges calls the given functions for every current series.
	Gauges(g *Gauges)
}

// Gauges receives scrape-time values from a Source. The Registry sets
// every field; a Source calls them only during its Gauges call.
type Gauges struct {
	BackendUp         func(pool, backend string, up bool)
	BackendActive     func(pool, backend string, active int64)
	ConnectionsActive func(listener string, n int64)
	// ConnectionsRefused: connections closed at once, by reason
	// ("per_client": the client held max_connections_per_client).
	ConnectionsRefused func(listener, reason string, n uint64)
	CertificateExpiry  func(listener, subject string, notAfter time.Time)
	CacheRequests      func(pool, result string, n uint64)
	// ACMECertificate gives an ACME name's state: 1 for the state it is
	// in, 0 for the others (pkg/acme's States).
	ACMECertificate  func(listener, domain, state string, current bool)
	CacheSize        func(pool string, bytes int64, objects int)
	AccessLogDropped func(n uint64)
	// PoolBackupsServing: whether a pool with backups has them serving
	// (no other backend usable).
	PoolBackupsServing func(pool string, serving bool)
	// BackendLatencyEWMA: the peak-EWMA response time least_time weighs.
	BackendLatencyEWMA func(pool, backend string, seconds float64)
	// StickyCookies: sticky cookies given by reason ("new": the client had
	// none, or one naming no backend of the pool; "moved": its backend
	// could not take the request).
	StickyCookies func(pool, reason string, n uint64)
	// RequestsLimited: requests answered 429 by a listener's rate limit
	// (route "") or a route's.
	RequestsLimited func(listener, route string, n uint64)
	// AuthFailures: requests a route's basic_auth refused, by reason
	// ("unauthorized": 401; "limited": 429, too many checks from the
	// address).
	AuthFailures func(listener, route, reason string, n uint64)
}

// Registry owns every lb metric. Request counters survive reloads: a
// config names them by listener, pool and backend, and a new config that
// keeps the names keeps the counts. Build it with New; the zero value is
// not usable. Its methods are safe for concurrent use.
type Registry struct {
	reg    *prometheus.Registry
	source Source

	mu    sync.Mutex
	codes map[Key]*Codes
	tcp   map[Key]*TCP
	// compression is kept while its listener's Key{Listener} is (see
	// Retain).
	compression map[compressionKey]*Compression

	duration    *prometheus.HistogramVec
	tcpDuration *prometheus.HistogramVec
	handshakes  *prometheus.CounterVec
	reloads     *prometheus.CounterVec
	acmeOrders  *prometheus.CounterVec
}

// DurationBuckets are the request duration histogram's buckets, in
// seconds: 0.5 ms to 30 s.
var DurationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// New makes a registry whose scrape-time gauges come from src.
func New(src Source) *Registry {
	r := &Registry{
		reg:    prometheus.NewRegistry(),
		source: src,
		codes:  map[Key]*Codes{},
		tcp:    map[Key]*TCP{},

		compression: map[compressionKey]*Compression{},
		tcpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lb_tcp_connection_duration_seconds",
			Help:    "How long tcp listeners' connections lasted, by listener and pool.",
			Buckets: []float64{.01, .1, 1, 10, 60, 300, 1800, 3600},
		}, []string{"listener", "pool"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lb_request_duration_seconds",
			Help:    "Time from a request's arrival to its response head being ready, by listener and pool.",
			Buckets: DurationBuckets,
		}, []string{"listener", "pool"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lb_tls_handshakes_total",
			Help: "TLS handshakes by listener, protocol version and result (success, resumed, failure).",
		}, []string{"listener", "version", "result"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lb_config_reloads_total",
			Help: "Configuration reloads by result (success, failure).",
		}, []string{"result"}),
	}
	r.acmeOrders = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lb_acme_orders_total",
		Help: "ACME certificate orders (first certificates and renewals) by result (success, failure); an order another instance sharing storage placed is not counted.",
	}, []string{"result"})
	r.reloads.WithLabelValues("success")
	r.reloads.WithLabelValues("failure")
	r.acmeOrders.WithLabelValues("success")
	r.acmeOrders.WithLabelValues("failure")
	r.reg.MustRegister(r.duration, r.tcpDuration, r.handshakes, r.reloads, r.acmeOrders, &collector{r: r},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Gatherer is what /metrics serves.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Codes returns the request counter for k, making it on first use.
func (r *Registry) Codes(k Key) *Codes { return counterFor(r, r.codes, k) }

// TCP returns the connection counters for k, making them on first use.
func (r *Registry) TCP(k Key) *TCP { return counterFor(r, r.tcp, k) }

// counterFor returns m's counter for k, making it on first use, under
// r's lock, which guards m.
func counterFor[T any](r *Registry, m map[Key]*T, k Key) *T {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := m[k]
	if c == nil {
		c = new(T)
		m[k] = c
	}
	return c
}

// Compression returns the compression counters of listener and
// encoding ("zstd", "br", "gzip"), making them on first use. They are
// dropped by Retain once the listener's Key{Listener: listener} is not
// kept.
func (r *Registry) Compression(listener, encoding string) *Compression {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := compressionKey{listener, encoding}
	c := r.compression[k]
	if c == nil {
		c = new(Compression)
		r.compression[k] = c
	}
	return c
}

// TCPDuration returns the connection duration histogram for one listener
// and pool.
func (r *Registry) TCPDuration(listener, pool string) prometheus.Observer {
	return r.tcpDuration.WithLabelValues(listener, pool)
}

// Retain drops the counters of keys not in keep, once a reload has
// removed their listener, pool or backend.
func (r *Registry) Retain(keep map[Key]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.codes {
		if !keep[k] {
			delete(r.codes, k)
		}
	}
	for k := range r.tcp {
		if !keep[k] {
			delete(r.tcp, k)
		}
	}
	for k := range r.compression {
		if !keep[Key{Listener: k.listener}] {
			delete(r.compression, k)
		}
	}
}

// ListenerTotals sums the requests (connections, for tcp listeners) of
// each listener.
func (r *Registry) ListenerTotals() map[string]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := map[string]uint64{}
	for k, c := range r.codes {
		c.each(func(_ int, n uint64) { t[k.Listener] += n })
	}
	for k, c := range r.tcp {
		t[k.Listener] += c.Connections.Load()
	}
	return t
}

// Duration returns the histogram for one listener and pool.
func (r *Registry) Duration(listener, pool string) prometheus.Observer {
	return r.duration.WithLabelValues(listener, pool)
}

// Handshake counts one TLS handshake.
func (r *Registry) Handshake(listener, version, result string) {
	r.handshakes.WithLabelValues(listener, version, result).Inc()
}

// ACMEOrder counts one finished ACME order: result is "success" or
// "failure".
func (r *Registry) ACMEOrder(result string) {
	r.acmeOrders.WithLabelValues(result).Inc()
}

// Reload counts one configuration reload.
func (r *Registry) Reload(ok bool) {
	if ok {
		r.reloads.WithLabelValues("success").Inc()
	} else {
		r.reloads.WithLabelValues("failure").Inc()
	}
}

// collector turns Codes and the Source's gauges into samples at scrape
// time.
type collector struct{ r *Registry }

var (
	descRequests = prometheus.NewDesc("lb_requests_total",
		"Requests by listener, pool, backend and status code; pool and backend are empty for requests no backend answered.",
		[]string{"listener", "pool", "backend", "code"}, nil)
	descUp = prometheus.NewDesc("lb_backend_up",
		"1 when health checking considers the backend up (drained backends count as up), else 0.",
		[]string{"pool", "backend"}, nil)
	descActive = prometheus.NewDesc("lb_backend_active_connections",
		"Requests in flight to the backend.", []string{"pool", "backend"}, nil)
	descConns = prometheus.NewDesc("lb_connections_active",
		"Open client connections by listener.", []string{"listener"}, nil)
	descRefused = prometheus.NewDesc("lb_connections_refused_total",
		"Client connections closed as soon as accepted, by listener and reason (per_client: the client address held max_connections_per_client; denied: the listener's allow or deny list refused the address; rate_limited: the address was over the listener's limits, which count new TLS handshakes and tcp connections).", []string{"listener", "reason"}, nil)
	descExpiry = prometheus.NewDesc("lb_tls_certificate_expiry_seconds",
		"Seconds until a served certificate expires (negative once it has).", []string{"listener", "subject"}, nil)
	descCache = prometheus.NewDesc("lb_cache_requests_total",
		"Requests to pools with a cache by how the cache answered (hit, miss, stale, revalidated, bypass).", []string{"pool", "result"}, nil)
	descCacheBytes = prometheus.NewDesc("lb_cache_bytes",
		"Bytes held by a pool's cache (bodies, heads and bookkeeping).", []string{"pool"}, nil)
	descCacheObjects = prometheus.NewDesc("lb_cache_objects",
		"URLs held by a pool's cache.", []string{"pool"}, nil)
	descTCPConns = prometheus.NewDesc("lb_tcp_connections_total",
		"Connections tcp listeners proxied, by listener, pool and backend (empty for those that reached none).",
		[]string{"listener", "pool", "backend"}, nil)
	descTCPFailures = prometheus.NewDesc("lb_tcp_connect_failures_total",
		"Failed attempts to connect to a backend for a tcp listener.", []string{"listener", "pool", "backend"}, nil)
	descTCPBytes = prometheus.NewDesc("lb_tcp_bytes_total",
		"Bytes tcp listeners moved, by direction: in (from clients) and out (to clients).",
		[]string{"listener", "pool", "backend", "direction"}, nil)
	descACME = prometheus.NewDesc("lb_acme_certificates",
		"1 for the state each ACME name is in (valid, obtaining, renewing, failing), 0 for the others.",
		[]string{"listener", "domain", "state"}, nil)
	descDropped = prometheus.NewDesc("lb_access_log_dropped_total",
		"Access log lines dropped because the log could not keep up.", nil, nil)
	descBodyMemory = prometheus.NewDesc("lb_body_memory_bytes",
		"Request and response body bytes held in memory (bodies read whole before they are sent on).", nil, nil)
	descBodyMemoryLimit = prometheus.NewDesc("lb_body_memory_limit_bytes",
		"global.max_body_memory: past it, bodies stream instead of being read whole.", nil, nil)
	descBackupsServing = prometheus.NewDesc("lb_pool_backups_serving",
		"1 while a pool's backup backends take its requests (no other backend is usable), else 0; only pools with backups.", []string{"pool"}, nil)
	descLatencyEWMA = prometheus.NewDesc("lb_backend_latency_ewma_seconds",
		"The peak-EWMA response time algorithm least_time weighs each backend by; only least_time pools.", []string{"pool", "backend"}, nil)
	descSticky = prometheus.NewDesc("lb_sticky_cookies_total",
		"Sticky-session cookies given to clients, by reason: new (the client had none, or one that names no backend of the pool) or moved (its backend was down, gone from rotation as a backup, or full).",
		[]string{"pool", "reason"}, nil)
	descAuth = prometheus.NewDesc("lb_auth_failures_total",
		"Requests a route's basic_auth refused, by listener, route and reason: unauthorized (401: no, malformed or wrong credentials) or limited (429: the client address checked too many credentials).",
		[]string{"listener", "route", "reason"}, nil)
	descLimited = prometheus.NewDesc("lb_requests_limited_total",
		"Requests answered 429 for being over a rate limit, by listener and route (empty for the listener's own limits).", []string{"listener", "route"}, nil)
	descCompressed = prometheus.NewDesc("lb_compressed_responses_total",
		"Responses compressed ([listener.compress]) by listener and encoding (zstd, br, gzip).", []string{"listener", "encoding"}, nil)
	descCompressionBytes = prometheus.NewDesc("lb_compression_bytes_total",
		"Body bytes of compressed responses by listener, encoding and direction: in (before compression) and out (sent); a streamed body counts once it ends.",
		[]string{"listener", "encoding", "direction"}, nil)
	descBodyMemoryFull = prometheus.NewDesc("lb_body_memory_full_total",
		"Times a body was not read whole (it streamed, or an HTTP/2 client waited for credit) because the process held global.max_body_memory.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descUp, descActive, descConns, descRefused, descExpiry, descCache, descCacheBytes, descCacheObjects, descACME, descDropped, descTCPConns, descTCPFailures, descTCPBytes,
		descBodyMemory, descBodyMemoryLimit, descBodyMemoryFull, descBackupsServing, descLatencyEWMA, descSticky, descLimited, descAuth, descCompressed, descCompressionBytes} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.r.mu.Lock()
	keys := make([]Key, 0, len(c.r.codes))
	for k := range c.r.codes {
		keys = append(keys, k)
	}
	counts := make([]*Codes, len(keys))
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.Listener != b.Listener {
			return a.Listener < b.Listener
		}
		if a.Pool != b.Pool {
			return a.Pool < b.Pool
		}
		return a.Backend < b.Backend
	})
	for i, k := range keys {
		counts[i] = c.r.codes[k]
	}
	tcp := maps.Clone(c.r.tcp)
	comp := maps.Clone(c.r.compression)
	c.r.mu.Unlock()
	for k, v := range comp {
		ch <- prometheus.MustNewConstMetric(descCompressed, prometheus.CounterValue, float64(v.Responses.Load()), k.listener, k.encoding)
		ch <- prometheus.MustNewConstMetric(descCompressionBytes, prometheus.CounterValue, float64(v.BytesIn.Load()), k.listener, k.encoding, "in")
		ch <- prometheus.MustNewConstMetric(descCompressionBytes, prometheus.CounterValue, float64(v.BytesOut.Load()), k.listener, k.encoding, "out")
	}
	ch <- prometheus.MustNewConstMetric(descBodyMemory, prometheus.GaugeValue, float64(bodymem.Used()))
	ch <- prometheus.MustNewConstMetric(descBodyMemoryLimit, prometheus.GaugeValue, float64(bodymem.Limit()))
	ch <- prometheus.MustNewConstMetric(descBodyMemoryFull, prometheus.CounterValue, float64(bodymem.Full()))
	for k, v := range tcp {
		ch <- prometheus.MustNewConstMetric(descTCPConns, prometheus.CounterValue, float64(v.Connections.Load()), k.Listener, k.Pool, k.Backend)
		ch <- prometheus.MustNewConstMetric(descTCPFailures, prometheus.CounterValue, float64(v.Failures.Load()), k.Listener, k.Pool, k.Backend)
		ch <- prometheus.MustNewConstMetric(descTCPBytes, prometheus.CounterValue, float64(v.BytesIn.Load()), k.Listener, k.Pool, k.Backend, "in")
		ch <- prometheus.MustNewConstMetric(descTCPBytes, prometheus.CounterValue, float64(v.BytesOut.Load()), k.Listener, k.Pool, k.Backend, "out")
	}
	for i, k := range keys {
		counts[i].each(func(code int, n uint64) {
			ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(n),
				k.Listener, k.Pool, k.Backend, strconv.Itoa(code))
		})
	}
	if c.r.source == nil {
		return
	}
	now := time.Now()
	c.r.source.Gauges(&Gauges{
		BackendUp: func(pool, backend string, up bool) {
			v := 0.0
			if up {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, v, pool, backend)
		},
		BackendActive: func(pool, backend string, n int64) {
			ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(n), pool, backend)
		},
		ConnectionsActive: func(listener string, n int64) {
			ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(n), listener)
		},
		ConnectionsRefused: func(listener, reason string, n uint64) {
			ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(n), listener, reason)
		},
		CertificateExpiry: func(listener, subject string, notAfter time.Time) {
			ch <- prometheus.MustNewConstMetric(descExpiry, prometheus.GaugeValue, notAfter.Sub(now).Seconds(), listener, subject)
		},
		CacheRequests: func(pool, result string, n uint64) {
			ch <- prometheus.MustNewConstMetric(descCache, prometheus.CounterValue, float64(n), pool, result)
		},
		CacheSize: func(pool string, bytes int64, objects int) {
			ch <- prometheus.MustNewConstMetric(descCacheBytes, prometheus.GaugeValue, float64(bytes), pool)
			ch <- prometheus.MustNewConstMetric(descCacheObjects, prometheus.GaugeValue, float64(objects), pool)
		},
		ACMECertificate: func(listener, domain, state string, current bool) {
			v := 0.0
			if current {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descACME, prometheus.GaugeValue, v, listener, domain, state)
		},
		AccessLogDropped: func(n uint64) {
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(n))
		},
		PoolBackupsServing: func(pool string, serving bool) {
			v := 0.0
			if serving {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descBackupsServing, prometheus.GaugeValue, v, pool)
		},
		BackendLatencyEWMA: func(pool, backend string, seconds float64) {
			ch <- prometheus.MustNewConstMetric(descLatencyEWMA, prometheus.GaugeValue, seconds, pool, backend)
		},
		StickyCookies: func(pool, reason string, n uint64) {
			ch <- prometheus.MustNewConstMetric(descSticky, prometheus.CounterValue, float64(n), pool, reason)
		},
		AuthFailures: func(listener, route, reason string, n uint64) {
			ch <- prometheus.MustNewConstMetric(descAuth, prometheus.CounterValue, float64(n), listener, route, reason)
		},
		RequestsLimited: func(listener, route string, n uint64) {
			ch <- prometheus.MustNewConstMetric(descLimited, prometheus.CounterValue, float64(n), listener, route)
		},
	})
}
