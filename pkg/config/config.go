// Package config decodes, defaults and validates lb's TOML configuration.
//
// The structs here are plain data: they hold what the operator wrote, with
// defaults filled in, and nothing live. A *Config returned by Load or Parse
// has passed validation and is never mutated afterwards, so it may be shared
// between goroutines.
package config

import (
	"slices"
	"time"
)

// Config is one whole lb configuration. A *Config from Load or Parse is
// never changed afterwards, so goroutines may share it; a zero Config has
// had no defaults filled in and no validation.
type Config struct {
	Global    Global     `toml:"global"`
	Listeners []Listener `toml:"listener"`
	Pools     []Pool     `toml:"pool"`

	// File is the path the config was read from ("" when parsed from
	// memory). Relative certificate paths are resolved against its folder.
	File string `toml:"-"`
	// Warnings are non-fatal remarks found while loading, for the caller
	// to log.
	Warnings []string `toml:"-"`
}

// Global holds process-wide settings.
type Global struct {
	LogLevel  string `toml:"log_level"`  // trace | debug | info | warn | error
	LogFormat string `toml:"log_format"` // text | json
	AccessLog string `toml:"access_log"` // "" off | stdout | stderr | file path
	// AccessLogFormat is the access log's line format: text | json |
	// combined; it follows LogFormat unless set.
	AccessLogFormat string   `toml:"access_log_format"`
	Admin           string   `toml:"admin"` // admin HTTP address; "" disables it
	ShutdownGrace   Duration `toml:"shutdown_grace"`
	Watch           bool     `toml:"watch"`
	// MaxBodyMemory bounds the request and response body bytes the
	// process holds in memory at once (see internal/bodymem): past it,
	// bodies stream instead of being read whole.
	MaxBodyMemory Size `toml:"max_body_memory"`
	// Pprof serves Go's profiler under /debug/pprof/ on the admin server.
	Pprof bool `toml:"pprof"`
	// AdminHosts are names, besides loopback names and IP addresses,
	// that the admin server accepts in a request's Host ("lb.internal",
	// "*.ops.example"): a name that is not here may be one an attacker
	// rebound to this address.
	AdminHosts []string `toml:"admin_hosts"`
	// AdminToken says where the admin bearer token is: "file:PATH"
	// (relative to the config file's folder) or "env:NAME"; "" for none.
	AdminToken string `toml:"admin_token"`
	// AdminTokenValue is the token AdminToken points to, read when the
	// config is loaded; "" when there is none.
	AdminTokenValue Secret `toml:"-"`
}

// Secret is a value that must not be printed: it formats, and encodes as
// JSON or text, as "[redacted]", so logging it by mistake leaks nothing.
// Convert it to string where the value itself is needed.
type Secret string

const redacted = "[redacted]"

// String implements fmt.Stringer.
func (Secret) String() string { return redacted }

// GoString implements fmt.GoStringer.
func (Secret) GoString() string { return redacted }

// MarshalText implements encoding.TextMarshaler.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Listener is one bound address that accepts clients.
type Listener struct {
	Name           string   `toml:"name"`
	Bind           string   `toml:"bind"`
	Mode           string   `toml:"mode"` // http | tcp
	Pool           string   `toml:"pool"`
	ReadTimeout    Duration `toml:"read_timeout"`
	WriteTimeout   Duration `toml:"write_timeout"`
	IdleTimeout    Duration `toml:"idle_timeout"`
	MaxRequestBody Size     `toml:"max_request_body"` // 0: no limit
	// BodyBuffer is how much of a request body is read before a backend
	// is picked: a body that ends within it is sent whole and may be
	// retried; a longer one streams to the backend as it arrives.
	BodyBuffer     Size `toml:"body_buffer"`
	MaxHeaderBytes Size `toml:"max_header_bytes"`
	MaxConnections int  `toml:"max_connections"`
	// MaxConnectionsPerClient bounds the connections one client address
	// may hold open; 0 for no bound.
	MaxConnectionsPerClient int     `toml:"max_connections_per_client"`
	ProxyProtocol           string  `toml:"proxy_protocol"`
	AcceptProxyProtocol     bool    `toml:"accept_proxy_protocol"`
	RedirectHTTPS           string  `toml:"redirect_https"`
	TLS                     *TLS    `toml:"tls"`
	Routes                  []Route `toml:"route"`
	// Allow and Deny are client addresses (CIDR prefixes) let in or
	// refused at accept, before any TLS byte.
	Allow []string `toml:"allow"`
	Deny  []string `toml:"deny"`
	// Headers are the listener's header rules (http listeners).
	Headers *Headers `toml:"headers"`
	// Limits are the listener's rate limits per client address: of
	// requests, and of new TLS handshakes (tcp listeners: connections).
	Limits *Limits `toml:"limits"`
	// ErrorPages maps a status lb answers itself ("502", "503", "504",
	// ...) to a file sent in place of lb's short text.
	ErrorPages map[string]string `toml:"error_pages"`
	// Pages is ErrorPages loaded by validation: status to page.
	Pages map[int]ErrorPage `toml:"-"`
	// Compress compresses responses for clients that accept it (http
	// listeners); nil for none.
	Compress *Compress `toml:"compress"`
}

