// Package proxy is lb's L7 HTTP proxy: a fasthttp handler that routes each
// request to a pool, picks a backend, forwards the request over a pooled
// keep-alive connection with X-Forwarded-* headers, retries where that is
// safe, and streams or buffers the response back.
package proxy

import (
	"time"

	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/cache"
)

// Upstream is a pool as the proxy sees it: the balancer pool, one
// Transport per backend (indexed by Backend.Index), the pool's health
// monitor for passive reports, and its retry and timeout policy. It is
// immutable once built.
type Upstream struct {
	Pool       *balancer.Pool
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
	// Cache is the pool's response cache; nil for none.
	Cache *cache.Cache
}

// Close closes the idle connections of every backend.
func (u *Upstream) Close() {
	for _, t := range u.Transports {
		t.Close()
	}
}

// CloseIdle closes connections idle too long to be reused.
func (u *Upstream) CloseIdle(now time.Time) {
	for _, t := range u.Transports {
		t.CloseIdle(now)
	}
}
