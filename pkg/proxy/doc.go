// Package proxy is lb's L7 HTTP proxy: a fasthttp handler that routes each
// request to a pool, asks the pool's cache first where it has one
// (pkg/httpcache, around Handler.Forward), picks a backend, forwards the
// request over a pooled keep-alive connection with X-Forwarded-* headers,
// retries where that is safe, and streams or buffers the response back.
package proxy
