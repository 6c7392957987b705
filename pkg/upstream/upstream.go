// Package upstream is lb's HTTP/1.1 client to its backends: a pool of
// keep-alive connections per backend (Transport), one request and its
// answer on them (Exchange), a response body streamed off the backend
// while the client takes it (Body), and a pool's backends as the proxy
// uses them (Group).
package upstream

import (
	"time"

	"github.com/offloadlb/lb/pkg/affinity"

	"github.com/offloadlb/lb/pkg/balancer"
)

// Group is a pool as the proxy sees it: the balancer pool, one Transport
// per backend (indexed by Backend.Index), the pool's health monitor for
// passive reports, and its retry and timeout policy. It is immutable once
// built, and safe for concurrent use; Pool may not be nil, so the zero
// value is not usable.
type Group struct {
	Pool *balancer.Pool
	// Transports holds a Transport for every backend of Pool, at the
	// backend's Index.
	Transports []*Transport
	// Health is told how each request went (the pool's health monitor);
	// nil for no passive reports.
	Health balancer.Reporter
	// Retries is how many other backends to try after a failed attempt.
	Retries int
	// QueueTimeout bounds the wait for a slot when every backend is at
	// max_conns_per_backend.
	QueueTimeout time.Duration
	// ResponseTimeout bounds the wait for a response head, and each read
	// of a streamed body.
	ResponseTimeout time.Duration
	// FinishAborted keeps a request whose client went away at its
	// backend until the backend answers (on_client_abort = "finish");
	// false cuts the exchange at once.
	FinishAborted bool
	// Key is what of a request algorithm "hash" hashes (Kind KeyNone
	// when the pool does not hash).
	Key affinity.Key
	// Sticky is the pool's cookie persistence; nil for none.
	Sticky *affinity.Sticky
	// TimeBackends feeds each attempt's time to its backend's peak-EWMA
	// (algorithm least_time).
	TimeBackends bool
}

// Outcome is how forwarding one request to a Group went: the backend
// that answered (or failed last), how many were tried, the body still
// streaming from it, and the failure if none answered. The response
// itself is in the request's context. It is a value, owned by the
// request's goroutine. The zero value is a request no backend was asked
// for: lb, or a cache, answered it.
type Outcome struct {
	// Backend is the last backend tried; nil when none was.
	Backend *balancer.Backend
	// Attempts is how many backends were tried.
	Attempts int
	// Body is the response body as it streams from Backend, which the
	// response reads (and closes, freeing the backend); nil when the
	// body is whole in the response, or there is none.
	Body *Body
	// Err is the last failure when no backend answered (the response
	// is then an error lb made, or a stored one a cache served in its
	// place); nil when one did.
	Err error
}

// Lease takes a slot on a backend of the group that is not in tried,
// waiting up to QueueTimeout for one, and adds it to tried; the lease's
// end is reported to Health. See balancer.Pool.Lease.
func (g *Group) Lease(tried *balancer.Tried) (balancer.Lease, error) {
	return g.Pool.Lease(tried, g.QueueTimeout, g.Health)
}

// Close closes the idle connections of every backend.
func (g *Group) Close() {
	for _, t := range g.Transports {
		t.Close()
	}
}

// CloseIdle closes connections idle too long to be reused.
func (g *Group) CloseIdle(now time.Time) {
	for _, t := range g.Transports {
		t.CloseIdle(now)
	}
}
