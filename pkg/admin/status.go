package admin

import (
	"time"

	"github.com/offloadlb/lb/pkg/cache"
)

// Status is the document served at /status.json. Counters are totals since
// lb started (or since the backend was added); rates come from the
// difference between two reads. It is plain data, made afresh for every
// request; nil slices are empty.
type Status struct {
	Version   string           `json:"version"`
	Started   time.Time        `json:"started"`
	Now       time.Time        `json:"now"`
	Config    ConfigStatus     `json:"config"`
	Listeners []ListenerStatus `json:"listeners"`
	Pools     []PoolStatus     `json:"pools"`
}

// ConfigStatus describes the running config and the last reload.
type ConfigStatus struct {
	File            string     `json:"file"`
	LastReload      *time.Time `json:"last_reload,omitempty"`
	LastReloadError string     `json:"last_reload_error,omitempty"`
}

// ListenerStatus describes one listener.
type ListenerStatus struct {
	Name              string `json:"name"`
	Address           string `json:"address"`
	Mode              string `json:"mode"`
	TLS               bool   `json:"tls"`
	Pool              string `json:"pool"`
	ActiveConnections int64  `json:"active_connections"`
	Requests          uint64 `json:"requests"`
	// Certificates are those the listener serves, default first.
	Certificates []CertificateStatus `json:"certificates,omitempty"`
	// ACME lists the names of [listener.tls.acme], in config order.
	ACME []ACMEStatus `json:"acme,omitempty"`
	// Allow and Deny are the listener's access lists, and Denied the
	// connections they refused.
	Allow  []string `json:"allow,omitempty"`
	Deny   []string `json:"deny,omitempty"`
	Denied uint64   `json:"denied_connections"`
	// Limits are the listener's rate limits per client address, and
	// LimitedConnections the TLS handshakes (tcp connections) they
	// refused.
	Limits             *LimitsStatus `json:"limits,omitempty"`
	LimitedConnections uint64        `json:"limited_connections"`
	// Compress is the listener's [listener.compress]; nil without one.
	Compress *CompressStatus `json:"compress,omitempty"`
	// Routes are the listener's routes, in order.
	Routes []RouteStatus `json:"routes,omitempty"`
}

// RouteStatus describes one route of a listener.
type RouteStatus struct {
	Host        string   `json:"host,omitempty"`
	PathPrefix  string   `json:"path_prefix,omitempty"`
	SNI         string   `json:"sni,omitempty"`
	Pool        string   `json:"pool,omitempty"`
	StripPrefix bool     `json:"strip_prefix,omitempty"`
	Redirect    string   `json:"redirect,omitempty"`
	Allow       []string `json:"allow,omitempty"`
	Deny        []string `json:"deny,omitempty"`
	// HeaderRules is whether the route has [listener.route.headers].
	HeaderRules bool `json:"header_rules,omitempty"`
	// Limits are the route's rate limits.
	Limits *LimitsStatus `json:"limits,omitempty"`
}

// LimitsStatus describes rate limits per client address and what they
// refused.
type LimitsStatus struct {
	Rate  float64 `json:"rate"`
	Burst int     `json:"burst"`
	// LimitedRequests are the requests answered 429.
	LimitedRequests uint64 `json:"limited_requests"`
}

// CompressStatus describes a listener's response compression.
type CompressStatus struct {
	// Algorithms are the codings, in the server's order of preference.
	Algorithms []string `json:"algorithms"`
	// Types are the media types compressed ("text/*" for all text).
	Types []string `json:"types"`
	// MinSize is the smallest body compressed when its length is known.
	MinSize int64 `json:"min_size"`
}

// ACMEStatus describes one name whose certificate lb gets from an ACME CA.
type ACMEStatus struct {
	Domain string `json:"domain"`
	// State is valid, obtaining, renewing or failing.
	State string `json:"state"`
	// Certificate is the one served, nil while there is none.
	Certificate *CertificateStatus `json:"certificate,omitempty"`
	// LastError is the last failed order's error (the CA's problem
	// document where it sent one); "" after a success.
	LastError string `json:"last_error,omitempty"`
	// NextAttempt is when the next order is due: the retry of a failed
	// one, or the renewal of a valid certificate; nil while an order is
	// under way.
	NextAttempt *time.Time `json:"next_attempt,omitempty"`
}

// CertificateStatus describes one served certificate.
type CertificateStatus struct {
	Subject   string    `json:"subject"`
	Names     []string  `json:"names"`
	Issuer    string    `json:"issuer"`
	Serial    string    `json:"serial"` // hexadecimal, as openssl prints it
	NotAfter  time.Time `json:"not_after"`
	ExpiresIn float64   `json:"expires_in_seconds"` // negative once expired
}

// PoolStatus describes one pool and its backends.
type PoolStatus struct {
	Name      string `json:"name"`
	Algorithm string `json:"algorithm"`
	// HashKey and HashBalance are algorithm hash's key and load bound.
	HashKey     string  `json:"hash_key,omitempty"`
	HashBalance float64 `json:"hash_balance,omitempty"`
	// StickyCookie is the name of the pool's sticky-session cookie, if
	// it has one.
	StickyCookie string `json:"sticky_cookie,omitempty"`
	// BackupsServing is set while the pool's backups take its requests,
	// no other backend being usable.
	BackupsServing bool            `json:"backups_serving"`
	Usable         int             `json:"usable"`
	Backends       []BackendStatus `json:"backends"`
	// Cache is the pool's response cache, if it has one.
	Cache *cache.Stats `json:"cache,omitempty"`
}

// BackendStatus describes one backend.
type BackendStatus struct {
	Address         string `json:"address"`
	Weight          int    `json:"weight"`
	EffectiveWeight int    `json:"effective_weight"`
	// Backup backends serve only while no other backend is usable.
	Backup            bool    `json:"backup"`
	State             string  `json:"state"` // up | down | draining (drained, requests in flight) | drained
	Up                bool    `json:"up"`
	SlowStart         bool    `json:"slow_start"`
	ActiveConnections int64   `json:"active_connections"`
	Requests          uint64  `json:"requests"`
	Failures          uint64  `json:"failures"`
	LatencySeconds    float64 `json:"latency_seconds_total"`
	// Share is the backend's part of the requests its pool has sent
	// since lb started (0 to 1).
	Share float64 `json:"share"`
	// LatencyEWMA is the peak-EWMA response time algorithm least_time
	// weighs, in seconds (0 before the first answer).
	LatencyEWMA float64 `json:"latency_ewma_seconds"`
	LastError   string  `json:"last_error"`
	// LastCheck is when the last active check finished; absent before the
	// first.
	LastCheck *time.Time `json:"last_check,omitempty"`
	// Since is when the backend last went up or down.
	Since time.Time `json:"since"`
}