// Compress is a listener's [listener.compress]: which responses lb
// compresses, and with which codings.
type Compress struct {
	// Algorithms are the codings to use, in the server's order of
	// preference: a subset of "zstd", "br", "gzip".
	Algorithms []string `toml:"algorithms"`
	// Types are the media types compressed ("application/json"), or
	// "type/*" for all of one type ("text/*"); lower-cased by
	// validation.
	Types []string `toml:"types"`
	// MinSize is the smallest body compressed when its length is known;
	// 0 compresses every size.
	MinSize Size `toml:"min_size"`
}

// CompressAlgorithms are the codings [listener.compress] knows, in the
// default order of preference.
var CompressAlgorithms = []string{"zstd", "br", "gzip"}

// DefaultCompressTypes are the media types compressed when types is not
// set: text and the text-based formats of the web.
var DefaultCompressTypes = []string{"text/*", "application/json", "application/javascript", "application/xml", "image/svg+xml"}

// ErrorPage is an operator's page for a status lb answers itself.
type ErrorPage struct {
	File        string
	ContentType string
	Body        []byte
}

// TLS configures termination on a listener. A nil *TLS means plaintext.
type TLS struct {
	Cert       string   `toml:"cert"`
	Key        string   `toml:"key"`
	MinVersion string   `toml:"min_version"` // "1.2" | "1.3"
	ClientAuth string   `toml:"client_auth"` // none | request | require
	ClientCA   string   `toml:"client_ca"`
	ALPN       []string `toml:"alpn"`
	HSTS       string   `toml:"hsts"`
	SNI        []Cert   `toml:"sni"`
	// TicketKeys is a file of session ticket keys shared with other lb
	// processes (see ReadTicketKeys); empty for keys lb makes itself.
	TicketKeys string `toml:"ticket_keys"`
	// ACME, when set, obtains and renews certificates for its domains
	// from an ACME CA; Cert and Key are then optional.
	ACME *ACME `toml:"acme"`

	// CertPEM and KeyPEM, when set, are used instead of reading Cert and
	// Key from disk (the demo's certificate is made in memory).
	CertPEM []byte `toml:"-"`
	KeyPEM  []byte `toml:"-"`
}

// ACME configures automatic certificates (RFC 8555) on a TLS listener.
type ACME struct {
	Domains []string `toml:"domains"` // one certificate per name
	Email   string   `toml:"email"`
	// Directory is the CA's ACME directory URL (Let's Encrypt's by
	// default).
	Directory string `toml:"directory"`
	// DirectoryCA is a PEM bundle of the CAs behind the directory's own
	// HTTPS, for private CAs; "" for the system roots.
	DirectoryCA string `toml:"directory_ca"`
	// Storage is the folder of the account, keys, certificates, locks and
	// pending challenge answers, which several lb processes may share.
	Storage    string   `toml:"storage"`
	Challenges []string `toml:"challenges"` // tls-alpn-01 | http-01
	KeyType    string   `toml:"key_type"`   // ecdsa-p256 | rsa-2048
	// RenewBefore is how long before expiry to renew: "" for when a
	// third of the certificate's life is left, or a duration (clamped to
	// the certificate's life). RenewBeforeDur is it parsed.
	RenewBefore    string        `toml:"renew_before"`
	RenewBeforeDur time.Duration `toml:"-"`
	EABKID         string        `toml:"eab_kid"`
	EABHMAC        string        `toml:"eab_hmac"`
	Profile        string        `toml:"profile"` // "" | an ACME profile the CA offers
}

// ACME challenge types lb answers.
const (
	ChallengeTLSALPN = "tls-alpn-01"
	ChallengeHTTP    = "http-01"
)

// Defaults of [listener.tls.acme].
const (
	DefaultACMEDirectory = "https://acme-v02.api.letsencrypt.org/directory"
	DefaultACMEStorage   = "acme"
	DefaultACMEKeyType   = "ecdsa-p256"
)

