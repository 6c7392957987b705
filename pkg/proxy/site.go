package proxy

import (
	"bytes"
	"strings"
	"time"

	"github.com/offloadlb/lb/pkg/policy"

	"github.com/valyala/fasthttp"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/offloadlb/lb/internal/httpstatus"
	"github.com/offloadlb/lb/pkg/accesslog"
	"github.com/offloadlb/lb/pkg/cache"
	"github.com/offloadlb/lb/pkg/compress"
	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/httphead"
	"github.com/offloadlb/lb/pkg/metrics"
	"github.com/offloadlb/lb/pkg/upstream"
)

// Challenges answers ACME http-01 validation requests (RFC 8555 section
// 8.3). It is called concurrently.
type Challenges interface {
	// HTTPChallenge returns the key authorization to answer a GET of path
	// on host with, ok false when no pending challenge matches.
	HTTPChallenge(host, path string) (keyAuth []byte, ok bool)
}

// acmeChallengePath is where ACME CAs fetch http-01 answers.
var acmeChallengePath = []byte("/.well-known/acme-challenge/")

// serveChallenge answers an ACME http-01 validation request, reporting
// whether it did: a request for the path that no pending challenge
// matches goes on as any other.
func serveChallenge(ctx *fasthttp.RequestCtx, c Challenges) bool {
	path := ctx.Path()
	if !bytes.HasPrefix(path, acmeChallengePath) || !ctx.IsGet() {
		return false
	}
	keyAuth, ok := c.HTTPChallenge(string(ctx.Host()), string(path))
	if !ok {
		return false
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("text/plain")
	ctx.SetBody(keyAuth)
	return true
}

// Site is what one http listener serves: its rules and where they send
// requests, its redirect, HSTS, access log and timeouts. It is immutable
// once published, and goroutines may share it; Handler.Update swaps in a
// new one. Rejected may not be nil, so the zero value is not usable.
type Site struct {
	Name string
	// TLS is whether clients connect over TLS (X-Forwarded-Proto: https).
	TLS bool
	// Rules are tried in order; the first match wins.
	Rules []Rule
	// Default serves requests no rule matches. It may be nil only when
	// Redirect is set.
	Default *Dest
	// HSTS, when set, is sent as Strict-Transport-Security on every
	// response.
	HSTS []byte
	// Headers are the listener's header rules; nil for none.
	Headers *policy.HeaderRules
	// Limit is the listener's rate limit per client address; nil for
	// none.
	Limit *policy.Limiter
	// Pages are the operator's pages for statuses lb answers itself
	// (listener.error_pages), by status; nil for none.
	Pages map[int]config.ErrorPage
	// Redirect, when set, answers every request with a 308 to HTTPS
	// (an ACME http-01 validation aside).
	Redirect *config.Redirect
	// ACME, when set, answers ACME http-01 validation requests (GET
	// /.well-known/acme-challenge/TOKEN) that it has a pending challenge
	// for, before any redirect or route.
	ACME Challenges
	// Rejected counts responses to requests that reached no pool
	// (malformed, redirected). Never nil.
	Rejected *metrics.Codes
	// Access receives one line per request; nil turns access logging off.
	Access *accesslog.Log
	// TunnelIdle ends a switched-protocol tunnel (a WebSocket) after this
	// long without a byte either way; 0 for never.
	TunnelIdle time.Duration
	// WriteTimeout bounds writes to the client on connections lb takes
	// over from the HTTP server (a close-delimited body to an HTTP/1.0
	// client, a tunnel): a client that takes no bytes for this long is
	// cut (0: never). The server bounds its own writes with the same
	// value.
	WriteTimeout time.Duration
	// ReadTimeout bounds the wait for each read of a request body that
	// streams (the server bounds the head and what is read ahead); 0 for
	// none.
	ReadTimeout time.Duration
	// MaxBody is the largest request body (413 past it); 0 for no limit.
	MaxBody int64
	// BodyBuffer is how much of a request body is read before it is
	// sent: a body that ends within it goes whole, and may be retried;
	// a longer one streams. 0 takes 64 KiB.
	BodyBuffer int
	// Compress compresses the answers of backends and caches for
	// clients that accept it ([listener.compress]); nil for none.
	Compress *compress.Policy
}

// Dest is a pool as one site sends to it: the upstream, and this site's
// counters for it, resolved when the config is built so that counting a
// request needs no lookup. It is immutable once published, and goroutines
// may share it; Up, Codes and NoBackend may not be nil.
type Dest struct {
	Up *upstream.Group
	// Cache is the pool's response cache, asked before its backends
	// (through httpcache.Forward); nil for none.
	Cache *cache.Cache
	// Codes counts responses by backend index.
	Codes []*metrics.Codes
	// NoBackend counts responses no backend gave (503 and the like).
	NoBackend *metrics.Codes
	// Duration observes request durations; nil for none.
	Duration prometheus.Observer
}

// Rule sends requests for a host and/or path prefix to a pool. It is
// immutable once published, and goroutines may share it; with Host and
// PathPrefix empty it matches every request. A nil Dest sends nowhere
// (503).
type Rule struct {
	// Host is an exact lower-case host name, or "*.example.com" to match
	// any name below example.com; "" matches every host.
	Host string
	// PathPrefix matches the start of the normalised path; "" matches all.
	PathPrefix string
	// Dest is where matching requests go; nil for a route that
	// redirects.
	Dest *Dest
	// Policy is what the route does beside choosing Dest; nil for
	// nothing.
	Policy *RoutePolicy
}

// RoutePolicy is a route's rules beyond its pool.
type RoutePolicy struct {
	// Access refuses (403) clients it does not allow; nil lets all in.
	Access *policy.Filter
	// StripPrefix, when set, is taken off the start of the path the
	// backend sees.
	StripPrefix string
	// Redirect, when set, answers 308 to this origin with the request's
	// path and query.
	Redirect string
	// Headers are the route's header rules, after the listener's.
	Headers *policy.HeaderRules
	// Limit is the route's rate limit per client address; nil for none.
	Limit *policy.Limiter
	// Auth asks for a user's credentials (Basic); nil for none.
	Auth *policy.BasicAuth
}

func (r *Rule) match(host, path []byte) bool {
	if r.Host != "" {
		if r.Host[0] == '*' {
			suffix := r.Host[1:] // ".example.com"
			if len(host) <= len(suffix) || !bytes.EqualFold(host[len(host)-len(suffix):], []byte(suffix)) {
				return false
			}
		} else if !bytes.EqualFold(host, []byte(r.Host)) {
			return false
		}
	}
	return r.PathPrefix == "" || bytes.HasPrefix(path, []byte(r.PathPrefix))
}

// route picks the pool for a request: the first rule that matches, else
// Default.
func (s *Site) route(host, path []byte) (*Dest, *RoutePolicy) {
	if len(s.Rules) == 0 {
		return s.Default, nil
	}
	host = httphead.StripPort(host)
	for i := range s.Rules {
		if s.Rules[i].match(host, path) {
			return s.Rules[i].Dest, s.Rules[i].Policy
		}
	}
	return s.Default, nil
}

// redirect answers a 308 to the same resource over HTTPS. The host is the
// request's (ctx.Host: for an absolute-form target its authority, RFC 9112
// section 3.2.2), checked by httphead.Check, and the path and query are
// the target's as the client wrote them: the raw target of an absolute
// form would repeat its scheme and authority.
func redirect(ctx *fasthttp.RequestCtx, r *config.Redirect) {
	host := r.Host
	if host == "" {
		host = string(httphead.StripPort(ctx.Host()))
	}
	if host == "" {
		httpstatus.Answer(&ctx.Response, fasthttp.StatusBadRequest)
		return
	}
	loc := make([]byte, 0, 64)
	loc = append(loc, "https://"...)
	if strings.IndexByte(host, ':') >= 0 && host[0] != '[' {
		// An IPv6 address configured as redirect_https's host.
		host = "[" + host + "]"
	}
	loc = append(loc, host...)
	if r.Port != "" {
		loc = append(loc, ':')
		loc = append(loc, r.Port...)
	}
	uri := ctx.URI()
	uri.DisablePathNormalizing = true
	loc = append(loc, uri.RequestURI()...)
	ctx.Response.Header.SetCanonical(hLocation, loc)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.SetStatusCode(fasthttp.StatusPermanentRedirect)
	// lb answers this itself, as an origin would: it sends the Date that
	// the server no longer writes by default (RFC 9110 section 6.6.1).
	cache.SetDate(&ctx.Response.Header, time.Now())
}