// Cert is one extra certificate chosen by SNI.
type Cert struct {
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
}

// Route sends matching requests to a pool other than the listener's.
type Route struct {
	Host       string `toml:"host"`        // exact, or "*.example.com"
	PathPrefix string `toml:"path_prefix"` // "/v1/"
	SNI        string `toml:"sni"`         // tcp passthrough routing
	Pool       string `toml:"pool"`
	// StripPrefix sends the backend the path without PathPrefix.
	StripPrefix bool `toml:"strip_prefix"`
	// Redirect answers 308 to this origin ("https://www.example.com")
	// with the request's path and query; the route then has no pool.
	Redirect string `toml:"redirect"`
	// Allow and Deny are client addresses the route lets in or refuses
	// (403).
	Allow []string `toml:"allow"`
	Deny  []string `toml:"deny"`
	// Headers are the route's header rules, applied after the
	// listener's.
	Headers *Headers `toml:"headers"`
	// Limits are the route's rate limits per client address, on top of
	// the listener's.
	Limits *RouteLimits `toml:"limits"`
	// BasicAuth is an htpasswd file of users and bcrypt hashes: the
	// route's requests need one's credentials (401 otherwise).
	BasicAuth string `toml:"basic_auth"`
	// BasicAuthRealm is the realm the 401 names.
	BasicAuthRealm string `toml:"basic_auth_realm"`
	// BasicAuthForward passes the Authorization field on to the backend.
	BasicAuthForward bool `toml:"basic_auth_forward"`
	// Users is BasicAuth's content, read by validation: user to hash.
	Users map[string][]byte `toml:"-"`
}

// RouteLimits are a route's rate limits per client address: a token
// bucket of Rate requests a second and bursts of Burst.
type RouteLimits struct {
	Rate  float64 `toml:"rate"`
	Burst int     `toml:"burst"`
}

// Limits returns the route's limits as a listener's, without handshakes.
func (r *RouteLimits) Limits() *Limits {
	if r == nil {
		return nil
	}
	return &Limits{Rate: r.Rate, Burst: r.Burst}
}

// Limits are a listener's rate limits per client address: a token bucket
// of Rate requests a second and bursts of Burst, and one of handshakes.
type Limits struct {
	Rate  float64 `toml:"rate"`
	Burst int     `toml:"burst"`
	// HandshakeRate and HandshakeBurst are a second bucket per address,
	// of new TLS handshakes (tcp listeners: new connections), taken at
	// accept; by default Rate and Burst.
	HandshakeRate  float64 `toml:"handshake_rate"`
	HandshakeBurst int     `toml:"handshake_burst"`
}

// Headers are header rules: fields set on and removed from requests
// before they go to a backend, and responses before they go to the
// client.
type Headers struct {
	RequestSet     map[string]string `toml:"request_set"`
	RequestRemove  []string          `toml:"request_remove"`
	ResponseSet    map[string]string `toml:"response_set"`
	ResponseRemove []string          `toml:"response_remove"`
}

// Pool is a named group of backends with one balancing policy.
type Pool struct {
	Name      string `toml:"name"`
	Algorithm string `toml:"algorithm"` // round_robin | least_conn | random_two | least_time | hash
	// HashKey is what algorithm hash hashes: client_ip | uri |
	// header:NAME | cookie:NAME.
	HashKey string `toml:"hash_key"`
	// Key is HashKey parsed by validation.
	Key HashKey `toml:"-"`
	// HashBalance bounds a hashed backend's requests in flight to this
	// times the mean (per unit of weight); 0 for no bound.
	HashBalance float64 `toml:"hash_balance"`
	// Sticky, when set, keeps each client on one backend with a cookie.
	Sticky             *Sticky   `toml:"sticky"`
	Retries            int       `toml:"retries"`
	ConnectTimeout     Duration  `toml:"connect_timeout"`
	ResponseTimeout    Duration  `toml:"response_timeout"`
	MaxConnsPerBackend int       `toml:"max_conns_per_backend"` // 0 = unlimited
	OnClientAbort      string    `toml:"on_client_abort"`       // cancel | finish
	Health             Health    `toml:"health"`
	Cache              *Cache    `toml:"cache"`
	Backends           []Backend `toml:"backend"`
}

// Health configures active and passive health checking of a pool.
type Health struct {
	Check           string   `toml:"check"` // http | tcp | none
	Path            string   `toml:"path"`
	Host            string   `toml:"host"` // Host header of http checks; "" sends the backend's address
	Interval        Duration `toml:"interval"`
	Timeout         Duration `toml:"timeout"`
	Rise            int      `toml:"rise"`
	Fall            int      `toml:"fall"`
	ExpectStatus    string   `toml:"expect_status"`
	PassiveFailures int      `toml:"passive_failures"`
	SlowStart       Duration `toml:"slow_start"`

	// Expect is ExpectStatus parsed by validation.
	Expect StatusSet `toml:"-"`
}

// Cache configures a pool's response cache.
type Cache struct {
	MaxSize   Size `toml:"max_size"`
	MaxObject Size `toml:"max_object"`
	// Heuristic gives responses without explicit freshness a lifetime
	// of a tenth of the time since their Last-Modified (at most a day).
	Heuristic bool `toml:"heuristic"`
	// StoreSetCookie stores responses that set cookies (every client
	// then gets the same cookie).
	StoreSetCookie bool `toml:"store_set_cookie"`
	// IgnoreClientNoCache serves fresh entries to clients that ask for
	// revalidation (Cache-Control: no-cache, max-age=0).
	IgnoreClientNoCache bool `toml:"ignore_client_no_cache"`
	// XCache adds X-Cache: HIT|MISS|STALE|REVALIDATED|BYPASS to responses
	// (default true).
	XCache bool `toml:"x_cache"`
}

// Sticky is a pool's cookie persistence.
type Sticky struct {
	Cookie   string   `toml:"cookie"`
	MaxAge   Duration `toml:"max_age"` // 0: a session cookie
	Secure   *bool    `toml:"secure"`  // unset: when the request came over TLS
	HTTPOnly *bool    `toml:"http_only"`
	SameSite string   `toml:"same_site"` // lax | strict | none
	Domain   string   `toml:"domain"`
	Path     string   `toml:"path"`
	// SecretFile holds the secret the cookie's HMAC is made with, so that
	// several lb instances (and restarts) agree; empty for a secret the
	// process makes at start.
	SecretFile string `toml:"secret_file"`
	// Secret is SecretFile's content, read by validation.
	Secret []byte `toml:"-"`
}

// Backend is one server in a pool.
type Backend struct {
	Address string `toml:"address"`
	Weight  int    `toml:"weight"`
	// Backup backends serve only while no other backend of the pool is
	// usable.
	Backup bool `toml:"backup"`
}

// Defaults of the keys a config leaves out, filled in by applyDefaults.
const (
	DefaultConfigFile     = "lb.toml"
	DefaultAdmin          = "127.0.0.1:9100"
	DefaultShutdownGrace  = 30 * time.Second
	DefaultReadTimeout    = 30 * time.Second
	DefaultWriteTimeout   = 30 * time.Second
	DefaultIdleTimeout    = 60 * time.Second
	DefaultMaxRequestBody = 10 << 20
	DefaultBodyBuffer     = 64 << 10
	DefaultMaxBodyMemory  = 256 << 20
	// MaxBodyBuffer bounds body_buffer: what each request may hold in
	// memory before it streams.
	MaxBodyBuffer          = 16 << 20
	DefaultMaxHeaderBytes  = 16 << 10
	DefaultMaxConnections  = 10000
	DefaultRetries         = 1
	DefaultConnectTimeout  = 2 * time.Second
	DefaultResponseTimeout = 30 * time.Second
	DefaultMaxConnsPerBE   = 512
	DefaultHealthPath      = "/healthz"
	DefaultInterval        = 2 * time.Second
	DefaultCheckTimeout    = 1 * time.Second
	DefaultRise            = 2
	DefaultFall            = 3
	DefaultExpectStatus    = "200-399"
	DefaultPassiveFailures = 5
	DefaultWeight          = 1
	DefaultStickyCookie    = "lb_srv"
	DefaultCacheMaxSize    = 256 << 20
	DefaultCacheMaxObject  = 1 << 20
	DefaultCompressMinSize = 1 << 10

	// MaxRetries bounds pool.retries so a retry loop stays short.
	MaxRetries = 16
	// MaxWeight bounds backend weights, as HAProxy does.
	MaxWeight = 256
)

// AuthFiles are the htpasswd files the config's routes name, which
// reload with it.
func (c *Config) AuthFiles() []string {
	var files []string
	for _, ln := range c.Listeners {
		for _, r := range ln.Routes {
			if r.BasicAuth != "" && !slices.Contains(files, r.BasicAuth) {
				files = append(files, r.BasicAuth)
			}
		}
	}
	return files
}
